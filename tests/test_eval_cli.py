"""`accbench eval` with lm-eval's options: registry/local task names in --tasks, --limit (count or fraction),
--num_fewshot, --batch_size, --model_args, --apply_chat_template refusal, --version, `accbench tasks`, and an
unreachable dataset exiting 2 with the dataset named; the lm-eval files it writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from accbench import cli
from accbench.eval_options import parse_limit, parse_model_args
from accbench.errors import AccbenchError

ROOT = Path(__file__).resolve().parents[1]


def _accbench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "accbench", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_model_args_and_limit_parse_as_lm_eval_reads_them():
    got = parse_model_args("pretrained=org/m,revision=v2,dtype=bfloat16,trust_remote_code=True,peft=ad,"
                           "load_in_8bit=false,max_memory_per_gpu=8,batch_size=4")
    assert got == {"path": "org/m", "revision": "v2", "torch_dtype": "bfloat16", "trust_remote_code": True,
                   "peft": "ad", "from_pretrained": {"load_in_8bit": False, "max_memory_per_gpu": 8}}
    assert parse_limit("5") == 5 and parse_limit("0.25") == 0.25 and parse_limit("5.0") == 5
    for bad in ("0", "1.5", "x"):
        with pytest.raises(AccbenchError, match="--limit"):
            parse_limit(bad)
    with pytest.raises(AccbenchError, match="not key=value"):
        parse_model_args("revision")


def test_version():
    r = _accbench("--version")
    assert r.returncode == 0 and r.stdout.startswith("accbench ")


def test_local_lm_eval_task_by_name_with_lm_eval_options(tiny_model_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from test_lmeval_filters import GSM_YAML

    d = tmp_path / "tasks"
    d.mkdir()
    docs = [{"question": f"What is {a} plus 1?", "answer": f"#### {a + 1}"} for a in range(7)]
    (d / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    (d / "gsm_cli.yaml").write_text(GSM_YAML.format(name="gsm_cli", path=d / "data.jsonl"))
    out = tmp_path / "run"
    rc = cli.main(["eval", "--model_args", f"pretrained={tiny_model_dir},dtype=float32", "--tasks", "gsm_cli",
                   "--include_path", str(d), "--limit", "0.5", "--num_fewshot", "0", "--batch_size", "2",
                   "--log_samples", "--device", "cpu", "-o", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    (entry,) = res["tasks"]
    assert entry["n"] == math.ceil(7 * 0.5) == 4
    assert set(entry["per_sample"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert sorted(entry["samples"]) == ["0", "1", "2", "3"]
    assert entry["samples"]["0"]["prompt"] == "Question: What is 0 plus 1?\nAnswer:"
    assert res["provenance"]["model"] == str(tiny_model_dir) and res["provenance"]["command"][:1] != []
    files = sorted(p.name for p in (out / "lm_eval" / "pretrain").iterdir())
    assert [f.split("_2")[0] for f in files] == ["results", "samples_gsm_cli"]
    lm = json.loads(next((out / "lm_eval" / "pretrain").glob("results_*.json")).read_text())
    assert lm["n-samples"]["gsm_cli"]["effective"] == 4 and lm["n-shot"]["gsm_cli"] == 0


def test_chat_template_is_refused_where_it_cannot_apply(tiny_model_dir, tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "label": 0}) + "\n")
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"tasks:\n  - {{name: mc, type: multiple_choice, path: {data}}}\n")
    r = _accbench("eval", "--model", str(tiny_model_dir), "--config", str(cfg), "--apply_chat_template",
                  "--device", "cpu", "-o", str(tmp_path / "run"))
    assert r.returncode == 2 and "chat_template cannot apply to a multiple_choice task" in r.stderr


def test_unreachable_registry_dataset_exits_2_naming_it(tiny_model_dir, tmp_path):
    pytest.importorskip("lm_eval")
    r = _accbench("eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--limit", "5", "--device", "cpu",
                  "-o", str(tmp_path / "run"),
                  env={"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "cannot load dataset allenai/ai2_arc" in r.stderr and "offline" in r.stderr
    assert "--include_path" in r.stderr and "internal error" not in r.stderr


def _cached_arc_easy(hf_home: Path) -> None:
    """A tiny stand-in for allenai/ai2_arc (ARC-Easy) in a Hugging Face datasets cache, laid out as `datasets`
    caches a hub dataset, so lm-eval's registry task `arc_easy` loads it offline."""
    import glob
    import shutil

    import datasets

    rows = [{"id": f"q{i}", "question": f"What is {i} plus one?",
             "choices": {"text": [str(i + 1), str(i + 2), str(i)], "label": ["A", "B", "C"]}, "answerKey": "A"}
            for i in range(8)]
    src_dir = hf_home.parent / "arc_src"
    src_dir.mkdir(parents=True)
    files = {}
    for split in ("train", "validation", "test"):
        files[split] = str(src_dir / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.load_dataset("json", data_files=files, cache_dir=str(src_dir / "cache"))
    src = Path(glob.glob(str(src_dir / "cache" / "json" / "*" / "*" / "*"))[0])
    dst = hf_home / "datasets" / "allenai___ai2_arc" / "ARC-Easy" / src.parts[-2] / src.parts[-1]
    dst.mkdir(parents=True)
    for f in src.glob("*.arrow"):
        shutil.copy(f, dst / f.name.replace("json-", "ai2_arc-"))
    info = json.loads((src / "dataset_info.json").read_text())
    info.update(config_name="ARC-Easy", dataset_name="ai2_arc", builder_name="ai2_arc")
    (dst / "dataset_info.json").write_text(json.dumps(info))


@pytest.mark.slow  # ~70 s: two CLIs, each indexing lm-eval's registry
def test_registry_task_from_the_local_cache_gives_lm_evals_numbers(tiny_model_dir, tmp_path):
    """`accbench eval --tasks arc_easy --limit 5` offline with the dataset in the HF cache runs, and its
    per-sample acc/acc_norm equal `lm_eval --model hf --tasks arc_easy --limit 5 --log_samples` on it."""
    pytest.importorskip("lm_eval")
    hf = tmp_path / "hf"
    _cached_arc_easy(hf)
    env = {"HF_HOME": str(hf), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    r = _accbench("eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--limit", "5", "--device", "cpu",
                  "--dtype", "float32", "-o", str(tmp_path / "run"), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (ours,) = json.loads((tmp_path / "run" / "results.json").read_text())["tasks"]
    assert ours["n"] == 5 and ours["samples"]["0"]["reference"] == "1"
    lm = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                         f"pretrained={tiny_model_dir},dtype=float32,logits_cache=False", "--tasks", "arc_easy",
                         "--limit", "5", "--device", "cpu", "--batch_size", "1", "--log_samples", "--output_path",
                         str(tmp_path / "lm")], capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert lm.returncode == 0, lm.stderr[-3000:]
    theirs = [json.loads(x) for x in next((tmp_path / "lm").rglob("samples_arc_easy_*.jsonl")).read_text().splitlines()]
    assert len(theirs) == 5
    for s in theirs:
        for m in ("acc", "acc_norm"):
            assert ours["per_sample"][m][str(s["doc_id"])] == s[m]
    agg = json.loads(next((tmp_path / "lm").rglob("results_*.json")).read_text())["results"]["arc_easy"]
    assert ours["metrics"]["acc"] == pytest.approx(agg["acc,none"])


def test_tasks_lists_registry_and_config_tasks(tmp_path):
    pytest.importorskip("lm_eval")
    cfg = tmp_path / "t.yaml"
    cfg.write_text("tasks:\n  - {name: my_arc_copy, type: lm_eval, task: arc_easy}\n")
    r = _accbench("tasks", "arc_easy", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    names = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert "lm-eval task" in names["arc_easy"] and "my_arc_copy" not in names  # pattern applies to all
    r = _accbench("tasks", "my_*", "--config", str(cfg), "--no-lm-eval")
    assert r.stdout.split()[0] == "my_arc_copy"
    r = _accbench("tasks", "pydoc", "--no-lm-eval")  # the built-in task data a config names as `path:`
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()] == [
        "builtin:pydoc-cloze", "builtin:pydoc-nextword"], r.stdout
    assert "multiple_choice task (path: builtin:pydoc-cloze)" in r.stdout


def test_lm_eval_group_by_name(tiny_model_dir, tmp_path, lm_eval_mc_task):
    """A group in --tasks: lm-eval's aggregate, per-sample values of every subtask (ids `subtask/doc_id`), and
    one lm-eval samples file per subtask."""
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"context": f"x = {i}", "choices": [f"+ {i}", "- 1", f"* {i}"],
                                        "label": i % 3}) + "\n" for i in range(6)))
    d = lm_eval_mc_task("grp_a", data)
    lm_eval_mc_task("grp_b", data)
    (d / "grp.yaml").write_text("group: grp_ab\ntask: [grp_a, grp_b]\naggregate_metric_list:\n"
                                "  - metric: acc\n    weight_by_size: true\n")
    out = tmp_path / "run"
    assert cli.main(["eval", "--model", str(tiny_model_dir), "--tasks", "grp_ab", "--include_path", str(d),
                     "--device", "cpu", "--dtype", "float32", "-o", str(out)]) == 0
    (entry,) = json.loads((out / "results.json").read_text())["tasks"]
    per = entry["per_sample"]["acc"]
    assert entry["n"] == 12 and sorted(per) == sorted(f"grp_{s}/{i}" for s in "ab" for i in range(6))
    assert entry["metrics"]["acc"] == pytest.approx(sum(per.values()) / 12)
    names = sorted(p.name.rsplit("_", 1)[0] for p in (out / "lm_eval" / "pretrain").glob("samples_*"))
    assert names == ["samples_grp_a", "samples_grp_b"]
