"""Which models a run compares (baseline, candidates) and the whole comparison of one run with its gates."""

from __future__ import annotations

from accbench.compare.gates import evaluate_gates, gates_from_config, summarize
from accbench.compare.metrics import (compare_fidelity, compare_ppl, compare_task_metric, compare_train,
                                      versus_baseline)
from accbench.config import CompareCfg
from accbench.errors import AccbenchError
from accbench.results import CompareBlock, Comparison, GateCheck, Results

def is_training_run(results: Results) -> bool:
    return bool(results.train)


def default_baseline(results: Results) -> str:
    """`pretrain` for compression runs; for training runs the variant marked `baseline`, else the first."""
    if not is_training_run(results):
        return "pretrain"
    return next((t.variant for t in results.train if t.baseline), results.train[0].variant)


def model_names(results: Results) -> list[str]:
    """Every model that has any result, in first-seen order."""
    names: list[str] = []
    for n in ([p.position for p in results.ppl] + [t.model for t in results.tasks]
              + [t.variant for t in results.train] + [f.position for f in results.fidelity]):
        if n not in names:
            names.append(n)
    return names


def candidates_for(results: Results, baseline: str) -> list[str]:
    """Models compared with the baseline: the other variants of a training run (the untrained original is
    reported, not gated); every other position of a compression run."""
    if is_training_run(results):
        return [t.variant for t in results.train if t.variant != baseline]
    return [n for n in model_names(results) if n != baseline]


def compare_pair(results: Results, base: str, cand: str, position: str, resamples: int, confidence: float,
                 seed: int) -> list[Comparison]:
    """All comparisons of model `cand` against model `base` within one Results."""
    out: list[Comparison] = []
    for pb in results.ppl:
        if pb.position != base:
            continue
        for pc in results.ppl:
            if pc.position == cand and pc.dataset == pb.dataset and pc.seq_len == pb.seq_len:
                out.append(compare_ppl(pb, pc, base, cand, position, resamples, confidence, seed))
    by_task = {t.task: t for t in results.tasks if t.model == cand}
    for tb in results.tasks:
        tc = by_task.get(tb.task) if tb.model == base else None
        if tc is None:
            continue
        for metric, value in tb.metrics.items():
            if value is not None and tc.metrics.get(metric) is not None:
                out.append(compare_task_metric(tb, tc, metric, base, cand, position, resamples, confidence, seed))
        out.extend(versus_baseline(tc, base, cand, position))
    trains = {t.variant: t for t in results.train}
    if base in trains and cand in trains:
        out.append(compare_train(trains[base], trains[cand]))
    return out


def compare_results(results: Results, baseline: str, resamples: int = 10_000, confidence: float = 0.95,
                    seed: int = 0) -> list[Comparison]:
    """Every candidate in a run against the baseline, plus the run's fidelity entries."""
    names = model_names(results)
    if not names:
        return []  # nothing was evaluated; gates, if any, fail as matching nothing
    if baseline not in names:
        raise AccbenchError(f"compare.baseline '{baseline}' has no results in this run; models with results: "
                            f"{', '.join(names) or 'none'}", "set compare.baseline to one of those names")
    out: list[Comparison] = []
    for cand in candidates_for(results, baseline):
        out.extend(compare_pair(results, baseline, cand, cand, resamples, confidence, seed))
    out.extend(compare_fidelity(f, getattr(f, "baseline", None) or "pretrain", confidence) for f in results.fidelity)
    return out


def run_comparison(results: Results, cfg: CompareCfg) -> CompareBlock:
    """Compare a run's candidates with its baseline and check the gates of a `compare` section."""
    from accbench.train.data_check import data_mismatches

    baseline = cfg.baseline or default_baseline(results)
    names = model_names(results)
    if names and baseline not in names and cfg.baseline is None:
        block = summarize(baseline, [], evaluate_gates(gates_from_config(cfg), []))
        block.note = (f"no baseline position was evaluated ('{baseline}' has no results), so nothing is compared; "
                      f"add {baseline} to eval.eval_pos to compare {', '.join(names)} with it")
        return block
    comparisons = compare_results(results, baseline, cfg.bootstrap_resamples, cfg.confidence, cfg.seed)
    refused = [] if cfg.allow_different_train_data else data_mismatches(results.train)
    comparisons = [c for c in comparisons if c.candidate not in {m.variant for m in refused}]
    gates = gates_from_config(cfg)
    checks = evaluate_gates(gates, comparisons)
    checks += [GateCheck(len(gates), "same training data as the baseline", f"{m.variant} {m.what}", m.what,
                         float(m.variant_value), float(m.baseline_value), False, reason=m.message()) for m in refused]
    return summarize(baseline, comparisons, checks)
