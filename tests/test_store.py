"""The per-sample store: an interrupted `accbench eval` resumed gives the uninterrupted results; rescore
recomputes them from the stored responses without a model."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from accbench import cli
from accbench.evaluate import pool
from accbench.evaluate.backends.hf import HFBackend as Engine
from accbench.results import Results

DOCS = [{"id": f"q{i}", "context": f"x = {i}", "choices": [f"+ {i}", "- 1", f"* {i} + 2"], "label": i % 3}
        for i in range(12)]
DOCS.append({"id": "long", "context": "word " * 700, "choices": ["a", "b", "c"], "label": 0})  # > 512-token window


@pytest.fixture
def task_yaml(tmp_path) -> Path:
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"prompt": f"x = {i}", "target": str(i)}) + "\n" for i in range(4)))
    cfg = tmp_path / "tasks.yaml"
    cfg.write_text(f"tasks:\n  - {{name: mc, type: multiple_choice, path: {data}, batch_size: 4}}\n"
                   f"  - {{name: gen, type: generate, path: {gen}, max_new_tokens: 4, metric: contains}}\n")
    return cfg


def _tasks(run_dir) -> dict:
    return {t.task: (t.metrics, t.per_sample, t.model_dump().get("truncated")) for t in Results.load(run_dir).tasks}


def test_interrupted_run_resumes_to_identical_results(tiny_model_dir, task_yaml, tmp_path, monkeypatch,
                                                       accbench_eval):
    assert accbench_eval(tiny_model_dir, task_yaml, tmp_path / "full") == 0
    full = _tasks(tmp_path / "full")
    assert full["mc"][2] == 3  # the long question's three requests were cut from the left, and counted

    monkeypatch.setattr(pool, "CHUNK", 9)  # three choices per question: 3 questions per engine call and commit
    real, calls, crash = Engine.score, [], [True]

    def dies_on_third_chunk(self, reqs):
        calls.append(len(reqs))
        if crash[0] and len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, reqs)

    monkeypatch.setattr(Engine, "score", dies_on_third_chunk)
    assert accbench_eval(tiny_model_dir, task_yaml, tmp_path / "cut") == 130
    assert Results.load(tmp_path / "cut").status == "interrupted"
    db = sqlite3.connect(tmp_path / "cut" / "samples.sqlite")
    assert db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 18  # two chunks survived the crash

    calls.clear()
    crash[0] = False
    assert accbench_eval(tiny_model_dir, task_yaml, tmp_path / "cut", "--resume") == 0
    assert sum(calls) == 39 - 18  # only the missing requests were recomputed
    assert _tasks(tmp_path / "cut") == full
    assert Results.load(tmp_path / "cut").status == "complete"


def test_rescore_without_a_model(tiny_model_dir, task_yaml, tmp_path, monkeypatch, accbench_eval):
    run = tmp_path / "run"
    assert accbench_eval(tiny_model_dir, task_yaml, run) == 0
    before = _tasks(run)
    # a changed metric is recomputed from the stored outputs; the model is never loaded
    cfg = (run / "config.yaml").read_text().replace("metric: contains", "metric: exact_match")
    (run / "config.yaml").write_text(cfg)
    monkeypatch.setattr("accbench.models.load_model", lambda *a, **k: pytest.fail("rescore loaded a model"))
    assert cli.main(["rescore", str(run)]) == 0
    after = _tasks(run)
    assert after["mc"] == before["mc"]
    assert list(after["gen"][0]) == ["exact_match"]


def test_rescore_reports_missing_responses(tiny_model_dir, task_yaml, tmp_path, capsys, accbench_eval):
    run = tmp_path / "run"
    assert accbench_eval(tiny_model_dir, task_yaml, run) == 0
    sqlite3.connect(run / "samples.sqlite").execute("DELETE FROM samples WHERE kind = 'generate'").connection.commit()
    assert cli.main(["rescore", str(run)]) == 2
    assert "not in the store" in capsys.readouterr().err


def test_store_rows_carry_the_sample_id(tiny_model_dir, task_yaml, tmp_path, accbench_eval):
    """Every stored request names the document that asked it (the task's sample id), and the task entry holds
    each sample's question, gold answer and chosen answer under the same id."""
    from accbench.store import SampleStore

    assert accbench_eval(tiny_model_dir, task_yaml, tmp_path / "run") == 0
    store = SampleStore(tmp_path / "run")
    fp = store.models()["pretrain"]
    rows = store.sample_rows(fp, "mc")
    store.close()
    assert len(rows) == 3 * len(DOCS)
    from collections import Counter

    assert Counter(sid for sid, *_ in rows) == {d["id"]: 3 for d in DOCS}  # one per choice
    assert {req["continuation"] for sid, _, req, _ in rows if sid == "q5"} == {" " + c for c in DOCS[5]["choices"]}
    assert all("sample_id" not in req for _, _, req, _ in rows)  # not part of the request's identity (key)
    mc = next(t for t in Results.load(tmp_path / "run").tasks if t.task == "mc")
    q3 = mc.samples["q3"]
    assert q3.prompt == "x = 3" and q3.reference == DOCS[3]["choices"][0]
    assert q3.response in DOCS[3]["choices"] and (q3.response == q3.reference) == (mc.per_sample["acc"]["q3"] == 1.0)
