"""report.html: one self-contained page (inline CSS, charts embedded as base64 PNG, no scripts, no network).

Sections: verdict, the training block, every table (recovery and provenance included), the charts (or why one
is left out), and what flipped (report/flips.py).
`write_reports` also writes report.md and the PNGs under plots/.
"""

from __future__ import annotations

import base64
import importlib.util
from html import escape
from pathlib import Path
from typing import Any

from accbench.report.flips import flip_groups, flips_html, write_flip_files
from accbench.report.tables import Table, all_tables, training_block, verdict
from accbench.results import Results

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
 color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,th:first-child,table.text td,table.text th{text-align:left}
tr.bad td{background:#fdecea;color:#922}tr.good td{background:#eafaf1}
.verdict{font-size:1.1rem;padding:.6rem 1rem;border-radius:4px;display:inline-block}
.ok{background:#eafaf1;color:#1e7e34}.fail{background:#fdecea;color:#922}.none{background:#f4f4f4}
pre{background:#f8f8f8;padding:.6rem;overflow-x:auto;font-size:.8rem;white-space:pre-wrap}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0}.note{color:#666;font-size:.8rem}
details{margin:.3rem 0;border:1px solid #eee;padding:.3rem .6rem}summary{cursor:pointer}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:.6rem}.pair pre{margin:.2rem 0}
"""

_CHART_TITLES = {
    "ppl.png": "Perplexity per position",
    "task_deltas.png": "Task deltas with 95% confidence intervals",
    "flips.png": "Per-sample flips against the baseline",
    "loss_curves.png": "Training loss curves",
    "categories.png": "Scores per category",
    "kld_hist.png": "KL divergence histogram",
}


def html_table(t: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.header)
    body = "".join(f"<tr class='{m}'>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row, m in zip(t.rows, t.marks))
    note = f"<p class='note'>{escape(t.note)}</p>" if t.note else ""
    cls = " class='text'" if t.text else ""
    return f"<h2>{escape(t.title)}</h2><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def render_html(results: Results, plots: dict[str, bytes]) -> str:
    comp = results.compare
    cls = "none" if not comp.gates else ("ok" if comp.all_held else "fail")
    title = f"accbench report: {results.run_dir or 'comparison'}"
    body = [f"<h1>{escape(title)}</h1>",
            f"<p class='verdict {cls}'>Baseline <b>{escape(str(comp.baseline))}</b> · "
            f"{escape(verdict(results))} · exit code {comp.exit_code}</p>"]
    if results.train:
        body.append(f"<h2>Training block</h2><pre>{escape(training_block(results))}</pre>")
    body += [html_table(t) for t in all_tables(results)]
    if not plots:
        body.append("<p class='note'>No charts: nothing to plot, or matplotlib is not installed "
                    "(pip install 'accbench[report]', then run accbench report RUN_DIR).</p>")
    from accbench.report.plots import skipped_charts

    for name, why in skipped_charts(results, plots).items():
        body.append(f"<p class='note'>Chart '{escape(_CHART_TITLES.get(name, name))}' left out: {escape(why)}.</p>")
    for name, png in plots.items():
        b64 = base64.b64encode(png).decode("ascii")
        body.append(f"<h2>{escape(_CHART_TITLES.get(name, name))}</h2>"
                    f"<img alt='{escape(name)}' src='data:image/png;base64,{b64}'>")
    body.append(flips_html(flip_groups(results)))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>")


def write_reports(results: Results, out_dir: Path) -> list[Path]:
    """Write report.md, report.html and plots/*.png into out_dir; return the paths written."""
    from accbench.report.markdown import render_markdown
    from accbench.report.plots import make_plots

    out_dir = Path(out_dir)
    # charts are optional: without the `report` extra the reports still carry every table
    plots = make_plots(results) if importlib.util.find_spec("matplotlib") is not None else {}
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    written = []
    for name, png in plots.items():
        (out_dir / "plots" / name).write_bytes(png)
        written.append(out_dir / "plots" / name)
    groups = flip_groups(results)
    if groups:
        write_flip_files(groups, out_dir)
    (out_dir / "report.md").write_text(render_markdown(results, list(plots)))
    (out_dir / "report.html").write_text(render_html(results, plots))
    return written + [out_dir / "report.md", out_dir / "report.html"]
