"""Requests pooled across the tasks of a position: one engine pass per kind, results equal to running each
task alone, multi-round tasks, a failing task that does not stop the others, an interrupt that stops all."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from accbench.config import GenerateTask, LmEvalTask, MultipleChoiceTask, PerplexityTask
from accbench.evaluate.backends.hf import HFBackend as Engine
from accbench.evaluate.pool import RequestPool
from accbench.evaluate.requests import GenerateRequest, ScoreRequest
from accbench.evaluate.tasks import run_task
from accbench.results import Results

MC = [{"id": f"q{i}", "context": f"def f{i}(x):\n    return", "choices": [" x", f" x + {i}", " None"], "label": i % 3}
      for i in range(10)]
MC2 = [{"id": f"r{i}", "context": f"import os{i}", "choices": [" sys", "\nimport json"], "label": 0} for i in range(7)]
GEN = [{"prompt": f"x = {i}\ny =", "target": str(i)} for i in range(5)]


def _jsonl(path: Path, docs: list) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


@pytest.fixture
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def task_cfgs(tmp_path, eval_txt) -> list:
    mc, mc2 = _jsonl(tmp_path / "mc.jsonl", MC), _jsonl(tmp_path / "mc2.jsonl", MC2)
    gen = _jsonl(tmp_path / "g.jsonl", GEN)
    return [
        MultipleChoiceTask(name="mc", type="multiple_choice", path=str(mc)),
        MultipleChoiceTask(name="mc_again", type="multiple_choice", path=str(mc)),  # same contexts as mc
        GenerateTask(name="gen", type="generate", path=str(gen), max_new_tokens=6, metric="contains"),
        MultipleChoiceTask(name="mc2", type="multiple_choice", path=str(mc2)),
        PerplexityTask(name="ppl", type="perplexity", path=str(eval_txt), seq_len=64, limit=3),
    ]


class CountingEngine(Engine):
    calls: list

    def score(self, requests):
        self.calls.append(("score", len(requests)))
        return super().score(requests)

    def generate(self, requests):
        self.calls.append(("generate", len(requests)))
        return super().generate(requests)


def _pooled(tasks: list, engine: Engine) -> dict:
    pool = RequestPool(lambda bs: engine)
    for t in tasks:
        pool.add(t.name, lambda client, t=t: run_task(t, client), t.batch_size, engine)
    out: dict = {}
    pool.run(lambda name, res, err: out.__setitem__(name, err if err is not None else res))
    return out, pool


def test_pooled_tasks_equal_each_task_alone_with_one_engine_pass_per_kind(tiny, task_cfgs, one_thread):
    model, tok = tiny
    engines = {t.name: Engine(model, tok, batch_size=4) for t in task_cfgs}
    alone = {t.name: run_task(t, engines[t.name]) for t in task_cfgs}
    eng = CountingEngine(model, tok, batch_size=4)
    eng.calls = []
    pooled, pool = _pooled(task_cfgs, eng)
    # every task's score requests went to the engine in one call (mc_again's are mc's: asked once), and the
    # generations in one more
    assert eng.calls == [("score", 10 * 3 + 7 * 2), ("generate", 5)]
    assert pool.stats.rounds == 1 and pool.stats.passes == [("score", 3, 44), ("generate", 1, 5)]
    for name, res in alone.items():
        got = pooled[name]
        assert got.per_sample == res.per_sample, name  # accuracies and generations: exactly equal
        assert got.metrics == pytest.approx(res.metrics, rel=1e-6), name
    # mc and mc_again ask the same questions: pooled, they cost the model no more tokens than mc alone
    assert eng.stats.forward_tokens == sum(e.stats.forward_tokens for n, e in engines.items()
                                           if n not in ("ppl", "mc_again"))


def test_pooled_log_likelihoods_equal_the_unpooled_ones(tiny, one_thread):
    model, tok = tiny
    a = [ScoreRequest(d["context"], c) for d in MC for c in d["choices"]]
    b = [ScoreRequest(d["context"], c) for d in MC2 for c in d["choices"]]
    eng = Engine(model, tok, batch_size=3)
    alone = eng.score(a), eng.score(b)
    got: dict = {}
    pool = RequestPool(lambda bs: eng)
    pool.add("a", lambda c: c.score(a), 3, eng)
    pool.add("b", lambda c: c.score(b), 3, eng)
    pool.run(lambda name, res, err: got.__setitem__(name, res))
    for mine, ref in zip((got["a"], got["b"]), alone):
        assert [g for _, g in mine] == [g for _, g in ref]
        assert [ll for ll, _ in mine] == pytest.approx([ll for ll, _ in ref], abs=1e-5)


class FakeBackend:
    """Answers every kind through one function answer(kind, requests); truncates nothing."""

    last_truncated: list = []

    def __init__(self, answer):
        self.answer = answer

    def score(self, requests):
        return self.answer("score", requests)

    def generate(self, requests):
        return self.answer("generate", requests)


def test_multi_round_tasks_join_later_passes():
    """A task that asks twice (score, then generate from what it scored) joins the next round's pass."""
    seen: list = []

    def answer(kind, reqs):
        seen.append((kind, sorted(r.context for r in reqs)))
        if kind == "score":
            return [(float(len(r.continuation)), True) for r in reqs]
        return [r.context.upper() for r in reqs]

    def two_rounds(client):
        lls = client.score([ScoreRequest("a", "xx"), ScoreRequest("b", "y")])
        return client.generate([GenerateRequest(f"turn2 {ll:.0f}", 4) for ll, _ in lls])

    pool = RequestPool(lambda bs: FakeBackend(answer))
    pool.add("two", two_rounds, "auto", None)
    pool.add("one", lambda c: c.score([ScoreRequest("c", "zzz")]), "auto", None)
    pool.add("gen", lambda c: c.generate([GenerateRequest("g", 4)]), "auto", None)
    got: dict = {}
    pool.run(lambda name, res, err: got.__setitem__(name, (res, err)))
    assert seen == [("score", ["a", "b", "c"]), ("generate", ["g"]), ("generate", ["turn2 1", "turn2 2"])]
    assert got["two"] == (["TURN2 2", "TURN2 1"], None)
    assert got["one"] == ([(3.0, True)], None) and got["gen"] == (["G"], None)
    assert pool.stats.rounds == 2


