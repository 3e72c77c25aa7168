"""The opencompass section: generated config, summary parsing, failure paths, and (slow) a real OpenCompass run.

The slow test runs OpenCompass for real on the tiny model through `accbench run`, then resumes it (~2-3 min
on 2 CPU cores).
It needs an OpenCompass environment: ACCBENCH_OC_PYTHON=/path/to/env/bin/python, or one made with
`accbench setup-opencompass ~/.cache/accbench/opencompass-env` (under $ACCBENCH_CACHE when that is set);
without one it is skipped.
Run it with: pytest tests/test_opencompass.py -m slow
"""

from __future__ import annotations

import ast
import csv
import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from accbench.integrations import opencompass as oc
from accbench.integrations.hf_v4_view import v4_compatible_model_dir
from accbench.cli import main
from accbench.errors import AccbenchError

USER_MODEL = {"type": "opencompass.models.HuggingFaceBaseModel", "abbr": "llama-base", "max_out_len": 64,
              "batch_size": 8, "run_cfg": {"num_gpus": 1, "num_procs": 1}, "summarizer_abbr": "shown"}


# ----------------------------------------------------------------------------- config generation


def test_models_get_path_abbr_and_runner_settings_per_position():
    paths = {"pretrain": "/m/orig", "fake_quant": "/run/models/fake_quant"}
    entries, abbr_to_pos = oc.build_models([USER_MODEL], paths, num_gpus=4, cfg_path="eval_base.py")
    assert [e["path"] for e in entries] == ["/m/orig", "/run/models/fake_quant"]
    assert [e["tokenizer_path"] for e in entries] == ["/m/orig", "/run/models/fake_quant"]
    assert abbr_to_pos == {"llama-base_pretrain": "pretrain", "llama-base_fake_quant": "fake_quant"}
    assert [e["abbr"] for e in entries] == list(abbr_to_pos)
    assert all(e["run_cfg"] == {"num_gpus": 4, "num_procs": 1} for e in entries)  # other run_cfg keys kept
    assert all("summarizer_abbr" not in e and e["max_out_len"] == 64 for e in entries)
    assert USER_MODEL["run_cfg"]["num_gpus"] == 1 and "path" not in USER_MODEL  # the user's entry is untouched


def test_abbrs_stay_unique_and_tokenizer_path_of_user_is_kept():
    users = [{"type": "X"}, {"type": "Y", "abbr": "m", "tokenizer_path": "/tok"}, {"type": "Z", "abbr": "m"}]
    entries, abbr_to_pos = oc.build_models(users, {"pretrain": "/a", "transformed": "/b"}, 0, "c.py")
    abbrs = [e["abbr"] for e in entries]
    assert abbrs == ["model0_pretrain", "m_pretrain", "m_pretrain_2", "model0_transformed", "m_transformed",
                     "m_transformed_2"]
    assert len(set(abbrs)) == len(abbrs) == len(abbr_to_pos)
    assert entries[1]["tokenizer_path"] == "/tok" and entries[2]["tokenizer_path"] == "/a"
    assert all(e["run_cfg"] == {"num_gpus": 0} for e in entries)


def test_model_entry_with_path_is_refused():
    users = [dict(USER_MODEL), dict(USER_MODEL, abbr="chat", path="/models/llama3-8b")]
    with pytest.raises(AccbenchError) as exc:
        oc.build_models(users, {"pretrain": "/a"}, 1, "configs/eval_base.py")
    msg = str(exc.value)
    assert "configs/eval_base.py" in msg and "models[1] (chat)" in msg and "/models/llama3-8b" in msg
    assert "remove `path`" in msg and "models[0]" not in msg


