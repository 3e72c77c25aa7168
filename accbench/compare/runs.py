"""Finished runs against each other (`accbench compare`): the same position in each run, paired on the same
samples, or a refusal that names every mismatch."""

from __future__ import annotations

from typing import Sequence

from accbench.compare.gates import evaluate_gates, gates_from_config, summarize
from accbench.compare.metrics import compare_fidelity_across_runs
from accbench.compare.pairs import compare_pair, model_names
from accbench.config import CompareCfg
from accbench.errors import AccbenchError
from accbench.results import CompareBlock, Comparison, Results

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
                 positions: Sequence[str] | None = None) -> tuple[Results, CompareBlock]:
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
