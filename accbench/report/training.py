"""The training benchmark's console block (the seed's "Training Results / Evaluation Results" layout).

Built from a `Results` alone, so it prints the same at the end of a run and later from results.json.
The original model is the position `pretrain`, shown as "Original"; every variant is shown by its name.
"""

from __future__ import annotations


from accbench.results import Results

WIDTH = 58
ORIGINAL = "pretrain"


def _rule(title: str = "") -> str:
    if not title:
        return "=" * WIDTH
    title = f" {title} "
    left = (WIDTH - len(title)) // 2
    return "=" * left + title + "=" * (WIDTH - left - len(title))


def _fmt(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _model_names(results: Results) -> list[str]:
    names = [ORIGINAL] if any(p.position == ORIGINAL for p in results.ppl) or \
        any(t.model == ORIGINAL for t in results.tasks) else []
    return names + [t.variant for t in results.train]


def training_rows(results: Results) -> list[tuple[str, str]]:
    """(label, value) rows of the training section: loss, runtime, steps/s, speed-up per variant."""
    train = results.train
    if not train:
        return []
    w = max(len(t.variant) for t in train)
    rows = [(f"{t.variant:<{w}} train loss", _fmt(t.train_loss, 6)) for t in train]
    rows += [(f"{t.variant:<{w}} train runtime (s)", _fmt(t.train_runtime, 2)) for t in train]
    rows += [(f"{t.variant:<{w}} train steps per second", _fmt(t.train_steps_per_second, 3)) for t in train]
    base = next((t.variant for t in train if t.baseline), None)
    if base is not None:
        rows += [(f"{t.variant:<{w}} speed-up vs {base}", f"{_fmt(t.speedup, 3)}x")
                 for t in train if not t.baseline]
    return rows


def evaluation_rows(results: Results) -> list[tuple[str, str]]:
    """(label, value) rows: perplexity per dataset, then every task metric, for each model in order."""
    names = _model_names(results)
    shown = {n: ("Original" if n == ORIGINAL else n) for n in names}
    w = max((len(s) for s in shown.values()), default=0)
    rows = []
    for n in names:
        for p in results.ppl:
            if p.position == n:
                rows.append((f"{shown[n]:<{w}} Model ppl {p.dataset} (seq_len {p.seq_len})", _fmt(p.ppl, 4)))
        for t in results.tasks:
            if t.model == n:
                rows += [(f"{shown[n]:<{w}} Model {t.task} {m}", _fmt(v, 4)) for m, v in t.metrics.items()]
    return rows


def format_training_block(results: Results) -> str:
    """The whole block as text: training rows, evaluation rows, where the details are."""
    train, evals = training_rows(results), evaluation_rows(results)
    tail = [("More details can be found in", results.run_dir or ".")]
    w = max(len(label) for label, _ in train + evals + tail)
    lines = ["", _rule("Training Results")]
    lines += [f"{label:<{w}} = {value}" for label, value in train]
    lines.append(_rule("Evaluation Results"))
    lines += [f"{label:<{w}} = {value}" for label, value in evals]
    lines.append("")
    lines += [f"{label:<{w}} = {value}" for label, value in tail]
    lines.append(_rule())
    return "\n".join(lines)