def test_runner_settings():
    full = oc.runner_settings(None, 8)
    assert full["partitioner"] == {"type": "opencompass.partitioners.NumWorkerPartitioner", "num_worker": 8}
    assert full["runner"]["max_num_workers"] == 8 and full["runner"]["type"].endswith("LocalRunner")
    assert full["runner"]["task"]["type"] == "opencompass.tasks.OpenICLInferTask"
    user = {"partitioner": {"type": "opencompass.partitioners.NumWorkerPartitioner", "num_worker": 1},
            "runner": {"type": "x.SlurmRunner", "partition": "llm", "max_num_workers": 1}}
    num = oc.runner_settings(user, 2)
    assert num == {"partitioner": {"type": "opencompass.partitioners.NumWorkerPartitioner", "num_worker": 2},
                   "runner": {"type": "x.SlurmRunner", "partition": "llm", "max_num_workers": 2}}
    assert user["runner"]["max_num_workers"] == 1  # the probed user section is not modified
    size = oc.runner_settings({"partitioner": {"type": "opencompass.partitioners.SizePartitioner", "max_task_size": 9}}, 2)
    assert size == {"partitioner": {"type": "opencompass.partitioners.SizePartitioner", "max_task_size": 9},
                    "runner": {"max_num_workers": 2}}  # SizePartitioner takes no num_worker


def test_generated_config_reads_user_file_and_holds_our_models(tmp_path):
    user = tmp_path / "eval_base.py"
    user.write_text("models = []\n")
    entries, _ = oc.build_models([USER_MODEL], {"pretrain": "/m/o"}, 1, str(user))
    out = oc.write_generated_config(tmp_path / "run" / oc.GENERATED_CONFIG, user, entries, oc.runner_settings(None, 3))
    tree = ast.parse(out.read_text())
    values = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
              if isinstance(n, ast.Assign) and n.targets[0].id in ("models", "infer")}
    assert values["models"] == entries and values["infer"]["runner"]["max_num_workers"] == 3
    assert f"Config.fromfile({str(user)!r}" in out.read_text() and "del _user, Config" in out.read_text()
    assert user.read_text() == "models = []\n"


# ----------------------------------------------------------------------------- summary parsing

SUMMARY = """dataset,version,metric,mode,tiny_pretrain,tiny_fake_quant,someone_else
quick_mcq,4c4b1f,accuracy,ppl,37.50,25.00,12.00
humaneval,8e312c,humaneval_pass@1,gen,-,n/a,
broken,-,-,-,-,-,-
short_row,abc,accuracy,gen,50.00
"""


def test_summary_parsing_keeps_missing_and_non_numeric_cells_missing(tmp_path):
    p = tmp_path / "summary_20250101_000000.csv"
    p.write_text(SUMMARY)
    scores = oc.parse_summary_csv(p, {"tiny_pretrain": "pretrain", "tiny_fake_quant": "fake_quant"})
    by = {(s.dataset, s.abbr): s for s in scores}
    assert len(scores) == 4 * 3
    q = by[("quick_mcq", "tiny_pretrain")]
    assert (q.position, q.metric, q.mode, q.score, q.raw, q.version) == ("pretrain", "accuracy", "ppl", 37.5, "37.50",
                                                                         "4c4b1f")
    assert by[("quick_mcq", "tiny_fake_quant")].score == 25.0
    assert by[("quick_mcq", "someone_else")].position is None and by[("quick_mcq", "someone_else")].score == 12.0
    h_pre, h_fq, h_other = (by[("humaneval", a)] for a in ("tiny_pretrain", "tiny_fake_quant", "someone_else"))
    assert (h_pre.score, h_pre.raw) == (None, "-") and (h_fq.score, h_fq.raw) == (None, "n/a")
    assert (h_other.score, h_other.raw) == (None, "")
    b = by[("broken", "tiny_pretrain")]
    assert b.metric is None and b.mode is None and b.score is None
    assert by[("short_row", "tiny_pretrain")].score == 50.0 and by[("short_row", "tiny_fake_quant")].score is None
    assert all(s.score is None or s.score > 0 for s in scores)  # nothing missing turned into 0


