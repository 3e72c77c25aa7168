"""report.html: one self-contained page (inline CSS, charts embedded as base64 PNG, no scripts, no network).

Sections: verdict, the training block, every table, the charts, and for tasks whose entries carry
`samples` (prompt/response per sample, see docs/report.md) the samples that flipped, with both answers.
`write_reports` also writes report.md and the PNGs under plots/.
"""

from __future__ import annotations

import base64
import importlib.util
from html import escape
from pathlib import Path
from typing import Any

from accbench.report.tables import Table, all_tables, comparisons, training_block, verdict
from accbench.results import Results, TaskEntry

MAX_FLIPS_SHOWN = 50  # per direction and comparison; the rest are counted, not shown

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
 color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
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
    return f"<h2>{escape(t.title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def _entry(results: Results, model: str, task: str) -> TaskEntry | None:
    return next((e for e in results.tasks if e.model == model and e.task == task), None)


_ID_KEYS = ("sample_id", "id", "task_id", "question_id", "doc_id")


def samples_by_id(entry: TaskEntry | None) -> dict[str, dict[str, Any]]:
    """A task entry's per-sample texts as {sample_id: {prompt, response, reference}}.

    The documented shape is a dict under `samples` (docs/report.md); a list of records that name their id
    (`task_id`, `question_id`, ...) and hold `completion` or `response` is accepted too (human-eval style,
    first record per id), also when it sits under `extra.samples`.
    """
    if entry is None:
        return {}
    raw = getattr(entry, "samples", None)
    if raw is None:
        extra = getattr(entry, "extra", None)
        raw = extra.get("samples") if isinstance(extra, dict) else None
    out: dict[str, dict[str, Any]] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            out[str(k)] = v if isinstance(v, dict) else {"response": v}
    elif isinstance(raw, list):
        for rec in raw:
            if not isinstance(rec, dict):
                continue
            sid = next((rec[k] for k in _ID_KEYS if rec.get(k) is not None), None)
            if sid is None or str(sid) in out:
                continue
            out[str(sid)] = {"prompt": rec.get("prompt"), "response": rec.get("response", rec.get("completion")),
                             "reference": rec.get("reference", rec.get("target"))}
    return out


def _sample_block(sid: str, base: dict[str, Any], cand: dict[str, Any], names: tuple[str, str]) -> str:
    prompt = cand.get("prompt") or base.get("prompt") or ""
    ref = cand.get("reference") or base.get("reference")
    ref_html = f"<div><b>reference</b><pre>{escape(str(ref))}</pre></div>" if ref is not None else ""
    return (f"<details><summary>{escape(sid)}</summary><div><b>prompt</b><pre>{escape(str(prompt))}</pre></div>"
            f"{ref_html}<div class='pair'><div><b>{escape(names[0])}</b><pre>{escape(str(base.get('response', '')))}"
            f"</pre></div><div><b>{escape(names[1])}</b><pre>{escape(str(cand.get('response', '')))}</pre></div>"
            "</div></details>")


def flipped_samples_html(results: Results) -> str:
    """What flipped, sample by sample, for tasks whose entries carry `samples` on both sides."""
    parts = []
    for c in comparisons(results, "task"):
        base, cand = _entry(results, c["baseline"], c["task"]), _entry(results, c["candidate"], c["task"])
        sb, sc = samples_by_id(base), samples_by_id(cand)
        if not sb or not sc or "/" in c["metric"]:
            continue
        va, vb = base.per_sample.get(c["metric"], {}), cand.per_sample.get(c["metric"], {})
        sign = 1.0 if c["direction"] == "higher" else -1.0
        if c.get("correct_to_wrong") is not None:
            good = 1.0 if c["direction"] == "higher" else 0.0
            groups = (("correct → wrong", [k for k in va if k in vb and va[k] == good and vb[k] != good]),
                      ("wrong → correct", [k for k in va if k in vb and va[k] != good and vb[k] == good]))
        else:  # scores: the samples that moved most, each way
            moved = sorted((k for k in va if k in vb and va[k] != vb[k]), key=lambda k: sign * (vb[k] - va[k]))
            groups = (("largest drops", [k for k in moved if sign * (vb[k] - va[k]) < 0]),
                      ("largest gains", [k for k in reversed(moved) if sign * (vb[k] - va[k]) > 0]))
        parts.append(f"<h3>{escape(c['candidate'])} · {escape(c['task'])} · {escape(c['metric'])}</h3>")
        for title, ids in groups:
            shown = ids[:MAX_FLIPS_SHOWN]
            more = f" (first {len(shown)} shown)" if len(ids) > len(shown) else ""
            parts.append(f"<h4>{title}: {len(ids)}{more}</h4>")
            parts += [_sample_block(f"{k}  ({va[k]:g} → {vb[k]:g})", sb.get(k, {}), sc.get(k, {}),
                                    (c["baseline"], c["candidate"])) for k in shown]
    return ("<h2>What flipped</h2>" + "".join(parts)) if parts else ""


def render_html(results: Results, plots: dict[str, bytes]) -> str:
    comp = results.compare
    cls = "none" if not comp.get("gates") else ("ok" if comp.get("all_held") else "fail")
    title = f"accbench report: {results.run_dir or 'comparison'}"
    body = [f"<h1>{escape(title)}</h1>",
            f"<p class='verdict {cls}'>Baseline <b>{escape(str(comp.get('baseline', '–')))}</b> · "
            f"{escape(verdict(results))} · exit code {comp.get('exit_code', 0)}</p>"]
    if results.train:
        body.append(f"<h2>Training block</h2><pre>{escape(training_block(results))}</pre>")
    body += [html_table(t) for t in all_tables(results)]
    if not plots:
        body.append("<p class='note'>No charts: nothing to plot, or matplotlib is not installed "
                    "(pip install 'accbench[report]', then run accbench report RUN_DIR).</p>")
    for name, png in plots.items():
        b64 = base64.b64encode(png).decode("ascii")
        body.append(f"<h2>{escape(_CHART_TITLES.get(name, name))}</h2>"
                    f"<img alt='{escape(name)}' src='data:image/png;base64,{b64}'>")
    body.append(flipped_samples_html(results))
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
    (out_dir / "report.md").write_text(render_markdown(results, list(plots)))
    (out_dir / "report.html").write_text(render_html(results, plots))
    return written + [out_dir / "report.md", out_dir / "report.html"]
