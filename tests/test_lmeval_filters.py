"""A gsm8k-shaped local lm-eval task (generate_until with strict-match and flexible-extract filters).

Per-sample values exist for every filter, equal to what lm-eval's own `--log_samples` run writes for the
same model, the export files have lm-eval's layout and keys, and `compare` reports flips and an exact
McNemar p for each filter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is the optional extra `lm_eval`")

# gsm8k's shape: a question, an answer "#### N", two regex filters and exact_match with gsm8k's ignore rules.
# The tiny model answers noise, so the filters pick words, not numbers: the first word (strict-match) and the
# last one (flexible-extract, group_select -1 as gsm8k's).
GSM_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["Question:", "\\n\\n"]
  do_sample: false
  max_gen_toks: 16
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "([A-Za-z]{{2,}})"
      - function: take_first
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "([A-Za-z]{{2,}})"
      - function: take_first
"""
FILTERS = ("strict-match", "flexible-extract")
N_DOCS = 12


def _task(root: Path, name: str, answers: list[str]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    docs = [{"question": f"What is {a} plus {a + 7}?", "answer": f"#### {answers[a]}"} for a in range(N_DOCS)]
    (d / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    (d / f"{name}.yaml").write_text(GSM_YAML.format(name=name, path=d / "data.jsonl"))
    return d


def _run(model_dir: Path, include: Path, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from accbench.config import LmEvalTask
    from accbench.evaluate.backends.hf import HFBackend as Engine
    from accbench.evaluate.tasks import TaskContext, run_task

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    task = LmEvalTask(name=name, type="lm_eval", include_path=str(include))
    return run_task(task, Engine(model, tok, batch_size=4), TaskContext(tok))


@pytest.fixture(scope="module")
def noisy_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with noise on its decoder weights: a 'changed' model whose answers partly differ."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "layers" in name and p.dim() == 2:
                p.add_(torch.randn_like(p) * 0.05)
    out = tmp_path_factory.mktemp("noisy")
    m.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gsm_runs(tiny_model_dir, noisy_model_dir, tmp_path_factory):
    """Targets built from both models' filtered answers, so both flip directions occur; then both models run."""
    root = tmp_path_factory.mktemp("gsm")
    probe = _task(root, "gsm_probe", ["x"] * N_DOCS)
    a0, b0 = _run(tiny_model_dir, probe, "gsm_probe"), _run(noisy_model_dir, probe, "gsm_probe")
    answers = []
    for i in range(N_DOCS):  # right for the original, for the changed model, or for the other filter
        src = (a0, b0, a0, b0)[i % 4].samples[str(i)]["answers"]
        answers.append(src[FILTERS[(i // 4) % 2]])
    include = _task(root, "gsm_local", answers)
    return include, _run(tiny_model_dir, include, "gsm_local"), _run(noisy_model_dir, include, "gsm_local")


def test_every_filter_has_per_sample_values_and_answers(gsm_runs):
    _, a, _ = gsm_runs
    for f in FILTERS:
        key = f"exact_match,{f}"
        assert len(a.per_sample[key]) == N_DOCS
        assert sum(a.per_sample[key].values()) / N_DOCS == pytest.approx(a.metrics[key])
        assert 0 < a.metrics[key] < 1  # the targets make both outcomes occur
    s = a.samples["0"]
    assert s["prompt"] == "Question: What is 0 plus 7?\nAnswer:" and s["reference"].startswith("#### ")
    assert set(s["answers"]) == set(FILTERS)


def test_per_sample_values_equal_lm_evals_own_log_samples(gsm_runs, tiny_model_dir, tmp_path):
    """lm-eval's CLI with its `hf` model on the same tiny model: same answers, same per-filter values."""
    include, ours, _ = gsm_runs
    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={tiny_model_dir},dtype=float32", "--tasks", "gsm_local", "--include_path", str(include),
           "--device", "cpu", "--batch_size", "1", "--log_samples", "--output_path", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    files = list(out.rglob("samples_gsm_local_*.jsonl"))
    assert len(files) == 1
    theirs = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(theirs) == N_DOCS * len(FILTERS)
    for s in theirs:
        sid, f = str(s["doc_id"]), s["filter"]
        assert ours.per_sample[f"exact_match,{f}"][sid] == s["exact_match"], (sid, f)
        assert ours.samples[sid]["answers"][f] == s["filtered_resps"][0], (sid, f)
        assert ours.samples[sid]["response"] == s["resps"][0][0]
    agg = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["gsm_local"]
    for f in FILTERS:
        assert ours.metrics[f"exact_match,{f}"] == pytest.approx(agg[f"exact_match,{f}"])


def test_compare_reports_flips_and_mcnemar_per_filter(gsm_runs):
    from accbench.compare import compare_task_metric
    from accbench.results import TaskEntry
    from accbench.stats import mcnemar_exact

    _, a, b = gsm_runs
    ea = TaskEntry(model="pretrain", task="gsm", type="lm_eval", metrics=a.metrics, stderr=a.stderr, n=a.n,
                   per_sample=a.per_sample)
    eb = TaskEntry(model="fake_quant", task="gsm", type="lm_eval", metrics=b.metrics, stderr=b.stderr, n=b.n,
                   per_sample=b.per_sample)
    for f in FILTERS:
        m = f"exact_match,{f}"
        c = compare_task_metric(ea, eb, m, "pretrain", "fake_quant", "fake_quant", 1000, 0.95, 0)
        assert c.test == "mcnemar_exact" and c.n == N_DOCS
        va, vb = a.per_sample[m], b.per_sample[m]
        c2w = sum(1 for k in va if va[k] == 1 and vb[k] == 0)
        w2c = sum(1 for k in va if va[k] == 0 and vb[k] == 1)
        assert (c.correct_to_wrong, c.wrong_to_correct) == (c2w, w2c)
        assert c2w > 0 and w2c > 0
        assert c.p_value == pytest.approx(mcnemar_exact(c2w, w2c), rel=1e-12)


def test_lm_eval_export_files_read_by_lm_evals_own_code(gsm_runs, tmp_path):
    from lm_eval.utils import (get_file_task_name, get_latest_filename, get_results_filenames,
                               get_sample_results_filenames)

    from accbench.report.exports import write_task_exports

    _, a, _ = gsm_runs
    from types import SimpleNamespace

    write_task_exports(tmp_path, "pretrain", SimpleNamespace(name="gsm_local"), a)
    files = [str(p) for p in (tmp_path / "lm_eval" / "pretrain").iterdir()]
    res_file = get_latest_filename(get_results_filenames(files))
    samples = get_sample_results_filenames(files)
    assert [get_file_task_name(Path(s).name) for s in samples] == ["samples_gsm_local"[len("samples_"):]]
    res = json.loads(Path(res_file).read_text())
    for f in FILTERS:
        assert res["results"]["gsm_local"][f"exact_match,{f}"] == pytest.approx(a.metrics[f"exact_match,{f}"])
    assert {"results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "task_hashes"} <= set(res)
    rows = [json.loads(x) for x in Path(samples[0]).read_text().splitlines()]
    assert {r["filter"] for r in rows} == set(FILTERS)
    assert set(rows[0]) >= {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
                            "doc_hash", "prompt_hash", "target_hash", "exact_match"}
    assert set(rows[0]["arguments"]) == {"gen_args_0"}


def test_chat_template_is_honoured_for_lm_eval_tasks(tiny_model_dir, tmp_path, lm_eval_mc_task):
    """chat_template: true renders lm-eval's prompts with the tokenizer's template (lm-eval's
    --apply_chat_template); a tokenizer without one is an error, not a silent plain prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from accbench.config import LmEvalTask
    from accbench.errors import AccbenchError
    from accbench.evaluate.backends.hf import HFBackend as Engine
    from accbench.evaluate.tasks import TaskContext, run_task

    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps({"context": "x = 1", "choices": ["+ 2", "- 1"], "label": 0}) + "\n")
    include = lm_eval_mc_task("chat_mc", data)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    task = LmEvalTask(name="chat_mc", type="lm_eval", include_path=str(include), chat_template=True)
    with pytest.raises(AccbenchError, match="has no chat template"):
        run_task(task, Engine(model, tok), TaskContext(tok))
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    res = run_task(task, Engine(model, tok), TaskContext(tok))
    assert res.samples["0"]["prompt"].startswith("<|user|>x = 1")
    plain = run_task(task.model_copy(update={"chat_template": False}), Engine(model, tok), TaskContext(tok))
    assert plain.samples["0"]["prompt"] == "x = 1"
