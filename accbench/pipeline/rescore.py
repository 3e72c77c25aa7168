"""`accbench rescore`: recompute every task's metrics from the responses in a run's per-sample store,
without a model (a metric fixed or changed after the run)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from accbench.config import TaskCfg, load_config
from accbench.errors import AccbenchError
from accbench.results import Results, TaskEntry

if TYPE_CHECKING:
    from rich.console import Console


def rescore_run(run_dir: Path, console: "Console") -> Results:
    """Recompute every task's metrics from the responses in the run's per-sample store, without a model."""
    from accbench.evaluate.tasks import TaskContext, run_task
    from accbench.pipeline.spine import pairwise_baseline
    from accbench.store import STORE_FILE, SampleStore, StoredAnswerer

    run_dir = Path(run_dir)
    for need in ("config.yaml", "results.json", STORE_FILE):
        if not (run_dir / need).is_file():
            raise AccbenchError(f"rescore: {run_dir / need} not found", "pass the directory of an accbench run")
    cfg = load_config(run_dir / "config.yaml")
    results = Results.load(run_dir)
    store = SampleStore(run_dir)
    models = store.models()
    for i, entry in enumerate(results.tasks):
        task = next((t for t in cfg.tasks if t.name == entry.task), None)
        if task is None or entry.model not in models:
            continue
        task_ctx = TaskContext(_rescore_tokenizer(results, task), run_dir, entry.model,
                               baseline=pairwise_baseline(cfg, entry.model))
        res = run_task(task, StoredAnswerer(store, models[entry.model], task.name, None), task_ctx)
        keep = {k: v for k, v in entry.model_dump().items()
                if k not in ("metrics", "stderr", "n", "per_sample", "type", "model", "task")}
        keep.update({k: v for k, v in res.extra.items()})
        keep["samples"] = res.extra.get("samples", res.samples)
        results.tasks[i] = TaskEntry(model=entry.model, task=entry.task, type=res.type, metrics=res.metrics,
                                     n=res.n, stderr=res.stderr, per_sample=res.per_sample, **keep)
        shown = "  ".join(f"{k} = {v:.4f}" for k, v in res.metrics.items() if isinstance(v, (int, float)))
        console.print(f"[bold]{entry.model}[/] {entry.task}: {shown}  (n={res.n}, rescored)")
    store.close()
    results.save(run_dir)
    return results


def _rescore_tokenizer(results: Results, task: TaskCfg) -> Any:
    """Chat-templated tasks need the tokenizer (never the model) to rebuild their prompts."""
    if task.type != "mtbench" and not task.chat_template:
        return None
    from accbench.models import load_tokenizer

    return load_tokenizer(results.models.get("pretrain", ""))
