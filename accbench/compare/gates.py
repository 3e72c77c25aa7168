"""Gates from the `compare` section, checked one by one against the comparisons; every gate is evaluated, and
a gate that matches nothing fails. docs/report.md explains the gates."""

from __future__ import annotations

import math
from typing import Sequence

from accbench.config import CompareCfg, GateCfg
from accbench.errors import EXIT_GATE_FAILED, EXIT_OK
from accbench.results import CompareBlock, Comparison, GateCheck

def gates_from_config(cfg: CompareCfg) -> list[GateCfg]:
    """The configured gates, with the training seed's shorthands expanded into ordinary gates."""
    gates = list(cfg.gates)
    if cfg.max_train_loss_diff is not None:
        gates.append(GateCfg(train_loss_diff=cfg.max_train_loss_diff))
    if cfg.max_score_drop is not None:
        gates.append(GateCfg(max_drop=cfg.max_score_drop))
    return gates


def describe_gate(g: GateCfg) -> str:
    sel = {k: v for k, v in g.model_dump(exclude_none=True).items()}
    return ", ".join(f"{k}={v}" for k, v in sel.items())


def _selected(g: GateCfg, comparisons: Sequence[Comparison]) -> list[Comparison]:
    def pos_ok(c: Comparison) -> bool:
        return g.position is None or g.position in (c.position, c.candidate)

    if g.train_loss_diff is not None:
        return [c for c in comparisons if c.kind == "train" and pos_ok(c)]
    if g.max_kld is not None:
        return [c for c in comparisons if c.kind == "fidelity" and pos_ok(c)
                and (g.dataset is None or g.dataset == c.dataset)]
    if g.min is not None:  # a floor on the candidate's own value: head-to-head metrics first of all
        return [c for c in comparisons if c.kind in ("versus", "task") and pos_ok(c) and c.metric == g.metric
                and (g.task is None or g.task == c.task)]
    metric = g.metric.lower() if g.metric else None
    if (metric in ("ppl", "perplexity") and g.task is None) or (metric is None and g.task is None and g.dataset):
        return [c for c in comparisons if c.kind == "ppl" and pos_ok(c)
                and (g.dataset is None or g.dataset == c.dataset)]
    picked = [c for c in comparisons if c.kind == "task" and pos_ok(c) and (g.task is None or g.task == c.task)]
    if g.metric is not None:
        return [c for c in picked if c.metric == g.metric]
    # no metric named: the task's headline metrics, not per-category breakdowns
    return [c for c in picked if "/" not in c.metric]


def gate_target(c: Comparison) -> str:
    """How a gate check names the comparison it checked (GateCheck.target)."""
    where = c.dataset if c.kind in ("ppl", "fidelity") else (c.task or "")
    return " ".join(x for x in (c.candidate, where, c.metric) if x)


def _check(i: int, g: GateCfg, c: Comparison) -> GateCheck:
    rule = describe_gate(g)
    if g.train_loss_diff is not None:
        obs = abs(c.delta) if c.delta is not None else None
        bound, limit = "train_loss_diff", g.train_loss_diff
    elif g.max_kld is not None:
        obs, bound, limit = c.candidate_value, "max_kld", g.max_kld
    elif g.min is not None:
        chk = GateCheck(i, rule, gate_target(c), "min", c.candidate_value, float(g.min), True)
        if c.candidate_value is None:
            chk.held, chk.reason = False, "no value to check"
        else:
            chk.held = c.candidate_value >= g.min
            chk.reason = "at least the minimum" if chk.held else "below the minimum"
        return chk
    elif g.max_relative_increase is not None:
        obs, bound, limit = c.relative_worsening, "max_relative_increase", g.max_relative_increase
    else:
        obs, bound, limit = c.worsening, "max_drop", g.max_drop
    chk = GateCheck(i, rule, gate_target(c), bound, obs, float(limit), True, c.p_value, g.significance)
    if obs is None or (isinstance(obs, float) and math.isnan(obs)):
        chk.held, chk.reason = False, "no value to check (missing on one side)"
        return chk
    if obs <= limit:
        chk.reason = "within limit"
        return chk
    if g.significance is not None and bound in ("max_drop", "max_relative_increase"):
        if c.p_value is None:
            chk.held, chk.reason = False, "over limit; no per-sample data to test significance, so counted as significant"
        elif c.p_value >= g.significance:
            chk.reason = f"over limit but not significant (p={c.p_value:.3g} >= {g.significance})"
        else:
            chk.held, chk.reason = False, f"over limit and significant (p={c.p_value:.3g} < {g.significance})"
        return chk
    chk.held, chk.reason = False, "over limit"
    return chk


def _available(comparisons: Sequence[Comparison]) -> str:
    if not comparisons:
        return "There is nothing to compare (no candidate model has results next to the baseline)."
    def names(kind: str, key: str) -> str:
        return ", ".join(sorted({str(getattr(c, key)) for c in comparisons if c.kind == kind})) or "none"
    tasks = sorted({f"{c.task}:{c.metric}" for c in comparisons if c.kind == "task" and "/" not in c.metric})
    return (f"Compared: positions {', '.join(sorted({c.position for c in comparisons}))}; ppl datasets "
            f"{names('ppl', 'dataset')}; task:metric {', '.join(tasks) or 'none'}; fidelity datasets "
            f"{names('fidelity', 'dataset')}; train variants {names('train', 'candidate')}.")


def evaluate_gates(gates: Sequence[GateCfg], comparisons: Sequence[Comparison]) -> list[GateCheck]:
    """Check every gate on every comparison it selects; a gate that selects nothing is a failed check."""
    checks: list[GateCheck] = []
    for i, g in enumerate(gates):
        hits = _selected(g, comparisons)
        if not hits:
            bound = next(b for b in ("max_relative_increase", "max_drop", "train_loss_diff", "max_kld", "min")
                         if getattr(g, b) is not None)
            checks.append(GateCheck(i, describe_gate(g), "(nothing)", bound, None, float(getattr(g, bound)), False,
                                    reason="gate matches no comparison; check its task/metric/dataset/position "
                                           f"names. {_available(comparisons)}"))
            continue
        checks.extend(_check(i, g, c) for c in hits)
    return checks


def summarize(baseline: str, comparisons: Sequence[Comparison], checks: Sequence[GateCheck]) -> CompareBlock:
    """The `compare` block of results.json."""
    all_held = all(c.held for c in checks)
    return CompareBlock(baseline=baseline, comparisons=list(comparisons), gates=list(checks), all_held=all_held,
                        exit_code=EXIT_OK if all_held else EXIT_GATE_FAILED)
