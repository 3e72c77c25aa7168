"""One metric of a candidate against the baseline: direction-aware deltas and the paired statistics.

Perplexity: relative change, paired bootstrap over the evaluation windows. Accuracy-type metrics (per-sample
0/1, filtered lm-eval metrics included): difference with a seeded paired bootstrap CI, and the exact McNemar
test on the flips. Other per-sample scores (MT-bench, pass@k with n > 1): paired bootstrap. Without per-sample
values: an unpaired normal CI from the standard errors. Train loss: absolute difference. Fidelity (KL to the
reference) as it stands. `Comparison.test` names the test each row actually used.
"""

from __future__ import annotations

import math

import numpy as np

from accbench.results import Comparison, Direction, FidelityEntry, PplEntry, TaskEntry, TrainEntry
from accbench.stats import bootstrap_means, bootstrap_p_value, mcnemar_exact, normal_ci, percentile_ci

_LOWER_IS_BETTER = ("ppl", "perplexity", "loss", "kld", "bits_per_byte", "bpb", "nll")


def metric_direction(metric: str) -> Direction:
    """Lower is better for perplexities, losses and divergences; higher for accuracies and scores."""
    name = metric.lower().split("/")[-1].split(",")[0]
    return "lower" if any(name == k or name.endswith(k) or name.startswith(k) for k in _LOWER_IS_BETTER) else "higher"



def _with_deltas(c: Comparison) -> Comparison:
    if c.baseline_value is not None and c.candidate_value is not None:
        c.delta = c.candidate_value - c.baseline_value
        c.worsening = c.delta if c.direction == "lower" else -c.delta
        if c.baseline_value != 0:
            c.relative_delta = c.delta / abs(c.baseline_value)
            c.relative_worsening = c.worsening / abs(c.baseline_value)
    return c


def compare_ppl(base: PplEntry, cand: PplEntry, base_name: str, cand_name: str, position: str,
                resamples: int, confidence: float, seed: int) -> Comparison:
    """Relative change of perplexity; paired bootstrap over window losses when both saw the same windows.
    ppl = exp(mean window loss), so ppl_b / ppl_a = exp(mean(loss_b - loss_a)) and the CI maps through exp."""
    c = _with_deltas(Comparison("ppl", base_name, cand_name, "ppl", "lower", base.ppl, cand.ppl,
                                dataset=base.dataset, position=position, extra={"seq_len": base.seq_len}))
    la, lb = base.window_losses, cand.window_losses
    if la and lb and len(la) == len(lb):
        d = np.asarray(lb, dtype=np.float64) - np.asarray(la, dtype=np.float64)
        boot = bootstrap_means(d, resamples, seed)
        lo, hi = percentile_ci(boot, confidence)
        c.ci_low, c.ci_high = math.expm1(lo), math.expm1(hi)
        c.p_value, c.test, c.n, c.confidence = bootstrap_p_value(boot), "paired_bootstrap", d.size, confidence
    else:
        c.note = "no paired CI: window losses missing or different window counts"
    return c


def compare_task_metric(base: TaskEntry, cand: TaskEntry, metric: str, base_name: str, cand_name: str,
                        position: str, resamples: int, confidence: float, seed: int) -> Comparison:
    """Difference of one task metric. Per-sample values present on both sides give a paired bootstrap CI;
    when they are all 0/1 also the exact McNemar test and the flip counts. Without per-sample values the
    aggregate standard errors give an (unpaired, wider) normal CI."""
    direction = "lower" if base.type == "perplexity" else metric_direction(metric)
    c = _with_deltas(Comparison("task", base_name, cand_name, metric, direction, base.metrics.get(metric),
                                cand.metrics.get(metric), task=base.task, position=position))
    sa, sb = base.per_sample.get(metric) or {}, cand.per_sample.get(metric) or {}
    common = [k for k in sa if k in sb]
    if common:
        a = np.array([sa[k] for k in common], dtype=np.float64)
        b = np.array([sb[k] for k in common], dtype=np.float64)
        d = b - a
        boot = bootstrap_means(d, resamples, seed)
        c.ci_low, c.ci_high = percentile_ci(boot, confidence)
        c.n, c.confidence = len(common), confidence
        binary = bool(np.all((a == 0) | (a == 1)) and np.all((b == 0) | (b == 1)))
        if binary:
            good = 1.0 if direction == "higher" else 0.0
            c.correct_to_wrong = int(np.sum((a == good) & (b != good)))
            c.wrong_to_correct = int(np.sum((a != good) & (b == good)))
            c.p_value, c.test = mcnemar_exact(c.correct_to_wrong, c.wrong_to_correct), "mcnemar_exact"
        else:
            c.p_value, c.test = bootstrap_p_value(boot), "paired_bootstrap"
        if len(common) != len(sa) or len(common) != len(sb):
            c.note = f"paired on {len(common)} common samples (baseline {len(sa)}, candidate {len(sb)})"
    elif c.delta is not None:
        se_a, se_b = base.stderr.get(metric), cand.stderr.get(metric)
        if se_a is not None and se_b is not None:
            c.ci_low, c.ci_high, c.p_value = normal_ci(c.delta, math.hypot(se_a, se_b), confidence)
            c.test, c.confidence = "normal_unpaired", confidence
            c.note = "no per-sample values: unpaired CI from the standard errors"
        else:
            c.note = "no per-sample values or standard errors: no CI"
    return c