def test_failing_task_does_not_stop_the_others():
    def answer(kind, reqs):
        if any(r.context == "boom" for r in reqs):
            raise RuntimeError("engine refused")
        return [(0.0, True)] * len(reqs)

    def bad_data(client):
        raise ValueError("line 3 is not json")

    pool = RequestPool(lambda bs: FakeBackend(answer))
    pool.add("bad", bad_data, "auto", None)
    pool.add("ok", lambda c: c.score([ScoreRequest("x", "y")]), "auto", None)
    pool.add("refused", lambda c: c.score([ScoreRequest("boom", "y")]), 8, None)  # its own batch-size pass
    got: dict = {}
    pool.run(lambda name, res, err: got.__setitem__(name, (res, err)))
    assert isinstance(got["bad"][1], ValueError)
    assert got["ok"] == ([(0.0, True)], None)
    assert isinstance(got["refused"][1], RuntimeError)


def test_interrupt_stops_every_task_thread():
    def answer(kind, reqs):
        raise KeyboardInterrupt

    pool = RequestPool(lambda bs: FakeBackend(answer))
    for i in range(3):
        pool.add(f"t{i}", lambda c: c.score([ScoreRequest("x", "y")]), "auto", None)
    with pytest.raises(KeyboardInterrupt):
        pool.run(lambda *a: None)
    for t in threading.enumerate():
        if t.name.startswith("task-t"):
            t.join(timeout=5)
            assert not t.is_alive()


def test_truncations_the_engine_reports_reach_each_task_that_asked(tiny, one_thread):
    """The engine says which requests it cut; each task that asked one is told, without re-tokenizing."""
    model, tok = tiny
    long = ScoreRequest("word " * 700, " a")  # longer than the 512-token window
    short = ScoreRequest("x = 1", " + 2")
    eng = Engine(model, tok, batch_size=4)
    told: dict = {}
    pool = RequestPool(lambda bs: eng)
    pool.add("a", lambda c: c.answer("score", [short, long], lambda idx, ans, n: told.__setitem__("a", n)), 4, eng)
    pool.add("b", lambda c: c.answer("score", [long], lambda idx, ans, n: told.__setitem__("b", n)), 4, eng)
    pool.add("c", lambda c: c.answer("score", [short], lambda idx, ans, n: told.__setitem__("c", n)), 4, eng)
    pool.run(lambda name, res, err: None)
    assert told == {"a": 1, "b": 1, "c": 0}
    assert [eng.truncates("score", r) for r in (long, short)] == [True, False]  # the engine's own reckoning agrees
    assert eng.stats.truncated == 1  # the shared long request ran once


