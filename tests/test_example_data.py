"""Every item of every task data file the examples name (and of the built-in task data) is well formed.

A user copies the examples; a broken item there (a choice that starts with a space when the delimiter adds
one, a label out of range, an id used twice) silently skews every score computed on it. Checked through the
same loaders the tasks use, plus the rules those loaders cannot know (whitespace at the delimiter).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from accbench.config import GenerateTask, MultipleChoiceTask
from accbench.evaluate.tasks.generate import load_items
from accbench.evaluate.tasks.multiple_choice import load_questions

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "examples").glob("*.yaml")) + [ROOT / "examples" / "data" / "tasks.yaml"]


def _task_entries() -> list[tuple[str, dict]]:
    out = []
    for cfg in CONFIGS:
        for t in (yaml.safe_load(cfg.read_text()) or {}).get("tasks") or []:
            if t.get("type") in ("multiple_choice", "generate"):
                out.append((f"{cfg.relative_to(ROOT)}:{t['name']}", t))
    return out


ENTRIES = _task_entries()


def test_the_examples_name_task_files() -> None:
    paths = {t["path"] for _, t in ENTRIES}
    assert {"examples/data/mc_python.jsonl", "examples/data/gen_python.jsonl", "builtin:pydoc-cloze",
            "builtin:pydoc-nextword"} <= paths


def _resolve(task: dict) -> dict:
    path = task["path"]
    return {**task, "path": path if path.startswith("builtin:") else str(ROOT / path)}


@pytest.mark.parametrize("where,task", ENTRIES, ids=[w for w, _ in ENTRIES])
def test_every_item(where: str, task: dict) -> None:
    if task["type"] == "multiple_choice":
        cfg = MultipleChoiceTask(**_resolve(task))
        questions = load_questions(cfg)  # labels in range, unique ids, >= 2 string choices
        assert questions
        for q in questions:
            assert len(set(q.choices)) == len(q.choices), f"{where} {q.id}: duplicate choices"
            assert all(c.strip() for c in q.choices), f"{where} {q.id}: an empty choice"
            if cfg.target_delimiter.endswith(" "):
                assert not any(c[:1].isspace() for c in q.choices), \
                    f"{where} {q.id}: a choice starts with whitespace; the target delimiter already adds a space"
                assert not q.context[-1:].isspace(), f"{where} {q.id}: the context ends with whitespace"
    else:
        cfg = GenerateTask(**_resolve(task))
        items = load_items(cfg)
        assert items and len({it.id for it in items}) == len(items), f"{where}: duplicate ids"
        for it in items:
            assert it.prompt and all(t.strip() for t in it.targets), f"{where} {it.id}: empty prompt or target"


def test_opencompass_example_items() -> None:
    rows = [json.loads(line) for line in (ROOT / "examples" / "opencompass" / "quick_mcq.jsonl").read_text().splitlines()
            if line.strip()]
    assert rows
    for r in rows:
        assert r["answer"] in "ABCD" and all(r[k].strip() == r[k] and r[k] for k in "ABCD"), r
        assert len({r[k] for k in "ABCD"}) == 4, r
