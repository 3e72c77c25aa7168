"""report.md: the console's tables in Markdown, the plots linked from plots/ (and why one is left out), and
what flipped (the first samples per direction; all of them in flips/*.jsonl)."""

from __future__ import annotations

import importlib.util

from accbench.report.flips import flip_groups, flips_markdown
from accbench.report.tables import Table, all_tables, training_block, verdict
from accbench.results import Results


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown_table(t: Table) -> str:
    lines = [f"## {t.title}", "", "| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
    for row, mark in zip(t.rows, t.marks):
        cells = [_cell(c) for c in row]
        if mark == "bad":
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if t.note:
        lines += ["", t.note]
    return "\n".join(lines)


def render_markdown(results: Results, plots: list[str]) -> str:
    parts = [f"# accbench report: {results.run_dir or 'comparison'}", ""]
    if results.compare:
        parts.append(f"Baseline: **{results.compare.baseline}** · {verdict(results)} · "
                     f"exit code {results.compare.exit_code}")
        parts.append("")
    if results.train:
        parts += ["```", training_block(results), "```", ""]
    for t in all_tables(results):
        parts += [markdown_table(t), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p}](plots/{p})" for p in plots] + [""]
    if plots or importlib.util.find_spec("matplotlib") is not None:
        from accbench.report.plots import skipped_charts

        parts += [f"Chart {name} left out: {why}." for name, why in skipped_charts(results, plots).items()] + [""]
    parts.append(flips_markdown(flip_groups(results)))
    return "\n".join(parts)
