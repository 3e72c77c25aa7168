"""Helpers shared by the local tasks: reading jsonl documents with line-numbered errors, few-shot
prefixes, and the standard error of a mean."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from accbench.data.jsonl import iter_jsonl
from accbench.errors import DataError

BUILTIN_PREFIX = "builtin:"  # path: builtin:NAME reads accbench.builtin_tasks instead of a file


def read_jsonl(path: str | None, task: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, document) for every non-blank line; any bad line stops with its number."""
    if not path:
        raise DataError(f"task '{task}' needs a path to its data", f"set path: for task '{task}'")
    if path.startswith(BUILTIN_PREFIX):
        return _builtin_rows(path[len(BUILTIN_PREFIX):], task)
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"task '{task}': data file not found: {p}", "check the task's path (relative to where you run)")
    docs = list(iter_jsonl(p, prefix=f"task '{task}': "))
    if not docs:
        raise DataError(f"task '{task}': {p} holds no documents", "add one JSON object per line")
    return docs


def _builtin_rows(name: str, task: str) -> list[tuple[int, dict[str, Any]]]:
    from accbench.builtin_tasks import BUILTIN_TASK_DATA, builtin_task_rows

    if name not in BUILTIN_TASK_DATA:
        valid = ", ".join(f"builtin:{k}" for k in BUILTIN_TASK_DATA)
        raise DataError(f"task '{task}': unknown built-in task data builtin:{name}", f"use one of: {valid}")
    return list(enumerate(builtin_task_rows(name), 1))


def field(doc: dict, name: str, where: str, task: str) -> Any:
    if name not in doc:
        keys = ", ".join(sorted(doc)) or "none"
        raise DataError(f"task '{task}': {where}: no field '{name}' (fields: {keys})",
                        f"rename the field or set the task's *_field option to one of: {keys}")
    return doc[name]


def sample_id(doc: dict, line: int) -> str:
    """A stable id: the document's own `id` when it has one, else its line number."""
    return str(doc["id"]) if "id" in doc else f"line{line}"


def apply_limit(items: list[Any], limit: int | float | None) -> list[Any]:
    """The first `limit` items; a fraction below 1 keeps ceil(len * limit), as lm-eval's --limit."""
    if not limit:
        return items
    n = math.ceil(len(items) * limit) if isinstance(limit, float) and limit < 1 else int(limit)
    return items[:n]


def fewshot_prefix(shots: list[str], k: int, skip: int, seed: int, delimiter: str = "\n\n") -> str:
    """k solved examples (never the document itself), drawn with a per-document seeded generator."""
    if k == 0:
        return ""
    pool = [i for i in range(len(shots)) if i != skip]
    if len(pool) < k:
        raise DataError(f"num_fewshot={k} needs at least {k + 1} documents, the task has {len(shots)}",
                        "lower num_fewshot")
    rnd = random.Random(seed * 1_000_003 + skip)
    return "".join(shots[i] + delimiter for i in rnd.sample(pool, k))


def mean_stderr(values: list[float]) -> float | None:
    """Standard error of the mean (sample standard deviation / sqrt n), as lm-eval reports it."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)
