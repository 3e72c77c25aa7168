"""The report's charts as PNG bytes (matplotlib, Agg backend, imported lazily: the `report` extra).

Each function takes a `Results` with its `compare` block and returns PNG bytes, or None when the run has
nothing to draw for it. `make_plots` returns every chart that has content, by file name.
"""

from __future__ import annotations

import io
from typing import Any, Collection

from accbench.errors import AccbenchError
from accbench.report.tables import comparisons
from accbench.results import Results

_BAD, _GOOD, _NEUTRAL = "#c0392b", "#27ae60", "#7f8c8d"


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise AccbenchError("the HTML report's charts need matplotlib", "pip install 'accbench[report]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def ppl_chart(results: Results) -> bytes | None:
    """Perplexity per position, one line per dataset, relative change vs the baseline written at each point.
    Points, not bars: the interesting differences are a few percent, invisible on bars that start at zero."""
    if not results.ppl:
        return None
    plt = _plt()
    rel = {(c.candidate, c.dataset, c.extra.get("seq_len")): c for c in comparisons(results, "ppl")}
    models = list(dict.fromkeys(p.position for p in results.ppl))
    datasets = list(dict.fromkeys((p.dataset, p.seq_len) for p in results.ppl))
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(4.5, 1.3 * len(models)) * len(datasets), 3.4),
                             squeeze=False)
    for ax, (ds, sl) in zip(axes[0], datasets):
        pts = [(models.index(p.position), p) for p in results.ppl if p.dataset == ds and p.seq_len == sl]
        ax.plot([x for x, _ in pts], [p.ppl for _, p in pts], "-", color="#bbb", zorder=1)
        for x, p in pts:
            c = rel.get((p.position, ds, sl))
            color = "C0" if c is None else (_BAD if c.relative_delta > 0 else _GOOD)
            if c is not None and c.ci_low is not None:
                base = p.ppl / (1 + c.relative_delta)
                lo, hi = base * (1 + c.ci_low), base * (1 + c.ci_high)
                ax.errorbar(x, p.ppl, yerr=[[p.ppl - lo], [hi - p.ppl]], fmt="none", ecolor=color, capsize=4)
            ax.scatter([x], [p.ppl], color=color, zorder=2)
            label = f"{p.ppl:.3f}" + (f"\n{c.relative_delta * 100:+.2f}%" if c else "")
            ax.annotate(label, (x, p.ppl), textcoords="offset points", xytext=(8, 0), va="center", fontsize=8)
        ax.set_xticks(range(len(models)), models, fontsize=8)
        ax.set_xlim(-0.5, len(models) - 0.2)
        ax.margins(y=0.25)
        ax.set_title(f"{ds} (decode_ppl)" if sl == 0 else f"{ds} (seq_len {sl})", fontsize=10)
        ax.set_ylabel("perplexity (lower is better)")
    fig.suptitle("Perplexity per position", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def task_delta_chart(results: Results) -> bytes | None:
    """Each candidate's task-metric change with its CI, signed so that right is better."""
    comps = [c for c in comparisons(results, "task") if "/" not in c.metric and c.worsening is not None]
    if not comps or all(c.delta == 0 and not c.ci_low and not c.ci_high for c in comps):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(comps) + 1.4))
    for y, c in enumerate(comps):
        sign = -1.0 if c.direction == "lower" else 1.0  # plot improvement to the right
        x = sign * c.delta
        color = _NEUTRAL
        if c.p_value is not None and c.p_value < 0.05:
            color = _BAD if x < 0 else _GOOD
        if c.ci_low is not None:
            lo, hi = sorted((sign * c.ci_low, sign * c.ci_high))
            ax.errorbar(x, y, xerr=[[x - lo], [hi - x]], fmt="o", color=color, capsize=4)
        else:
            ax.plot(x, y, "o", color=color)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(comps)), [f"{c.candidate} · {c.task} · {c.metric}" for c in comps], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("change vs baseline (right = better), 95% CI")
    ax.set_title("Task deltas")
    return _png(fig)


