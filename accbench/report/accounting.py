"""Report tables that account for what stands behind a number: MT-bench judgments ("N of M judgments rated",
every failed judgment with its question, turn and reason, pairwise win/tie/loss against the baseline) and the
training data each variant saw (samples, tokens). Built from a `Results` alone; console, report.md and
report.html render them like every other table (report/tables.py lists them).
"""

from __future__ import annotations

from typing import Any

from accbench.report.table import Table
from accbench.results import Results


def _fmt(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _mtbench(results: Results) -> list[Any]:
    return [t for t in results.tasks if t.type == "mtbench"]


def judgments_table(results: Results) -> Table | None:
    entries = _mtbench(results)
    if not entries:
        return None
    t = Table("MT-bench judgments", ["model", "task", "judgments rated", "turn 1 n", "turn 2 n", "prompts",
                                     "parser", "judge requests"],
              note="judge requests: every HTTP request sent in this run, the client's retries included "
                   "(cached replies cost nothing)")
    for e in entries:
        extra = e.model_dump()
        j, g, per_turn = extra.get("judgments") or {}, extra.get("grading") or {}, extra.get("n_per_turn") or {}
        summary = j.get("summary") or f"{j.get('rated', e.n)} of {j.get('total', '?')} judgments rated"
        t.add([e.model, e.task, summary, per_turn.get("turn1", 0), per_turn.get("turn2", 0),
               g.get("prompts", "?"), g.get("parser", "?"), extra.get("judge_requests_sent", "?")],
              "bad" if j.get("failed") else "")
    return t


def failed_judgments_table(results: Results) -> Table | None:
    rows = []
    for e in _mtbench(results):
        extra = e.model_dump()
        for f in (extra.get("judgments") or {}).get("failed") or []:
            rows.append([e.model, e.task, "single", f["question_id"], f["turn"], f["why"]])
        for f in (extra.get("pairwise") or {}).get("failed") or []:
            rows.append([e.model, e.task, "pairwise", f["question_id"], f["turn"], f["why"]])
    if not rows:
        return None
    t = Table("MT-bench failed judgments", ["model", "task", "kind", "question", "turn", "why"],
              note="left out of the scores, as FastChat leaves them out; the judge's replies are in the task's "
                   "samples.jsonl / pairwise.jsonl")
    for r in rows:
        t.add(r, "bad")
    return t


def pairwise_table(results: Results) -> Table | None:
    rows = [(e, e.model_dump().get("pairwise")) for e in _mtbench(results)]
    rows = [(e, p) for e, p in rows if p]
    if not rows:
        return None
    t = Table("MT-bench pairwise against the baseline", ["model", "task", "baseline", "win", "tie", "loss",
                                                          "inconsistent", "errors", "win rate",
                                                          "win rate adjusted", "CI"],
              note="FastChat's pairwise rule: each turn judged twice with the answers swapped; a tie, or two "
                   "verdicts that disagree, count as a tie; adjusted win rate = (win + tie/2) / judged; CI: "
                   "bootstrap over questions")
    for e, p in rows:
        if p.get("skipped"):
            t.add([e.model, e.task, p.get("baseline", ""), "", "", "", "", "", "", "", f"skipped: {p['skipped']}"])
            continue
        ci = p.get("ci")
        t.add([e.model, e.task, p["baseline"], p["win"], p["tie"], p["loss"], p["inconsistent"], p["errors"],
               _fmt(p["win_rate"]), _fmt(p["win_rate_adjusted"]),
               f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "n/a"])
    return t


def train_data_table(results: Results) -> Table | None:
    if not any(e.model_dump().get("train_samples") is not None for e in results.train):
        return None
    t = Table("Training data", ["variant", "train samples", "train tokens"],
              note="a variant trained on other data than the baseline is not compared unless "
                   "compare.allow_different_train_data is set")
    base = next((e for e in results.train if e.baseline), None)
    for e in results.train:
        d = e.model_dump()
        differs = base is not None and e is not base and d.get("train_samples") != base.model_dump().get(
            "train_samples")
        t.add([e.variant, _fmt(d.get("train_samples")), _fmt(d.get("train_tokens"))], "bad" if differs else "")
    return t


def accounting_tables(results: Results) -> list[Table]:
    """The tables of this module that have content."""
    tables = [judgments_table(results), failed_judgments_table(results), pairwise_table(results),
              train_data_table(results)]
    return [t for t in tables if t is not None]
