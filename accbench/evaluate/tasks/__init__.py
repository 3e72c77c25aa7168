"""Downstream tasks of the native engine, one file each, dispatched by the config's `type`.

A task turns its documents into requests, asks an `Answerer` (the engine; the engine behind the
per-sample store; the store alone when rescoring; a pool of workers) and turns the answers into a
`TaskResult` with per-sample scores, so two models can be compared pairwise on the same samples.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from accbench.errors import AccbenchError
from accbench.evaluate.requests import GenerateRequest, RollingRequest, ScoreRequest, TaskResult


class Answerer(Protocol):
    """What a task needs to get answers; `Engine` is one."""

    def score(self, requests: list[ScoreRequest]) -> list[tuple[float, bool]]: ...

    def score_rolling(self, requests: list[RollingRequest]) -> list[float]: ...

    def generate(self, requests: list[GenerateRequest]) -> list[str]: ...


TaskFn = Callable[[Any, Answerer], TaskResult]


def _modules() -> dict[str, Any]:
    from accbench.evaluate.tasks import generate, lmeval, multiple_choice, perplexity

    return {"multiple_choice": multiple_choice, "generate": generate, "perplexity": perplexity, "lm_eval": lmeval}


def _runners() -> dict[str, TaskFn]:
    return {name: mod.run for name, mod in _modules().items()}


def check_tasks(cfgs: list[Any]) -> None:
    """Read and check every task's data (and lm-eval task names) before any model loads; task types this
    module does not own are left to their own stage."""
    mods = _modules()
    for cfg in cfgs:
        if cfg.type in mods:
            mods[cfg.type].check(cfg)


def run_task(cfg: Any, answerer: Answerer) -> TaskResult:
    """Evaluate one task config (MultipleChoiceTask, GenerateTask, ...) with `answerer`."""
    runners = _runners()
    if cfg.type not in runners:
        raise AccbenchError(f"task '{cfg.name}': type '{cfg.type}' is not implemented in this version",
                            f"use one of: {', '.join(sorted(runners))}")
    return runners[cfg.type](cfg, answerer)
