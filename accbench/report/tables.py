"""The report's tables as plain data (title, header, rows of strings), shared by console, Markdown and HTML.

Everything here reads a `Results` whose `compare` block is filled (accbench/compare/); nothing is
recomputed, so every rendering shows the same numbers.
"""

from __future__ import annotations

from typing import Any

from accbench.compare.gates import gate_target
from accbench.report.accounting import accounting_tables  # MT-bench judgments, training data
from accbench.report.table import Table
from accbench.results import Comparison, Results


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    if abs(x) >= 1e4 or (x != 0 and abs(x) < 10 ** -digits):
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def fmt_signed(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:+.{digits}f}"


def fmt_pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x * 100:+.{digits}f}%"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    if p < 1e-15:
        return "<1e-15"  # below double precision of the tail sum
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


ALPHA = 0.05  # the level of the worded verdict; gates carry their own `significance`


def significance(c: Comparison) -> str:
    """The p value said in words, so every delta has a significance statement: which way the change went and
    whether the paired test tells it apart from noise at ALPHA."""
    if c.p_value is None or c.worsening is None:
        return "no test"
    if c.p_value >= ALPHA:
        return f"not significant (p ≥ {ALPHA:g})"
    if c.worsening == 0:
        return "no change"
    return f"significantly {'worse' if c.worsening > 0 else 'better'} (p < {ALPHA:g})"


def comparisons(results: Results, kind: str) -> list[Comparison]:
    return results.compare.of_kind(kind)


def _failed_targets(results: Results) -> set[str]:
    return {g.target for g in results.compare.gates if not g.held}


def _mark(c: Comparison | None, failed: set[str]) -> str:
    """Colour and bold are for what failed a gate, nothing else: a significant change within its limits is a
    number in the table, not an alarm."""
    return "bad" if c is not None and gate_target(c) in failed else ""


def ppl_table(results: Results) -> Table:
    base = results.compare.baseline
    t = Table("Perplexity", ["model", "dataset", "seq_len", "windows", "ppl", f"Δ vs {base}", "95% CI", "p",
                             "significance"])
    comp = {(c.candidate, c.dataset, c.extra.get("seq_len")): c for c in comparisons(results, "ppl")}
    failed = _failed_targets(results)
    for p in results.ppl:
        c = comp.get((p.position, p.dataset, p.seq_len))
        if c is None:
            t.add([p.position, p.dataset, p.seq_len, p.windows, fmt(p.ppl), "", "", "", ""])
            continue
        ci = f"[{fmt_pct(c.ci_low)}, {fmt_pct(c.ci_high)}]" if c.ci_low is not None else "–"
        t.add([p.position, p.dataset, p.seq_len, p.windows, fmt(p.ppl), fmt_pct(c.relative_delta), ci,
               fmt_p(c.p_value), significance(c)], _mark(c, failed))
    return t


def fidelity_table(results: Results) -> Table:
    # across runs (accbench compare) a position's KL is also compared with the baseline run's
    across = {(c.candidate, c.dataset): c for c in comparisons(results, "fidelity") if c.test}
    header = ["position", "dataset", "KL mean", "± stderr", "KL p99", "top-1 agreement", "ppl ratio", "tokens"]
    t = Table("Fidelity to the original model", header + (["Δ KL vs baseline run", "95% CI", "p"] if across else []))
    for f in results.fidelity:
        row = [f.position, f.dataset, fmt(f.kld_mean, 5), fmt(f.kld_stderr, 5), fmt(f.kld_p99, 4),
               f"{f.top1_agreement * 100:.2f}%", fmt(f.ppl_ratio), f.tokens]
        c = across.get((f.position, f.dataset))
        if across:
            row += ["", "", ""] if c is None else [fmt_signed(c.delta, 5),
                                                   f"[{fmt_signed(c.ci_low, 5)}, {fmt_signed(c.ci_high, 5)}]",
                                                   fmt_p(c.p_value)]
        own = next((x for x in comparisons(results, "fidelity") if (x.candidate, x.dataset) == (f.position, f.dataset)),
                   None)
        t.add(row, _mark(c or own, _failed_targets(results)))
    return t