def test_console_table_shows_missing_as_missing(tmp_path):
    from rich.console import Console

    p = tmp_path / "summary.csv"
    p.write_text(SUMMARY)
    console = Console(record=True, width=160)
    console.print(oc.scores_table(oc.parse_summary_csv(p, {"tiny_pretrain": "pretrain",
                                                           "tiny_fake_quant": "fake_quant"})))
    text = console.export_text()
    quick = next(line for line in text.splitlines() if "quick_mcq" in line)
    assert "37.50" in quick and "25.00" in quick and "12.00" in quick
    human = next(line for line in text.splitlines() if "humaneval" in line)
    assert human.count("missing") == 3 and "0.00" not in human
    assert "fake_quant" in text and "(tiny_fake_quant)" in text


@pytest.mark.parametrize("raw,value", [("37.50", 37.5), (" 0.00 ", 0.0), ("-", None), ("", None), ("nan", None),
                                       ("inf", None), ("12%", None)])
def test_parse_score(raw, value):
    assert oc.parse_score(raw) == value


def test_summary_with_wrong_header_is_an_error(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("model,score\nx,1\n")
    with pytest.raises(AccbenchError, match="not an OpenCompass summary csv"):
        oc.parse_summary_csv(p, {})


def test_find_summary_takes_latest_experiment_and_refuses_stale(tmp_path):
    (tmp_path / "models").mkdir()  # accbench's folders beside the experiments sort after them
    for ts in ("20250101_000000", "20250102_000000"):
        (tmp_path / ts / "summary").mkdir(parents=True)
        (tmp_path / ts / "summary" / f"summary_{ts}.csv").write_text(SUMMARY)
    assert oc.find_summary(tmp_path, time.time() - 60, tmp_path / "log").parent.parent.name == "20250102_000000"
    time.sleep(0.01)  # a resumed run writes its new summary into the older experiment it reused
    (tmp_path / "20250101_000000" / "summary" / "summary_20250103_000000.csv").write_text(SUMMARY)
    found = oc.find_summary(tmp_path, time.time() - 60, tmp_path / "log")
    assert (found.parent.parent.name, found.name) == ("20250101_000000", "summary_20250103_000000.csv")
    with pytest.raises(AccbenchError, match="without writing a summary"):
        oc.find_summary(tmp_path, time.time() + 60, tmp_path / "log")
    with pytest.raises(AccbenchError, match="without writing a summary"):
        oc.find_summary(tmp_path / "nothing", 0, tmp_path / "log")


# ----------------------------------------------------------------------------- running and environment


def test_failing_opencompass_stops_with_log_path_and_tail(tmp_path, monkeypatch):
    env = oc.OpenCompassEnv(sys.executable, [sys.executable, "-c", "import os, sys; print('data', "
                                             "os.environ['COMPASS_DATA_CACHE'], os.getcwd()); print('loading'); "
                                             "print('CUDA out of memory'); sys.exit(3)"])
    monkeypatch.delenv("COMPASS_DATA_CACHE", raising=False)
    log, work = tmp_path / "opencompass.log", tmp_path / "work"
    with pytest.raises(AccbenchError) as exc:
        oc.run_opencompass(env, tmp_path / "gen.py", work, 2, True, log, tmp_path, tmp_path)
    msg = str(exc.value)
    assert "exit code 3" in msg and str(log) in msg and "CUDA out of memory" in msg and "--resume" in msg
    logged = log.read_text()
    assert logged.splitlines()[0].endswith("--max-num-workers 2") and "loading" in logged  # nothing to reuse yet
    assert f"data {tmp_path} {tmp_path}" in logged  # ./data resolves where accbench started; runs in cwd
    monkeypatch.setenv("COMPASS_DATA_CACHE", "/data/oc")  # the user's own setting wins
    with pytest.raises(AccbenchError):
        oc.run_opencompass(env, tmp_path / "gen.py", work, 2, False, log, tmp_path, tmp_path)
    assert "data /data/oc" in log.read_text()

    # on resume the latest experiment is reused by name; accbench's own files in the work dir are not experiments
    for name in ("20250101_000000", "20250102_000000", "models", "zz"):
        (work / name).mkdir()
    (work / "probe.json").write_text("{}")
    with pytest.raises(AccbenchError):
        oc.run_opencompass(env, tmp_path / "gen.py", work, 2, True, log, tmp_path, tmp_path)
    assert "--max-num-workers 2 -r 20250102_000000\n" in log.read_text()
    with pytest.raises(AccbenchError):  # the experiment this run used before, when it is known
        oc.run_opencompass(env, tmp_path / "gen.py", work, 2, True, log, tmp_path, tmp_path, "20250101_000000")
    assert "--max-num-workers 2 -r 20250101_000000\n" in log.read_text()
    with pytest.raises(AccbenchError):
        oc.run_opencompass(env, tmp_path / "gen.py", work, 2, False, log, tmp_path, tmp_path)
    assert log.read_text().splitlines()[-4].endswith("--max-num-workers 2")  # a fresh run reuses nothing


def test_missing_opencompass_says_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(AccbenchError, match="setup-opencompass"):
        oc.find_env(str(tmp_path / "nope" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AccbenchError, match="no `opencompass` executable is on PATH"):
        oc.find_env(None)
    with pytest.raises(AccbenchError, match="cannot import opencompass"):
        oc.find_env(sys.executable)  # a python without OpenCompass


def test_config_opencompass_cannot_read_is_reported_with_its_error(tmp_path):
    env = oc.OpenCompassEnv(sys.executable, [])  # accbench's python has no mmengine: the probe fails
    user = tmp_path / "eval.py"
    user.write_text("models = []\n")
    with pytest.raises(AccbenchError) as exc:
        oc.probe_config(env, user, tmp_path, tmp_path / "oc.log", tmp_path)
    assert f"could not read the config {user}" in str(exc.value) and "mmengine" in str(exc.value)
    assert "mmengine" in (tmp_path / "oc.log").read_text()


def test_executable_on_path_is_used_with_its_shebang_python(tmp_path, monkeypatch):
    exe = tmp_path / "opencompass"
    exe.write_text(f"#!{sys.executable}\nprint('hi')\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    env = oc.find_env(None)
    assert env.python == sys.executable and env.command == [str(exe)]


def _run_config(tmp_path, model_dir, eval_txt, oc_section) -> str:
    cfg = {"model": {"path": str(model_dir), "torch_dtype": "float32"},
           "eval": {"eval_pos": ["pretrain"], "name": "custom", "path": str(eval_txt), "seq_len": 64, "bs": 2},
           "save": {"save_trans": True}, "opencompass": oc_section}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_run_with_unavailable_opencompass_fails_cleanly(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _run_config(tmp_path, tiny_model_dir, eval_txt,
                      {"cfg_path": str(tmp_path / "oc.py"), "python": str(tmp_path / "env/bin/python")})
    (tmp_path / "oc.py").write_text("models = []\n")
    code = main(["run", cfg, "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "opencompass.python" in err and "setup-opencompass" in err and "Traceback" not in err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "failed" and res["ppl"] == []  # refused before the model loaded


def test_opencompass_eval_pos_of_an_unsaved_model_is_refused_before_loading(tmp_path, tiny_model_dir, eval_txt,
                                                                            capsys):
    (tmp_path / "oc.py").write_text("models = []\n")
    cfg = _run_config(tmp_path, tiny_model_dir, eval_txt, {"cfg_path": str(tmp_path / "oc.py"),
                                                           "eval_pos": ["pretrain", "fake_quant"]})
    assert main(["run", cfg, "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "fake_quant (needs save.save_fake: true)" in err and "pretrain" not in err.split("fix:")[0]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["ppl"] == []


def test_missing_opencompass_config_is_refused_before_loading(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _run_config(tmp_path, tiny_model_dir, eval_txt, {"cfg_path": str(tmp_path / "nope.py")})
    assert main(["run", cfg, "-o", str(tmp_path / "run")]) == 2
    assert "opencompass.cfg_path" in capsys.readouterr().err


def test_save_flag_required(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _run_config(tmp_path, tiny_model_dir, eval_txt, {"cfg_path": "x.py"})
    assert main(["run", cfg, "-o", str(tmp_path / "run"), "save.save_trans=false"]) == 2
    assert "save.save_trans: true" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a real OpenCompass run (slow)

MCQ = [  # question, options A-D, answer: a small multiple-choice set in OpenCompass's custom-dataset format
    ("Which keyword defines a function in Python?", "def", "class", "lambda", "import", "A"),
    ("Which value is falsy?", "1", "'a'", "0", "[0]", "C"),
    ("What does len('abc') return?", "2", "3", "4", "None", "B"),
    ("Which statement leaves a loop?", "continue", "pass", "return", "break", "D"),
    ("Which type is immutable?", "list", "dict", "tuple", "set", "C"),
    ("What is 2 ** 3?", "6", "8", "9", "5", "B"),
    ("Which builtin opens a file?", "open", "file", "read", "load", "A"),
    ("Which operator tests identity?", "==", "is", "in", "=", "B"),
]


def _oc_python() -> str | None:
    env = os.environ.get("ACCBENCH_OC_PYTHON")
    if env:
        return env
    root = Path(os.environ["ACCBENCH_CACHE"]).expanduser() if os.environ.get("ACCBENCH_CACHE") else \
        Path.home() / ".cache" / "accbench"
    cached = root / "opencompass-env" / "bin" / "python"
    return str(cached) if cached.is_file() else None


def _sharp_long_rope_model(src: Path, out: Path) -> Path:
    """The tiny model with rope_theta 500000 and sharpened attention, so a misread rope visibly changes losses."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    sharp = type(model)(model.config)
    sharp.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in sharp.model.layers:
            layer.self_attn.q_proj.weight.mul_(30)
            layer.self_attn.k_proj.weight.mul_(30)
    sharp.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def _opencompass_ppl(model_dir: Path, texts: list[str]) -> list[float]:
    """OpenCompass's ppl-mode score, computed here with transformers 5: summed next-token loss / token count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for text in texts:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        out.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item() / ids.shape[1])
    return out


def test_v4_view_of_a_transformers5_model(tmp_path, tiny_model_dir):
    view, changes = v4_compatible_model_dir(Path(tiny_model_dir), tmp_path / "view")
    assert view == tmp_path / "view" and len(changes) == 2
    cfg = json.loads((view / "config.json").read_text())
    assert cfg["rope_theta"] == 10000.0 and "rope_parameters" not in cfg and "rope_scaling" not in cfg
    tok = json.loads((view / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok["model_input_names"] == ["input_ids", "attention_mask"]  # no token_type_ids for generate()
    assert (view / "model.safetensors").resolve() == (Path(tiny_model_dir) / "model.safetensors").resolve()
    assert json.loads((Path(tiny_model_dir) / "config.json").read_text())["rope_parameters"]  # original untouched

    scaled = tmp_path / "scaled"
    scaled.mkdir()
    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    (scaled / "config.json").write_text(json.dumps({"model_type": "llama", "rope_parameters": llama3}))
    view2, changes2 = v4_compatible_model_dir(scaled, tmp_path / "view2")
    cfg2 = json.loads((view2 / "config.json").read_text())
    assert cfg2["rope_theta"] == 500000.0 and cfg2["rope_scaling"] == {k: v for k, v in llama3.items()
                                                                      if k != "rope_theta"}
    assert changes2 == [f"config.json: rope_parameters -> rope_theta=500000.0, rope_scaling={cfg2['rope_scaling']}"]

    v4_style = tmp_path / "v4"
    v4_style.mkdir()
    (v4_style / "config.json").write_text(json.dumps({"rope_theta": 500000.0}))
    (v4_style / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    assert v4_compatible_model_dir(v4_style, tmp_path / "view3") == (v4_style, [])
    assert not (tmp_path / "view3").exists()


@pytest.mark.slow
def test_real_opencompass_run_through_accbench(tmp_path, tiny_model_dir, eval_txt, monkeypatch):
    py = _oc_python()
    if py is None:
        pytest.skip("no OpenCompass environment: set ACCBENCH_OC_PYTHON or run "
                    "`accbench setup-opencompass ~/.cache/accbench/opencompass-env`")
    model_dir = _sharp_long_rope_model(Path(tiny_model_dir), tmp_path / "model")
    data = tmp_path / "ocdata"
    data.mkdir()
    with open(data / "quick_mcq.jsonl", "w") as f:
        for q, a, b, c, d, ans in MCQ:
            f.write(json.dumps({"question": q, "A": a, "B": b, "C": c, "D": d, "answer": ans}) + "\n")
    (data / "eval_quick.py").write_text(
        "import os.path as osp\n"
        "from opencompass.models import HuggingFaceBaseModel\n"
        "datasets = [dict(path=osp.join(osp.dirname(__file__), 'quick_mcq.jsonl'), data_type='mcq', "
        "infer_method='ppl')]\n"
        # batch_size=1: OpenCompass 0.5.4 pads ppl batches on the left and then also scores the first real token
        # (predicted from a pad), so its ppl-mode numbers depend on the batch; one text per batch is exact
        "models = [dict(type=HuggingFaceBaseModel, abbr='tiny', max_seq_len=256, max_out_len=8, batch_size=1,\n"
        "               model_kwargs=dict(torch_dtype='torch.float32'), run_cfg=dict(num_gpus=0))]\n")
    before = (data / "eval_quick.py").read_text()
    cfg = _run_config(tmp_path, model_dir, eval_txt,
                      {"cfg_path": str(data / "eval_quick.py"), "python": py, "num_gpus": 0, "max_num_workers": 2})
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["run", cfg, "-o", str(run), "eval.num_samples=2"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete" and (data / "eval_quick.py").read_text() == before

    (entry,) = res["opencompass"]
    assert (entry["position"], entry["abbr"], entry["dataset"]) == ("pretrain", "tiny_pretrain", "quick_mcq")
    assert (entry["metric"], entry["mode"]) == ("accuracy", "ppl")
    out = res["opencompass_output"]
    summary = Path(out["summary_csv"])
    assert summary.parent.parent.parent == (run / "opencompass").resolve() and Path(out["log"]).is_file()
    with open(summary) as f:
        rows = list(csv.DictReader(f))
    assert entry["score"] == float(rows[0]["tiny_pretrain"]) and entry["raw"] == rows[0]["tiny_pretrain"]

    # the accuracy recomputed from OpenCompass's own predictions of the 8 questions
    preds = {}
    for shard in sorted((summary.parent.parent / "predictions" / "tiny_pretrain").glob("quick_mcq*.json")):
        preds.update(json.loads(shard.read_text()))
    assert len(preds) == len(MCQ)
    acc = 100 * sum(p["prediction"] == p["gold"] for p in preds.values()) / len(preds)
    assert entry["score"] == pytest.approx(acc, abs=0.005)

    # OpenCompass (transformers 4) scored exactly our model: its per-option losses equal transformers 5's on the
    # original folder. Without accbench's v4 view, 4.x reads rope_theta as 10000 and these differ by ~0.03.
    texts = [p[f"label: {x}"]["testing input"] for p in preds.values() for x in "ABCD"]
    theirs = [p[f"label: {x}"]["PPL"] for p in preds.values() for x in "ABCD"]
    assert theirs == pytest.approx(_opencompass_ppl(model_dir, texts), abs=1e-4)
    gen = (run / "opencompass" / oc.GENERATED_CONFIG).read_text()
    assert repr(str((run / "opencompass" / "models" / "pretrain").resolve())) in gen
    assert not (tmp_path / "tmp").exists() and (run / "opencompass" / "tmp").is_dir()  # OpenCompass's litter stays in the run

    # --resume reuses the finished OpenCompass experiment: no task runs again, the same number comes back
    assert main(["run", cfg, "-o", str(run), "eval.num_samples=2", "--resume"]) == 0
    again = json.loads((run / "results.json").read_text())
    log = Path(out["log"]).read_text()
    assert f"-r {summary.parent.parent.name}" in log and log.count("Partitioned into 0 tasks") == 2
    assert again["opencompass"] == res["opencompass"]
    assert Path(again["opencompass_output"]["summary_csv"]).parent == summary.parent
