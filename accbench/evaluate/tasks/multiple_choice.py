"""Multiple choice from a local jsonl: one document per line with a context, choices and the label.

Scored as lm-eval scores `doc_to_text: "{{context}}"`, `doc_to_choice: "{{choices}}"`: each choice is
the continuation `target_delimiter + choice`. acc picks the most likely choice; acc_norm divides each
log-likelihood by the choice's character length (without the delimiter), as lm-eval does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from accbench.errors import DataError
from accbench.evaluate.requests import Answerer, ScoreRequest, TaskResult
from accbench.evaluate.tasks.common import apply_limit, fewshot_prefix, field, mean_stderr, read_jsonl, sample_id

if TYPE_CHECKING:
    from accbench.config import MultipleChoiceTask


@dataclass(frozen=True)
class Question:
    id: str
    context: str
    choices: tuple[str, ...]
    label: int


def load_questions(cfg: "MultipleChoiceTask") -> list[Question]:
    """Read and check the task's documents (the first `limit` of them)."""
    rows = read_jsonl(cfg.path, cfg.name)
    out, seen = [], set()
    for line, doc in rows:
        where = f"{cfg.path}:{line}"
        choices = field(doc, cfg.choices_field, where, cfg.name)
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise DataError(f"task '{cfg.name}': {where}: '{cfg.choices_field}' must be a list of at least two strings",
                            'write the choices as e.g. ["Paris", "Rome"]')
        label = field(doc, cfg.label_field, where, cfg.name)
        if isinstance(label, bool) or not isinstance(label, (int, str)):  # true/false/1.0 are not an index
            raise DataError(f"task '{cfg.name}': {where}: label {label!r} ({type(label).__name__}) is not a choice "
                            "index", "give the label as the index of the right choice (0-based) or its exact text")
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in choices:
                raise DataError(f"task '{cfg.name}': {where}: label {label!r} is not one of the choices",
                                "give the label as the index of the right choice (0-based) or its exact text")
            label = choices.index(label)
        label = int(label)
        if not 0 <= label < len(choices):
            raise DataError(f"task '{cfg.name}': {where}: label {label} is out of range for {len(choices)} choices",
                            f"labels are 0-based indexes: 0..{len(choices) - 1}")
        context = field(doc, cfg.context_field, where, cfg.name)
        if not isinstance(context, str):
            raise DataError(f"task '{cfg.name}': {where}: '{cfg.context_field}' must be a string")
        qid = sample_id(doc, line)
        if qid in seen:
            raise DataError(f"task '{cfg.name}': {where}: id {qid!r} appears twice", "give every document a unique id")
        seen.add(qid)
        out.append(Question(qid, context, tuple(choices), label))
    return apply_limit(out, cfg.limit)


def build_requests(cfg: "MultipleChoiceTask", questions: list[Question]) -> list[ScoreRequest]:
    shots = [q.context + cfg.target_delimiter + q.choices[q.label] for q in questions]
    reqs = []
    for i, q in enumerate(questions):
        ctx = fewshot_prefix(shots, cfg.num_fewshot, i, cfg.seed) + q.context
        reqs.extend(ScoreRequest(ctx, cfg.target_delimiter + c, sample_id=q.id) for c in q.choices)
    return reqs


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties: the first, as numpy's argmax


def compute_metrics(cfg: "MultipleChoiceTask", questions: list[Question], answers: list[tuple[float, bool]]) -> TaskResult:
    acc, acc_norm, texts, k = {}, {}, {}, 0
    for q in questions:
        lls = [a[0] for a in answers[k : k + len(q.choices)]]
        k += len(q.choices)
        pick, pick_norm = _argmax(lls), _argmax([ll / max(len(c), 1) for ll, c in zip(lls, q.choices)])
        acc[q.id] = float(pick == q.label)
        acc_norm[q.id] = float(pick_norm == q.label)
        texts[q.id] = {"prompt": q.context, "reference": q.choices[q.label], "response": q.choices[pick],
                       "answers": {"acc_norm": q.choices[pick_norm]}}
    assert k == len(answers)
    n = len(questions)
    return TaskResult(task=cfg.name, type="multiple_choice",
                      metrics={"acc": sum(acc.values()) / n, "acc_norm": sum(acc_norm.values()) / n},
                      stderr={"acc": mean_stderr(list(acc.values())), "acc_norm": mean_stderr(list(acc_norm.values()))},
                      n=n, per_sample={"acc": acc, "acc_norm": acc_norm}, samples=texts)


def check(cfg: "MultipleChoiceTask") -> None:
    load_questions(cfg)


def run(cfg: "MultipleChoiceTask", answerer: Answerer) -> TaskResult:
    questions = load_questions(cfg)
    return compute_metrics(cfg, questions, answerer.score(build_requests(cfg, questions)))