def task_scores_table(results: Results) -> Table:
    """Every model's value of every headline task metric, side by side."""
    models = []
    for e in results.tasks:
        if e.model not in models:
            models.append(e.model)
    t = Table("Task scores", ["task", "metric", "n"] + models)
    keys: list[tuple[str, str]] = []
    for e in results.tasks:
        for m in e.metrics:
            if "/" not in m and (e.task, m) not in keys:
                keys.append((e.task, m))
    for task, metric in keys:
        vals, n = [], ""
        for model in models:
            e = next((x for x in results.tasks if x.model == model and x.task == task), None)
            v = e.metrics.get(metric) if e else None
            se = e.stderr.get(metric) if e else None
            n = n or (str(e.n) if e else "")
            vals.append(fmt(v) + (f" ± {fmt(se)}" if se is not None else ""))
        t.add([task, metric, n] + vals)
    return t


def task_delta_table(results: Results) -> Table:
    base = results.compare.baseline
    t = Table(f"Task deltas vs {base}", ["model", "task", "metric", "baseline", "candidate", "Δ", "95% CI",
                                         "c→w", "w→c", "p", "test", "significance", "n"])
    failed = _failed_targets(results)
    rows = [c for c in comparisons(results, "task") if "/" not in c.metric]  # categories: charted in the HTML
    for c in rows:
        ci = f"[{fmt_signed(c.ci_low)}, {fmt_signed(c.ci_high)}]" if c.ci_low is not None else "–"
        flips = c.correct_to_wrong is not None
        t.add([c.candidate, c.task, c.metric, fmt(c.baseline_value), fmt(c.candidate_value),
               fmt_signed(c.delta), ci, c.correct_to_wrong if flips else "–",
               c.wrong_to_correct if flips else "–", fmt_p(c.p_value), c.test or "–", significance(c), c.n or "–"],
              _mark(c, failed))
    used = [k for k in TEST_NOTES if any(c.test == k for c in rows)]
    untested = sum(1 for c in rows if not c.test)
    t.note = ("Δ = candidate − baseline. c→w / w→c: samples correct for the baseline and wrong for the candidate / "
              "the reverse. Tests used (column 'test'): " + "; ".join(f"{k}: {TEST_NOTES[k]}" for k in used)
              + (f"; {untested} row(s) without per-sample values or standard errors: no CI, no test" if untested
                 else "") + ".")
    return t


TEST_NOTES = {
    "mcnemar_exact": "CI by paired bootstrap over the samples both models answered, p by the exact McNemar test on "
                     "the flips (0/1 metrics)",
    "paired_bootstrap": "CI and p by paired bootstrap over the samples both models answered",
    "normal_unpaired": "no per-sample values: CI and p from the two standard errors (unpaired normal, wider)",
}


def recovery_table(results: Results) -> Table | None:
    """Candidate ÷ baseline for every headline metric, in percent, as quantization model cards report accuracy
    (llm-compressor, vLLM): 100% = fully recovered. Perplexity and other lower-is-better metrics are inverted
    (baseline ÷ candidate), so above 100% is better in every row."""
    t = Table("Recovery (candidate ÷ baseline)", ["model", "what", "metric", "baseline", "candidate", "recovery"],
              note="recovery = candidate ÷ baseline × 100%; for perplexity and other lower-is-better metrics "
                   "baseline ÷ candidate, so 100% means unchanged and below 100% worse in every row.")
    failed = _failed_targets(results)
    for c in comparisons(results, "ppl") + comparisons(results, "task"):
        if "/" in c.metric or not c.baseline_value or not c.candidate_value:
            continue
        ratio = (c.baseline_value / c.candidate_value if c.direction == "lower"
                 else c.candidate_value / c.baseline_value)
        what = c.dataset if c.kind == "ppl" else c.task
        t.add([c.candidate, what, c.metric, fmt(c.baseline_value), fmt(c.candidate_value), f"{ratio * 100:.2f}%"],
              _mark(c, failed))
    return t if t.rows else None


