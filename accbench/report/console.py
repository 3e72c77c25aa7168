"""The console summary printed at the end of a run (and by `accbench compare` / `accbench report`)."""

from __future__ import annotations

from typing import Any

from accbench.report.tables import Table, all_tables, training_block, verdict
from accbench.results import Results

_STYLE = {"bad": "red", "good": "green", "": ""}


def rich_table(t: Table) -> Any:
    from rich.table import Table as RichTable

    table = RichTable(title=t.title, caption=t.note or None, show_lines=False)
    for i, col in enumerate(t.header):
        numeric = any(r[i][:1] in "+-–0123456789[" for r in t.rows if r[i]) and col not in ("gate", "why")
        table.add_column(col, justify="right" if numeric else "left", overflow="fold")
    from rich.markup import escape

    for row, mark in zip(t.rows, t.marks):  # cells are text, never markup: "[[rating]]" must print as written
        table.add_row(*(escape(c) for c in row), style=_STYLE[mark] or None)
    return table


def print_summary(results: Results, console: Any) -> None:
    """One rich table per section, the training seed's block for training runs, and the gates' verdict."""
    if not getattr(console, "is_terminal", True) and getattr(console, "width", 200) < 160:
        console.width = 160  # logs and CI output: keep rows on one line rather than folding every cell
    if results.train:
        console.print(training_block(results), markup=False, highlight=False)
    for t in all_tables(results):
        if not t.text:  # provenance: in report.md / report.html, not at the end of every run
            console.print(rich_table(t))
    if results.compare.gates:
        ok = results.compare.all_held
        console.print(f"[bold {'green' if ok else 'red'}]{verdict(results)}[/] "
                      f"(exit code {results.compare.exit_code})")
    if results.run_dir:
        console.print(f"results: {results.run_dir}/results.json", markup=False)