def compare_train(base: TrainEntry, cand: TrainEntry) -> Comparison:
    """Train loss as an absolute difference, plus the speed-up of steps per second."""
    c = _with_deltas(Comparison("train", base.variant, cand.variant, "train_loss", "lower", base.train_loss,
                                cand.train_loss, position=cand.variant))
    if base.train_steps_per_second and cand.train_steps_per_second:
        c.extra["speedup"] = cand.train_steps_per_second / base.train_steps_per_second
    return c


def compare_fidelity(entry: FidelityEntry, baseline: str, confidence: float) -> Comparison:
    """KL divergence of the candidate's next-token distribution from the reference model's (0 = identical)."""
    c = Comparison("fidelity", baseline, entry.position, "kld_mean", "lower", 0.0, entry.kld_mean,
                   dataset=entry.dataset, position=entry.position, n=entry.tokens,
                   extra={"top1_agreement": entry.top1_agreement, "ppl_ratio": entry.ppl_ratio,
                          "kld_p99": entry.kld_p99})
    _with_deltas(c)
    c.relative_delta = c.relative_worsening = None
    if entry.kld_stderr:
        c.ci_low, c.ci_high, _ = normal_ci(entry.kld_mean, entry.kld_stderr, confidence)
        c.confidence = confidence
    return c


def compare_fidelity_across_runs(base: FidelityEntry, cand: FidelityEntry, base_name: str, cand_name: str,
                                 position: str, confidence: float) -> Comparison:
    """KL divergence of the same position in two runs (e.g. two quantization configs). Only aggregates are
    stored, so the CI is the unpaired normal one from both standard errors (conservative)."""
    c = _with_deltas(Comparison("fidelity", base_name, cand_name, "kld_mean", "lower", base.kld_mean, cand.kld_mean,
                                dataset=cand.dataset, position=position, n=cand.tokens,
                                extra={"top1_agreement": cand.top1_agreement, "ppl_ratio": cand.ppl_ratio,
                                       "kld_p99": cand.kld_p99}))
    if base.kld_stderr and cand.kld_stderr:
        c.ci_low, c.ci_high, c.p_value = normal_ci(c.delta, math.hypot(base.kld_stderr, cand.kld_stderr), confidence)
        c.test, c.confidence = "normal_unpaired", confidence
    return c


# metrics a candidate has of itself against the baseline (MT-bench pairwise judging); gates check them with `min`
VERSUS_BASELINE = ("win_rate_adjusted", "win_rate", "loss_rate")


def versus_baseline(cand: TaskEntry, base_name: str, cand_name: str, position: str) -> list[Comparison]:
    """The candidate's head-to-head metrics against the baseline, as comparisons of kind "versus"."""
    out = []
    pair = (cand.model_extra or {}).get("pairwise") or {}
    if pair.get("baseline") != base_name:  # judged against another model (e.g. the other run's own baseline)
        return []
    for metric in VERSUS_BASELINE:
        value = cand.metrics.get(metric)
        if value is None:
            continue
        ci = pair.get("ci") if metric == "win_rate_adjusted" else None
        out.append(Comparison("versus", base_name, cand_name, metric, "lower" if metric == "loss_rate" else "higher",
                              None, value, ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None,
                              confidence=pair.get("confidence") if ci else None, n=int(pair.get("n") or 0),
                              task=cand.task, position=position, note="candidate judged against the baseline"))
    return out
