"""The built-in task data (accbench.builtin_tasks): held-out, deterministic, well formed, readable by the tasks."""

from __future__ import annotations

import re

import pytest

from accbench.builtin import builtin_texts
from accbench.builtin_tasks import BUILTIN_TASK_DATA, N_ITEMS, builtin_task_rows
from accbench.config import GenerateTask, MultipleChoiceTask
from accbench.errors import DataError
from accbench.evaluate.tasks.generate import load_items
from accbench.evaluate.tasks.multiple_choice import build_requests, load_questions


@pytest.fixture(scope="module")
def cloze() -> list[dict]:
    return builtin_task_rows("pydoc-cloze")


@pytest.fixture(scope="module")
def nextword() -> list[dict]:
    return builtin_task_rows("pydoc-nextword")


def test_sizes_and_determinism(cloze: list[dict], nextword: list[dict]) -> None:
    assert len(cloze) == N_ITEMS == len(nextword) == 400
    assert builtin_task_rows("pydoc-cloze") == cloze and builtin_task_rows("pydoc-nextword") == nextword
    assert cloze[0]["choices"] == ["comparisons", "underscores", "expression1", "independent"] and cloze[0]["label"] == 2
    assert nextword[0]["target"] == "form" and nextword[0]["prompt"].endswith("AssertionError\n\nThe extended")
    assert sorted({it["label"] for it in cloze}) == [0, 1, 2, 3]  # the answer is not always in one place
    assert 0.2 < sum(it["label"] == 0 for it in cloze) / len(cloze) < 0.3


def test_cloze_items_are_fair(cloze: list[dict]) -> None:
    held_out = "\n".join(builtin_texts("pydoc-plain", "test"))
    train = "\n".join(builtin_texts("pydoc-plain", "train"))
    docs = [doc for split in ("train", "calib", "test") for doc in builtin_texts("pydoc-plain", split)]
    corpus = " " + " ".join(re.findall(r"\w+", "\n".join(docs).lower())) + " "
    for it in cloze:
        truth = it["choices"][it["label"]]
        assert len({len(c) for c in it["choices"]}) == 1, it  # length gives nothing away
        assert len({c.lower() for c in it["choices"]}) == 4, it
        assert it["context"] + " " + truth in held_out, it  # the truth really follows the context
        assert not it["context"][-1].isspace() and not any(c[0].isspace() for c in it["choices"]), it
        prev = re.findall(r"\w+", it["context"])[-1].lower()
        for c in it["choices"]:  # no distractor is itself a continuation seen anywhere in the corpus
            assert c == truth or f" {prev} {c.lower()} " not in corpus, (it, c)
        last_line = it["context"].rsplit("\n", 1)[-1]
        assert last_line + " " + truth not in train, it  # the topics quote each other: quoted passages are left out


def test_read_by_the_tasks_through_builtin_paths(cloze: list[dict], nextword: list[dict]) -> None:
    mc = MultipleChoiceTask(name="c", type="multiple_choice", path="builtin:pydoc-cloze")
    qs = load_questions(mc)
    assert [q.id for q in qs] == [it["id"] for it in cloze]
    first = build_requests(mc, qs[:1])
    assert [r.continuation for r in first] == [" " + c for c in cloze[0]["choices"]]
    gen = GenerateTask(name="g", type="generate", path="builtin:pydoc-nextword", metric="exact_match", regex=r"\w+")
    assert [(it.prompt, it.targets) for it in load_items(gen)][:2] == [(r["prompt"], (r["target"],)) for r in nextword[:2]]


def test_unknown_builtin_task_data_is_a_clear_error() -> None:
    mc = MultipleChoiceTask(name="c", type="multiple_choice", path="builtin:pydoc-quiz")
    with pytest.raises(DataError, match="unknown built-in task data builtin:pydoc-quiz") as exc:
        load_questions(mc)
    assert all(f"builtin:{k}" in exc.value.hint for k in BUILTIN_TASK_DATA)
    with pytest.raises(ValueError, match="pydoc-cloze"):
        builtin_task_rows("nope")
