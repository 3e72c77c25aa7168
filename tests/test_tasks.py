"""Local tasks (multiple_choice, generate, perplexity), the lm-eval task type, and their bad-input errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from accbench.config import GenerateTask, LmEvalTask, MultipleChoiceTask, PerplexityTask
from accbench.errors import AccbenchError
from accbench.evaluate.backends.hf import HFBackend as Engine
from accbench.evaluate.requests import ScoreRequest
from accbench.evaluate.tasks import run_task
from accbench.evaluate.tasks.generate import score_output

# "x = 1 + 2 * 3" is both an item's full text (item a, choice 1) and a prefix-cut of item b's: lm-eval's
# logits cache (0.4.13) scores such pairs wrongly; the comparison runs lm-eval with logits_cache=False
MC_DOCS = [
    {"id": "a", "context": "x = 1", "choices": ["+ 2", "+ 2 * 3", "- 1"], "label": 1},
    {"id": "b", "context": "x = 1 + 2", "choices": ["* 3", "* 3 + 4", "/ 5"], "label": 0},
    {"id": "c", "context": "def f(a, b):\n    return", "choices": ["a + b", "a - b", "None", "a"], "label": 0},
    {"id": "d", "context": "The class keyword", "choices": ["defines a class", "imports a module"], "label": 0},
    {"id": "e", "context": "for i in range(10):", "choices": ["pass", "break", "continue"], "label": 2},
    {"id": "f", "context": "import", "choices": ["os", "sys", "json"], "label": 1},
]


def _write_jsonl(path: Path, docs: list) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def mc_file(tmp_path) -> Path:
    return _write_jsonl(tmp_path / "mc.jsonl", MC_DOCS)


def _mc(path, **kw) -> MultipleChoiceTask:
    return MultipleChoiceTask(name="mc", type="multiple_choice", path=str(path), **kw)


def test_multiple_choice_metrics_from_the_scores(tiny, mc_file):
    model, tok = tiny
    eng = Engine(model, tok, batch_size=4)
    res = run_task(_mc(mc_file), eng)
    lls = [[eng.score_tokens([eng.encode_pair(d["context"], " " + c)])[0][0] for c in d["choices"]] for d in MC_DOCS]
    acc = [float(max(range(len(l)), key=l.__getitem__) == d["label"]) for l, d in zip(lls, MC_DOCS)]
    norm = [float(max(range(len(l)), key=lambda i: l[i] / len(d["choices"][i])) == d["label"]) for l, d in zip(lls, MC_DOCS)]
    assert res.per_sample["acc"] == dict(zip("abcdef", acc))
    assert res.per_sample["acc_norm"] == dict(zip("abcdef", norm))
    assert res.metrics["acc"] == pytest.approx(sum(acc) / 6) and res.n == 6
    p = sum(acc) / 6
    assert res.stderr["acc"] == pytest.approx(math.sqrt(p * (1 - p) * 6 / 5 / 6))


def test_multiple_choice_configurable_fields_and_limit(tiny, tmp_path):
    docs = [{"q": d["context"], "opts": d["choices"], "answer": d["choices"][d["label"]]} for d in MC_DOCS]
    path = _write_jsonl(tmp_path / "renamed.jsonl", docs)
    model, tok = tiny
    res = run_task(_mc(path, context_field="q", choices_field="opts", label_field="answer", limit=4),
                   Engine(model, tok, batch_size=8))
    assert res.n == 4 and sorted(res.per_sample["acc"]) == ["line1", "line2", "line3", "line4"]


@pytest.mark.parametrize("content, message", [
    (None, "data file not found"),
    ('{"context": "a", "choices": ["x", "y"], "label": 0}\n{"context": "b", "choices": ["x"\n', "mc.jsonl:2: not valid JSON"),
    ('{"context": "a", "choices": ["x", "y"], "label": 2}\n', "label 2 is out of range for 2 choices"),
    ('{"context": "a", "options": ["x", "y"], "label": 0}\n', "no field 'choices'"),
])
def test_multiple_choice_bad_input(tmp_path, content, message):
    path = tmp_path / "mc.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AccbenchError, match=message):
        run_task(_mc(path), None)


def test_bad_task_data_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from accbench import cli

    cfg = tmp_path / "tasks.yaml"
    cfg.write_text(f"tasks:\n  - {{name: mc, type: multiple_choice, path: {tmp_path / 'missing.jsonl'}}}\n")
    monkeypatch.setattr("accbench.models.load_model", lambda *a, **k: pytest.fail("the model loaded first"))
    assert cli.main(["eval", "--model", "unused", "--config", str(cfg), "-o", str(tmp_path / "run")]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_generate_metrics():
    cfg = GenerateTask(name="g", type="generate", path="x", ignore_case=True, ignore_punctuation=True)
    assert score_output(" Paris. ", ("paris",), cfg) == 1.0
    assert score_output("Paris is big", ("paris",), cfg) == 0.0
    contains = cfg.model_copy(update={"metric": "contains"})
    assert score_output("I think Paris is big", ("rome", "paris"), contains) == 1.0
    extract = cfg.model_copy(update={"regex": r"answer is (\d+)", "ignore_punctuation": False})
    assert score_output("so the answer is 42.", ("42",), extract) == 1.0
    assert score_output("no number here", ("42",), extract) == 0.0
    regex = GenerateTask(name="g", type="generate", path="x", metric="regex")
    assert score_output("x = 10", (r"\d+",), regex) == 1.0


class _Echo:
    """A fake answerer: generates the last word of the prompt."""

    def generate(self, reqs):
        return [" " + r.context.split()[-1] + r.stop[0] + "tail" for r in reqs]


def test_generate_task_end_to_end(tmp_path):
    path = _write_jsonl(tmp_path / "g.jsonl", [{"prompt": "say Paris", "target": "Paris"},
                                               {"prompt": "say Rome", "targets": ["Milan", "Napoli"]}])
    res = run_task(GenerateTask(name="g", type="generate", path=str(path)), _Echo())
    assert res.per_sample["exact_match"] == {"line1": 1.0, "line2": 0.0}
    assert res.metrics["exact_match"] == 0.5


def test_perplexity_task_matches_perplexity_module(tiny, eval_txt):
    from accbench.data.text import load_texts, ppl_token_stream
    from accbench.evaluate.perplexity import perplexity

    model, tok = tiny
    res = run_task(PerplexityTask(name="p", type="perplexity", path=str(eval_txt), seq_len=64, limit=5),
                   Engine(model, tok))
    ref = perplexity(model, ppl_token_stream("custom", load_texts("custom", str(eval_txt)), tok, 64), 64,
                     max_windows=5, progress=False)
    assert res.metrics["ppl"] == pytest.approx(ref.ppl, rel=1e-6) and res.n == 5


@pytest.fixture
def lm_eval_task_dir(mc_file, lm_eval_mc_task) -> Path:
    return lm_eval_mc_task("local_mc", mc_file)


def test_lm_eval_hf_agrees_with_our_engine(tiny, mc_file, lm_eval_task_dir):
    """lm-eval's own `hf` model (logits_cache=False) and our engine: same choice log-likelihoods, same acc."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from accbench.evaluate.tasks.lmeval import task_manager

    model, tok = tiny
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=4, logits_cache=False, device="cpu")
    out = simple_evaluate(model=hf, tasks=["local_mc"], task_manager=task_manager(str(lm_eval_task_dir), "local_mc"),
                          log_samples=True, bootstrap_iters=0)
    theirs = {s["doc_id"]: [r[0] for r in s["filtered_resps"]] for s in out["samples"]["local_mc"]}
    eng = Engine(model, tok, batch_size=4)
    ours = run_task(_mc(mc_file), eng)
    for i, d in enumerate(MC_DOCS):
        mine = [ll for ll, _ in eng.score([ScoreRequest(d["context"], " " + c) for c in d["choices"]])]
        assert mine == pytest.approx([float(x) for x in theirs[i]], abs=1e-4)
    res = out["results"]["local_mc"]
    assert ours.metrics["acc"] == pytest.approx(res["acc,none"]) and ours.metrics["acc_norm"] == pytest.approx(res["acc_norm,none"])


def test_lm_eval_task_runs_on_our_engine(tiny, mc_file, lm_eval_task_dir):
    model, tok = tiny
    eng = Engine(model, tok, batch_size=4)
    res = run_task(LmEvalTask(name="local_mc", type="lm_eval", include_path=str(lm_eval_task_dir)), eng)
    ours = run_task(_mc(mc_file), eng)
    assert res.metrics["acc"] == pytest.approx(ours.metrics["acc"])
    assert res.metrics["acc_norm"] == pytest.approx(ours.metrics["acc_norm"])
    assert [res.per_sample["acc"][str(i)] for i in range(6)] == list(ours.per_sample["acc"].values())
    assert res.stderr["acc"] == pytest.approx(ours.stderr["acc"])


def test_lm_eval_unknown_task_suggests():
    from types import SimpleNamespace

    from accbench.evaluate.tasks.lmeval import check_task_name

    with pytest.raises(AccbenchError, match="(?s)unknown lm-eval task 'hellaswg'.*did you mean hellaswag"):
        check_task_name("hellaswg", SimpleNamespace(all_tasks=["arc_easy", "hellaswag", "mmlu"]))
    check_task_name("mmlu", SimpleNamespace(all_tasks=["mmlu"]))
