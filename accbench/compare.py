"""Did the change hurt accuracy, and can we trust the answer? Direction-aware paired comparisons and gates.

Every candidate model (a quantization position or a training variant) is compared with a baseline model on
the same data: perplexity as a relative change (paired over the evaluation windows), accuracy-type metrics
(per-sample 0/1) as a difference with a seeded paired bootstrap CI and an exact McNemar test on the flips,
other scores (MT-bench, pass@k with n > 1) as a paired difference with a bootstrap CI, train loss as an
absolute difference, fidelity (KL divergence to the reference) as it stands. Gates from the `compare`
section are then checked one by one; every gate is evaluated, and a gate that matches nothing fails.
docs/report.md explains the statistics and the gates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from accbench.config import CompareCfg, GateCfg
from accbench.errors import EXIT_GATE_FAILED, EXIT_OK, AccbenchError
from accbench.results import FidelityEntry, PplEntry, Results, TaskEntry, TrainEntry
from accbench.stats import bootstrap_means, bootstrap_p_value, mcnemar_exact, normal_ci, percentile_ci

Direction = Literal["lower", "higher"]
_LOWER_IS_BETTER = ("ppl", "perplexity", "loss", "kld", "bits_per_byte", "bpb", "nll")


# ----------------------------------------------------------------------------- directions


def metric_direction(metric: str) -> Direction:
    """Lower is better for perplexities, losses and divergences; higher for accuracies and scores."""
    name = metric.lower().split("/")[-1].split(",")[0]
    return "lower" if any(name == k or name.endswith(k) or name.startswith(k) for k in _LOWER_IS_BETTER) else "higher"


# ----------------------------------------------------------------------------- comparisons


@dataclass
class Comparison:
    """One metric of one candidate model against the baseline model. `delta` = candidate - baseline;
    `worsening` is the same change signed so that positive means worse (direction-aware)."""

    kind: str  # ppl | task | train | fidelity
    baseline: str
    candidate: str
    metric: str
    direction: Direction
    baseline_value: float | None
    candidate_value: float | None
    delta: float | None = None
    relative_delta: float | None = None
    worsening: float | None = None
    relative_worsening: float | None = None
    ci_low: float | None = None  # CI of `delta` (of `relative_delta` for perplexity)
    ci_high: float | None = None
    confidence: float | None = None
    p_value: float | None = None
    test: str = ""  # mcnemar_exact | paired_bootstrap | normal_unpaired | ""
    n: int = 0  # paired samples / windows behind the CI
    correct_to_wrong: int | None = None
    wrong_to_correct: int | None = None
    dataset: str | None = None
    task: str | None = None
    position: str = ""  # candidate's position/variant name, what gates select on
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


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


def is_training_run(results: Results) -> bool:
    return bool(results.train)


def default_baseline(results: Results) -> str:
    """`pretrain` for compression runs; for training runs the variant marked `baseline`, else the first."""
    if not is_training_run(results):
        return "pretrain"
    return next((t.variant for t in results.train if getattr(t, "baseline", False)), results.train[0].variant)


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


# ----------------------------------------------------------------------------- gates


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


@dataclass
class GateCheck:
    """One gate checked against one comparison (or against nothing, which fails)."""

    gate: int  # index in the expanded gate list
    rule: str  # the gate as written
    target: str  # what it was checked on, e.g. "fake_quant ppl wikitext2"
    bound: str  # max_relative_increase | max_drop | train_loss_diff | max_kld
    observed: float | None
    limit: float
    held: bool
    p_value: float | None = None
    significance: float | None = None
    reason: str = ""


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


def _target(c: Comparison) -> str:
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
        chk = GateCheck(i, rule, _target(c), "min", c.candidate_value, float(g.min), True)
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
    chk = GateCheck(i, rule, _target(c), bound, obs, float(limit), True, c.p_value, g.significance)
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


def summarize(baseline: str, comparisons: Sequence[Comparison], checks: Sequence[GateCheck]) -> dict[str, Any]:
    """The `compare` block of results.json."""
    all_held = all(c.held for c in checks)
    return {"baseline": baseline,
            "comparisons": [asdict(c) for c in comparisons],
            "gates": [asdict(c) for c in checks],
            "all_held": all_held,
            "exit_code": EXIT_OK if all_held else EXIT_GATE_FAILED}


def run_comparison(results: Results, cfg: CompareCfg) -> dict[str, Any]:
    """Compare a run's candidates with its baseline and check the gates of a `compare` section."""
    from accbench.train.data_check import data_mismatches

    baseline = cfg.baseline or default_baseline(results)
    names = model_names(results)
    if names and baseline not in names and cfg.baseline is None:
        block = summarize(baseline, [], evaluate_gates(gates_from_config(cfg), []))
        block["note"] = (f"no baseline position was evaluated ('{baseline}' has no results), so nothing is compared; "
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


# ----------------------------------------------------------------------------- finished runs against each other


def _sample_mismatches(a: Results, b: Results, label_a: str, label_b: str, models: Sequence[str]) -> list[str]:
    problems = []
    for m in models:
        ta = {t.task: t for t in a.tasks if t.model == m}
        tb = {t.task: t for t in b.tasks if t.model == m}
        if set(ta) != set(tb):
            problems.append(f"{m}: tasks differ: only in {label_a}: {sorted(set(ta) - set(tb))}, "
                            f"only in {label_b}: {sorted(set(tb) - set(ta))}")
        for name in sorted(set(ta) & set(tb)):
            x, y = ta[name], tb[name]
            for metric in sorted(set(x.per_sample) | set(y.per_sample)):
                ia, ib = set(x.per_sample.get(metric, {})), set(y.per_sample.get(metric, {}))
                if ia != ib:
                    only_a, only_b = sorted(ia - ib), sorted(ib - ia)
                    problems.append(f"{m} task '{name}' metric '{metric}': samples differ "
                                    f"({len(only_a)} only in {label_a}, e.g. {only_a[:3]}; "
                                    f"{len(only_b)} only in {label_b}, e.g. {only_b[:3]})")
            if not x.per_sample and not y.per_sample and x.n != y.n:
                problems.append(f"{m} task '{name}': n differs ({x.n} in {label_a}, {y.n} in {label_b})")
        pa = {(p.dataset, p.seq_len): p.windows for p in a.ppl if p.position == m}
        pb = {(p.dataset, p.seq_len): p.windows for p in b.ppl if p.position == m}
        for key in sorted(set(pa) & set(pb)):
            if pa[key] != pb[key]:
                problems.append(f"{m} ppl {key[0]} (seq_len {key[1]}): {pa[key]} windows in {label_a}, "
                                f"{pb[key]} in {label_b}")
        fa = {f.dataset: f.tokens for f in a.fidelity if f.position == m}
        fb = {f.dataset: f.tokens for f in b.fidelity if f.position == m}
        for ds in sorted(set(fa) & set(fb)):
            if fa[ds] != fb[ds]:
                problems.append(f"{m} fidelity {ds}: {fa[ds]} tokens in {label_a}, {fb[ds]} in {label_b}")
    return problems


def _prefixed(results: Results, label: str) -> Results:
    r = results.model_copy(deep=True)
    for p in r.ppl:
        p.position = f"{label}/{p.position}"
    for t in r.tasks:
        t.model = f"{label}/{t.model}"
    for e in r.train:
        e.variant = f"{label}/{e.variant}"
    for f in r.fidelity:
        f.position = f"{label}/{f.position}"
    return r


def compare_runs(runs: Sequence[tuple[str, Results]], cfg: CompareCfg,
                 positions: Sequence[str] | None = None) -> tuple[Results, dict[str, Any]]:
    """The first run is the baseline; each other run is compared with it model by model (the same position
    or variant name in both). Runs must hold the same tasks and the same samples, or this refuses."""
    (label_a, a), others = runs[0], runs[1:]
    merged = Results(run_dir=", ".join(label for label, _ in runs), status="complete")
    pa = _prefixed(a, label_a)
    merged.ppl, merged.tasks, merged.train, merged.fidelity = pa.ppl, pa.tasks, pa.train, pa.fidelity
    comparisons: list[Comparison] = []
    for label_b, b in others:
        common = [m for m in model_names(a) if m in model_names(b)]
        if positions:
            missing = [p for p in positions if p not in common]
            if missing:
                raise AccbenchError(f"--position {missing}: not in both {label_a} and {label_b}; "
                                    f"common models: {common or 'none'}")
            common = list(positions)
        if not common:
            raise AccbenchError(f"runs {label_a} and {label_b} have no position or variant in common "
                                f"({model_names(a)} vs {model_names(b)})", "compare runs of the same kind")
        problems = _sample_mismatches(a, b, label_a, label_b, common)
        if problems:
            raise AccbenchError(f"runs {label_a} and {label_b} were not evaluated on the same tasks and samples, "
                                "so a paired comparison is not possible:\n" + "\n".join(f"  - {p}" for p in problems),
                                "evaluate both with the same tasks, limits and eval data")
        pb = _prefixed(b, label_b)
        merged.ppl += pb.ppl
        merged.tasks += pb.tasks
        merged.train += pb.train
        merged.fidelity += pb.fidelity
        for m in common:
            comparisons.extend(compare_pair(merged, f"{label_a}/{m}", f"{label_b}/{m}", m,
                                            cfg.bootstrap_resamples, cfg.confidence, cfg.seed))
            for fa in (f for f in a.fidelity if f.position == m):
                for fb in (f for f in b.fidelity if f.position == m and f.dataset == fa.dataset):
                    comparisons.append(compare_fidelity_across_runs(fa, fb, f"{label_a}/{m}", f"{label_b}/{m}", m,
                                                                    cfg.confidence))
    checks = evaluate_gates(gates_from_config(cfg), comparisons)
    merged.compare = summarize(label_a, comparisons, checks)
    return merged, merged.compare
