"""Cross-checks of the compare section: compare.baseline and every gate must name a model, task, dataset and
metric the run produces, so a typo is a config error now, not a 'gate FAILED' (exit 3) after the whole run."""

from __future__ import annotations

from typing import Any, Sequence

from accbench.config_sections import CompareCfg, EvalCfg, suggest
from accbench.config_tasks import GenerateTask, HumanEvalTask, LmEvalTask, MultipleChoiceTask, PerplexityTask


def compare_problems(compare: CompareCfg, task_cfgs: Sequence[Any], evals: Sequence[EvalCfg],
                     models: list[str]) -> list[str]:
    """Every problem with compare.baseline and compare.gates, as messages (empty when all is well)."""
    out = []
    b = compare.baseline
    if b is not None and b not in models:
        out.append(f"compare.baseline '{b}' is not a model of this run{suggest(b, models)}; "
                   f"this run has: {', '.join(models)}")
    tasks = {t.name: t for t in task_cfgs}
    datasets = sorted({e.name for e in evals})
    for i, g in enumerate(compare.gates):
        where = f"compare.gates.{i}"
        if g.task is not None and g.task not in tasks:
            out.append(f"{where}.task '{g.task}' is not a task of this run{suggest(g.task, tasks)}; "
                       f"tasks: {', '.join(tasks) or 'none'}")
        if g.dataset is not None and g.dataset not in datasets:
            out.append(f"{where}.dataset '{g.dataset}' is not an eval dataset of this run"
                       f"{suggest(g.dataset, datasets)}; eval datasets: {', '.join(datasets) or 'none'}")
        if g.position is not None and g.position not in models:
            out.append(f"{where}.position '{g.position}' is not a model of this run{suggest(g.position, models)};"
                       f" this run has: {', '.join(models)}")
        if g.max_kld is not None or g.train_loss_diff is not None:
            continue  # these select fidelity / training comparisons; their metric is not a task's
        known = gate_metrics([tasks[g.task]] if g.task in tasks else list(tasks.values()), g.task is None)
        if g.metric is not None and known is not None and g.metric not in known and not (
                g.metric.startswith("category/") and "score" in known):
            out.append(f"{where}.metric '{g.metric}' is not a metric {'of task ' + repr(g.task) if g.task else 'of this run'}"
                       f"{suggest(g.metric, known)}; metrics: {', '.join(sorted(known))}")
    return out


def gate_metrics(tasks: list[Any], with_ppl: bool) -> set[str] | None:
    """Metric names these tasks report (None: an lm-eval task, whose metrics are known only once it ran)."""
    out = {"ppl", "perplexity"} if with_ppl else set()
    for t in tasks:
        if isinstance(t, LmEvalTask):
            return None
        out |= ({"acc", "acc_norm"} if isinstance(t, MultipleChoiceTask) else {t.metric} if isinstance(t, GenerateTask)
                else {"ppl", "loss"} if isinstance(t, PerplexityTask) else {f"pass@{k}" for k in t.k}
                if isinstance(t, HumanEvalTask) else {"score", "turn1", "turn2", "win_rate_adjusted", "win_rate",
                                                      "loss_rate"})
    return out