def provenance_table(results: Results) -> Table | None:
    """What was compared and how: model and revision, method and its options, calibration data, seeds, versions,
    config hash, command line and machine."""
    p = results.provenance
    rows: list[tuple[str, Any]] = [
        ("model", p.model + (f" @ {p.revision}" if p.revision else "") + (f" + adapter {p.peft}" if p.peft else "")),
        ("models evaluated", ", ".join(f"{k}: {v}" for k, v in results.models.items())),
        ("method", p.method or "none (evaluation only)"),
        ("method options", _kv(p.method_options)),
        ("calibration data", _kv(p.calibration)),
        ("seeds", _kv(p.seeds)),
        ("versions", _kv(results.versions)),
        ("config sha256", p.config_sha256),
        ("command line", " ".join(p.command)),
        ("machine", _kv(p.machine)),
        ("started", p.started),
    ]
    t = Table("Provenance", ["what", "value"], text=True)
    for k, v in rows:
        if v:
            t.add([k, v])
    return t if (p.model or results.versions) else None


def _kv(d: dict[str, Any]) -> str:
    def flat(v: Any) -> str:
        return "{" + _kv(v) + "}" if isinstance(v, dict) else str(v)

    return ", ".join(f"{k}={flat(v)}" for k, v in d.items() if v not in (None, {}, [], ""))


def train_table(results: Results) -> Table:
    base = results.compare.baseline
    comp = {c.candidate: c for c in comparisons(results, "train")}
    t = Table("Training", ["variant", "train loss", f"Δ loss vs {base}", "runtime (s)", "steps/s", "speed-up"])
    for e in results.train:
        c = comp.get(e.variant)
        t.add([e.variant, fmt(e.train_loss), fmt_signed(c.delta) if c else "", fmt(e.train_runtime, 1),
               fmt(e.train_steps_per_second, 3), f"{c.extra['speedup']:.3f}x" if c and "speedup" in c.extra else ""])
    return t


def gates_table(results: Results) -> Table:
    t = Table("Gates", ["#", "gate", "checked on", "bound", "observed", "limit", "verdict", "why"])
    for g in results.compare.gates:
        t.add([g.gate + 1, g.rule, g.target, g.bound, fmt(g.observed), fmt(g.limit),
               "held" if g.held else "FAILED", g.reason], "" if g.held else "bad")
    return t


def opencompass_table(results: Results) -> Table:
    """OpenCompass's own accuracies, as read back from its summary; a missing score stays missing."""
    t = Table("OpenCompass", ["model", "dataset", "metric", "mode", "score"],
              note="scores as OpenCompass reports them (usually percent); 'missing' = no score in its summary")
    for e in results.opencompass:
        score = e.get("score")
        t.add([e.get("position", ""), e.get("dataset", ""), e.get("metric", ""), e.get("mode", ""),
               "missing" if score is None else fmt(score, 2)], "bad" if score is None else "")
    return t


def _model_label(name: str) -> str:
    return "Original" if name == "pretrain" else name


def training_block(results: Results) -> str:
    """The training seed's text block: train losses, runtimes, speeds, then each model's evaluation."""
    from accbench.report.training import format_training_block

    return format_training_block(results)


def all_tables(results: Results) -> list[Table]:
    """The tables that have content, in report order."""
    from accbench.report.sparsity import sparsity_table

    tables = [recovery_table(results),
              ppl_table(results) if results.ppl else None,
              fidelity_table(results) if results.fidelity else None,
              task_scores_table(results) if results.tasks else None,
              task_delta_table(results) if comparisons(results, "task") else None,
              sparsity_table(results),
              train_table(results) if results.train else None,
              opencompass_table(results) if results.opencompass else None,
              gates_table(results) if results.compare.gates else None]

    return [t for t in tables if t is not None] + accounting_tables(results) + \
        [t for t in (provenance_table(results),) if t is not None]


def verdict(results: Results) -> str:
    gates = results.compare.gates
    if not gates:
        note = results.compare.note
        return f"no gates configured; {note}" if note else "no gates configured"
    failed = sum(1 for g in gates if not g.held)
    return f"all {len(gates)} gate checks held" if not failed else f"{failed} of {len(gates)} gate checks FAILED"
