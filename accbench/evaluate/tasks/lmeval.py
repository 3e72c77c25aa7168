"""Any lm-eval task (by name, or a local task YAML via include_path), run in-process on our engine.

lm-eval builds the prompts and computes the metrics and their aggregation; accbench only answers the
requests. Metrics are reported under lm-eval's names (filter "none" dropped, others kept as
"metric,filter"); per_sample comes from lm-eval's logged samples, keyed by doc_id.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accbench.errors import AccbenchError
from accbench.evaluate.requests import Answerer, TaskResult

if TYPE_CHECKING:
    from accbench.config import LmEvalTask

BOOTSTRAP_ITERS = 1000  # only for metrics without a closed-form standard error


@functools.lru_cache(maxsize=8)  # built once per run: the check before loading and the run reuse it
def task_manager(include_path: str | None, name: str | None = None) -> Any:
    """lm-eval's task index; with include_path, only the local YAMLs when they define `name` (indexing
    lm-eval's thousands of built-in tasks takes tens of seconds)."""
    from accbench.integrations.lm_eval import import_lm_eval

    import_lm_eval()
    import logging

    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    if include_path:
        if not Path(include_path).expanduser().exists():
            raise AccbenchError(f"lm-eval include_path not found: {include_path}",
                                "point include_path at a folder of lm-eval task YAML files")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if name is None or name in local.all_tasks:
            return local
    return TaskManager(include_path=include_path)


def check_task_name(name: str, tm: Any) -> None:
    known = tm.all_tasks
    if name not in known:
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(near)}?" if near else "list them with: lm_eval ls tasks"
        raise AccbenchError(f"unknown lm-eval task '{name}'", hint + " (local task YAMLs: set include_path)")


def _metric_name(key: str) -> str:
    metric, _, flt = key.partition(",")
    return metric if flt in ("", "none") else key


def check(cfg: "LmEvalTask") -> Any:
    """lm-eval installed, include_path present, the task known; returns the task index."""
    name = cfg.task or cfg.name
    tm = task_manager(cfg.include_path, name)
    check_task_name(name, tm)
    return tm


def run(cfg: "LmEvalTask", answerer: Answerer) -> TaskResult:
    tm = check(cfg)
    from lm_eval.evaluator import simple_evaluate

    from accbench.integrations.lm_eval import make_lm

    name = cfg.task or cfg.name
    # num_fewshot left out of the config: the task's own default, as on lm-eval's command line
    shots = cfg.num_fewshot if "num_fewshot" in cfg.model_fields_set else None
    out = simple_evaluate(model=make_lm(answerer), tasks=[name], num_fewshot=shots, limit=cfg.limit,
                          task_manager=tm, log_samples=True, bootstrap_iters=BOOTSTRAP_ITERS,
                          random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
                          fewshot_random_seed=cfg.seed)
    res = out["results"][name]
    metrics: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    for key, val in res.items():
        if "," not in key or not isinstance(val, (int, float)):
            continue
        metric, _, flt = key.partition(",")
        if metric.endswith("_stderr"):
            stderr[_metric_name(metric.removesuffix("_stderr") + "," + flt)] = float(val)
        else:
            metrics[_metric_name(key)] = float(val)
    for m in metrics:
        stderr.setdefault(m, None)
    subtasks = list(out["samples"])
    per: dict[str, dict[str, float]] = {}
    for sub in subtasks:
        for s in out["samples"][sub]:
            sid = str(s["doc_id"]) if len(subtasks) == 1 else f"{sub}/{s['doc_id']}"
            for m in metrics:
                v = s.get(m.split(",")[0])
                if isinstance(v, (int, float)) and "," not in m:
                    per.setdefault(m, {})[sid] = float(v)
    n = sum(int(out["n-samples"][sub]["effective"]) for sub in subtasks if sub in out.get("n-samples", {}))
    return TaskResult(task=cfg.name, type="lm_eval", metrics=metrics, stderr=stderr, n=n, per_sample=per,
                      extra={"lm_eval_task": name, "lm_eval_versions": out.get("versions", {}),
                             "n_shot": out.get("n-shot", {})})