def test_run_pools_tasks_and_keeps_config_order(tiny_model_dir, task_cfgs, tmp_path, monkeypatch, accbench_eval):
    """From the CLI: one score and one generate engine call for the whole position, entries in config order,
    per-task request counts and truncations recorded."""
    calls: list = []
    real_score, real_gen = Engine.score, Engine.generate
    monkeypatch.setattr(Engine, "score", lambda self, r: calls.append(("score", len(r))) or real_score(self, r))
    monkeypatch.setattr(Engine, "generate", lambda self, r: calls.append(("generate", len(r))) or real_gen(self, r))
    cfg = tmp_path / "tasks.yaml"
    cfg.write_text("tasks:\n" + "".join(f"  - {json.dumps(t.model_dump(mode='json', exclude_unset=True))}\n"
                                        for t in task_cfgs))
    out = tmp_path / "run"
    assert accbench_eval(tiny_model_dir, cfg, out) == 0
    assert calls == [("score", 44), ("generate", 5)]
    tasks = Results.load(out).tasks
    assert [t.task for t in tasks] == [t.name for t in task_cfgs]
    by = {t.task: t.model_dump() for t in tasks}
    assert by["mc"]["requests"] == {"score": 30} and by["gen"]["requests"] == {"generate": 5}
    assert by["mc2"]["truncated"] == 0 and by["mc"]["reused_from_store"] == 0


def test_lm_eval_task_pools_with_local_tasks(tiny, tmp_path, lm_eval_mc_task, one_thread):
    """lm-eval runs in its task thread like any task: its requests join the same pass as the local task's."""
    model, tok = tiny
    include = lm_eval_mc_task("pooled_mc", _jsonl(tmp_path / "mc.jsonl", MC))
    tasks = [LmEvalTask(name="pooled_mc", type="lm_eval", include_path=str(include)),
             MultipleChoiceTask(name="mc2", type="multiple_choice", path=str(_jsonl(tmp_path / "mc2.jsonl", MC2)))]
    alone = {t.name: run_task(t, Engine(model, tok, batch_size=4)) for t in tasks}
    eng = CountingEngine(model, tok, batch_size=4)
    eng.calls = []
    pooled, _ = _pooled(tasks, eng)
    assert eng.calls == [("score", 10 * 3 + 7 * 2)]
    for name, res in alone.items():
        assert not isinstance(pooled[name], BaseException), pooled[name]
        assert pooled[name].per_sample == res.per_sample and pooled[name].metrics == pytest.approx(res.metrics)


def test_generations_with_different_lengths_and_stops_pool_exactly(tiny, one_thread):
    """Greedy generations of tasks with other max_new_tokens and stop strings share batches, text for text."""
    model, tok = tiny
    long = [GenerateRequest(d["prompt"], 12) for d in GEN]
    short = [GenerateRequest(f"def f{i}(x):\n", 3, ("\n", " ")) for i in range(6)]
    alone = Engine(model, tok, batch_size=8)
    expected = {"long": alone.generate(long), "short": alone.generate(short)}
    eng = CountingEngine(model, tok, batch_size=8)
    eng.calls = []
    pool = RequestPool(lambda bs: eng)
    pool.add("long", lambda c: c.generate(long), 8, eng)
    pool.add("short", lambda c: c.generate(short), 8, eng)
    got: dict = {}
    pool.run(lambda name, res, err: got.__setitem__(name, res))
    assert eng.calls == [("generate", 11)]
    assert got == expected
    assert any(len(t) > 0 for t in expected["long"])  # something was generated to compare


def test_a_task_failing_mid_run_keeps_the_others_and_exits_nonzero(tiny_model_dir, tmp_path, accbench_eval,
                                                                     capsys):
    """A task the engine refuses (no room for the prompt) fails with its message and exit 2; the task
    that ran beside it is saved."""
    mc, gen = _jsonl(tmp_path / "mc.jsonl", MC), _jsonl(tmp_path / "g.jsonl", GEN)
    cfg = tmp_path / "tasks.yaml"
    cfg.write_text(f"tasks:\n  - {{name: mc, type: multiple_choice, path: {mc}}}\n"
                   f"  - {{name: gen, type: generate, path: {gen}, max_new_tokens: 600}}\n")  # window: 512
    out = tmp_path / "run"
    assert accbench_eval(tiny_model_dir, cfg, out) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens=600 leaves no room for the prompt" in err and "lower max_new_tokens" in err
    saved = Results.load(out)
    assert [t.task for t in saved.tasks] == ["mc"] and saved.tasks[0].n == len(MC)