def flips_chart(results: Results) -> bytes | None:
    """Correct → wrong (left) and wrong → correct (right) per candidate, task and 0/1 metric; counts on an
    integer axis, each bar labelled with its count (zeros are left unlabelled)."""
    comps = [c for c in comparisons(results, "task") if c.correct_to_wrong is not None]
    if not any(c.correct_to_wrong or c.wrong_to_correct for c in comps):
        return None
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(comps) + 1.6))
    ys = list(range(len(comps)))
    ax.barh(ys, [-c.correct_to_wrong for c in comps], color=_BAD, label="correct → wrong")
    ax.barh(ys, [c.wrong_to_correct for c in comps], color=_GOOD, label="wrong → correct")
    for y, c in zip(ys, comps):
        if c.correct_to_wrong:
            ax.annotate(f" {c.correct_to_wrong} ", (-c.correct_to_wrong, y), ha="right", va="center", fontsize=8)
        if c.wrong_to_correct:
            ax.annotate(f" {c.wrong_to_correct} ", (c.wrong_to_correct, y), ha="left", va="center", fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys, [f"{c.candidate} · {c.task} · {c.metric}" for c in comps], fontsize=8)
    ax.set_ylim(len(comps) - 0.5, -0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{abs(int(v))}"))  # counts both ways
    ax.margins(x=0.2)
    ax.set_xlabel("samples that flipped against the baseline (left: lost, right: gained)")
    ax.set_title("Flips")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    return _png(fig)


def loss_curves_chart(results: Results) -> bytes | None:
    curves = [(e.variant, getattr(e, "loss_curve", None) or []) for e in results.train]
    curves = [(v, c) for v, c in curves if c]
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for v, c in curves:
        ax.plot([p["step"] for p in c], [p["loss"] for p in c], label=v, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title("Training loss per variant")
    ax.legend(fontsize=8)
    return _png(fig)


def category_chart(results: Results) -> bytes | None:
    """Per-category scores (metrics named `category/<name>`, e.g. MT-bench), one bar per model."""
    entries = [e for e in results.tasks if any(k.startswith("category/") for k in e.metrics)]
    if not entries:
        return None
    plt = _plt()
    tasks = list(dict.fromkeys(e.task for e in entries))
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, 3.4 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        rows = [e for e in entries if e.task == task]
        cats = list(dict.fromkeys(k.split("/", 1)[1] for e in rows for k in e.metrics if k.startswith("category/")))
        width = 0.8 / len(rows)
        for j, e in enumerate(rows):
            vals = [e.metrics.get(f"category/{c}") or 0.0 for c in cats]
            ax.bar([i + (j - (len(rows) - 1) / 2) * width for i in range(len(cats))], vals, width * 0.9,
                   label=e.model, color=f"C{j}")
        ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task}: score per category")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _png(fig)


def kld_gate(results: Results) -> float | None:
    """The tightest max_kld gate checked in this run, drawn on the histogram."""
    limits = [g.limit for g in results.compare.gates if g.bound == "max_kld"]
    return min(limits) if limits else None


def kld_hist_chart(results: Results) -> bytes | None:
    """Per-token KL divergence histograms, from fidelity entries that carry `kld_hist: {edges, counts}`, with the
    max_kld gate drawn (a gate bounds the mean, shown as a marker per histogram). Legend outside the plot."""
    hists = [(f, getattr(f, "kld_hist", None)) for f in results.fidelity]
    hists = [(f, h) for f, h in hists if isinstance(h, dict) and h.get("counts")]
    if not hists:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    for i, (f, h) in enumerate(hists):
        edges, counts = h["edges"], h["counts"]
        ax.stairs(counts, edges, color=f"C{i}", label=f"{f.position} · {f.dataset}")
        ax.axvline(f.kld_mean, color=f"C{i}", lw=1, ls=":", label=f"mean {f.kld_mean:.4f}")
    gate = kld_gate(results)
    if gate is not None:
        ax.axvline(gate, color=_BAD, lw=1.5, ls="--", label=f"gate max_kld = {gate:g} (on the mean)")
    ax.set_yscale("log")
    positive = [e for _, h in hists for e in h["edges"] if e > 0]
    if positive and max(positive) / min(positive) > 100:  # log-spaced bins (fidelity's default): log x axis
        ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xlim(left=0)
    ax.set_xlabel("per-token KL divergence (nats)")
    ax.set_ylabel("tokens")
    ax.set_title("KL divergence to the original model")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


CHARTS = {
    "ppl.png": ppl_chart,
    "task_deltas.png": task_delta_chart,
    "flips.png": flips_chart,
    "loss_curves.png": loss_curves_chart,
    "categories.png": category_chart,
    "kld_hist.png": kld_hist_chart,
}


def skipped_charts(results: Results, made: Collection[str]) -> dict[str, str]:
    """Charts whose data exists but show nothing, by file name, with the reason (said in the report)."""
    out = {}
    tasks = [c for c in comparisons(results, "task") if "/" not in c.metric and c.worsening is not None]
    if tasks and "task_deltas.png" not in made:
        out["task_deltas.png"] = "every task delta is 0 (the candidates answered exactly as the baseline)"
    if any(c.correct_to_wrong is not None for c in tasks) and "flips.png" not in made:
        out["flips.png"] = "no sample flipped in any 0/1 metric"
    return out


def make_plots(results: Results) -> dict[str, bytes]:
    out = {}
    for name, fn in CHARTS.items():
        png = fn(results)
        if png is not None:
            out[name] = png
    return out
