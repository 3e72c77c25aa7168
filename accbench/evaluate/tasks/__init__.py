"""Downstream tasks of the native engine, one file each, dispatched by the config's `type`.

A task turns its documents into requests, asks an `Answerer` (a model backend, evaluate/backends; the
request pool's client behind the per-sample store; the store alone when rescoring) and turns the answers
into a `TaskResult` with per-sample scores, so two models can be compared pairwise on the same samples.
A new task type is one file here (`check(cfg)`, `run(cfg, answerer)`) plus one line in `_modules`, and its
config class in config_tasks.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from accbench.errors import AccbenchError
from accbench.evaluate.requests import Answerer, TaskResult

if TYPE_CHECKING:
    from accbench.config_tasks import HumanEvalTask, MTBenchTask, TaskCfg


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
        if cfg.chat_template and cfg.type in NO_CHAT_TEMPLATE:
            raise AccbenchError(f"task '{cfg.name}': chat_template cannot apply to a {cfg.type} task "
                                f"({NO_CHAT_TEMPLATE[cfg.type]})", "drop --apply_chat_template / chat_template: "
                                "true for it, or run it as an lm-eval task, where lm-eval templates the prompts")
        if cfg.type in mods:
            mods[cfg.type].check(cfg)
        elif cfg.type == "mtbench":
            from accbench.evaluate.tasks.mtbench import check

            check(cfg)
        elif cfg.type == "generate_only":
            from accbench.evaluate.tasks.custom_generate import check as check_custom

            check_custom(cfg)


# task types where a chat template has no defined meaning: refused rather than silently ignored
NO_CHAT_TEMPLATE = {"multiple_choice": "its choices are scored as raw continuations of the context",
                    "perplexity": "it scores raw text"}


@dataclass
class TaskContext:
    """What the chat/code/judge tasks need beyond an answerer: the tokenizer (chat templates), a work
    directory for their own caches (judge replies), the position being evaluated, and a judge loader."""

    tokenizer: Any = None
    work_dir: Path | None = None
    position: str = ""
    load_judge: Callable[[Any], Any] | None = None  # JudgeCfg -> JudgeClient, for `hf` judges
    baseline: str = ""  # the baseline model's position (MT-bench pairwise judging reads its answers)
    model_fingerprint: str = ""  # what the model at `position` is: keys of caches that outlive a config change


def _run_humaneval(cfg: "HumanEvalTask", answerer: Answerer, ctx: TaskContext) -> TaskResult:
    from accbench.evaluate.tasks.humaneval import evaluate_humaneval

    return evaluate_humaneval(cfg, answerer.generate, ctx.tokenizer)


def _run_mtbench(cfg: "MTBenchTask", answerer: Answerer, ctx: TaskContext) -> TaskResult:
    from accbench.evaluate.tasks.mtbench import evaluate_mtbench

    if ctx.work_dir is None:
        raise AccbenchError(f"task '{cfg.name}': MT-bench needs a run directory for its judge cache")
    judge = ctx.load_judge(cfg.judge) if cfg.judge.type == "hf" and ctx.load_judge else None
    root = ctx.work_dir / "mtbench" / cfg.name
    return evaluate_mtbench(cfg, answerer.generate, ctx.tokenizer, root / ctx.position, judge=judge,
                            model_id=ctx.position, baseline_dir=root / ctx.baseline if ctx.baseline else None,
                            baseline_name=ctx.baseline, model_key=f"{ctx.position}@{ctx.model_fingerprint}")


def _run_custom_generate(cfg: Any, answerer: Answerer, ctx: TaskContext) -> TaskResult:
    from accbench.evaluate.tasks.custom_generate import run

    return run(cfg, answerer, ctx.tokenizer)


def _run_lm_eval(cfg: Any, answerer: Answerer, ctx: TaskContext) -> TaskResult:
    from accbench.evaluate.tasks.lmeval import run

    return run(cfg, answerer, ctx.tokenizer)


# tasks that need more than an answerer (tokenizer for chat templates, the sandbox, a judge)
CONTEXT_TASKS: dict[str, Callable[[Any, Answerer, TaskContext], TaskResult]] = {
    "humaneval": _run_humaneval,
    "mtbench": _run_mtbench,
    "lm_eval": _run_lm_eval,  # the tokenizer, for chat_template
    "generate_only": _run_custom_generate,  # the tokenizer, for llmc's apply_chat_template
}


def run_task(cfg: "TaskCfg", answerer: Answerer, ctx: TaskContext | None = None) -> TaskResult:
    """Evaluate one task config (MultipleChoiceTask, GenerateTask, HumanEvalTask, ...) with `answerer`."""
    if cfg.type in CONTEXT_TASKS:
        return CONTEXT_TASKS[cfg.type](cfg, answerer, ctx or TaskContext())
    runners = _runners()
    if cfg.type not in runners:
        raise AccbenchError(f"task '{cfg.name}': type '{cfg.type}' is not implemented in this version",
                            f"use one of: {', '.join(sorted(runners) + sorted(CONTEXT_TASKS))}")
    return runners[cfg.type](cfg, answerer)
