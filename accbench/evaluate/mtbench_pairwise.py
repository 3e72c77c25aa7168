"""MT-bench pairwise judging against a baseline model, as FastChat's `gen_judgment.py --mode pairwise-baseline`
and `show_result.py --mode pairwise-baseline` do it.

Each question turn is judged twice with FastChat's pair prompts (pair-v2 / pair-math-v1, multi-turn for turn 2):
game 1 shows the candidate as assistant A and the baseline as B, game 2 the other way round. A verdict that
cannot be read (or a failed request) makes the turn an error, left out of the counts and listed. Otherwise the
turn is a tie when game 1 says tie or the two games disagree, else a win or a loss for the candidate.
win_rate = win / n, loss_rate = loss / n, win_rate_adjusted = (win + tie / 2) / n over the n judged turns,
with a percentile bootstrap confidence interval that resamples questions (a question's two turns together).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from accbench.evaluate.fastchat_judge import JudgePrompt, fill_pair, parse_verdict, prompt_name
from accbench.evaluate.judge import JudgeClient, Messages, ReplyCache, judge_ratings

OUTCOME_VALUE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass
class PairGame:
    """One question turn judged twice; `outcome` is win/tie/loss for the candidate, or None (an error)."""

    question_id: str
    turn: int
    prompt: str
    g1: str | None  # verdict with the candidate as A: "A", "B", "tie" or None
    g2: str | None  # verdict with the baseline as A
    outcome: str | None
    why: str = ""


def fastchat_outcome(g1: str | None, g2: str | None) -> str | None:
    """FastChat's rule: either game an error -> None; game 1 a tie, or the games disagree -> tie."""
    if g1 is None or g2 is None:
        return None
    w1 = {"A": "candidate", "B": "baseline"}.get(g1, g1)
    w2 = {"A": "baseline", "B": "candidate"}.get(g2, g2)
    if w1 == "tie" or w1 != w2:
        return "tie"
    return "win" if w1 == "candidate" else "loss"


def judge_pairs(slots: list[tuple[Any, int, tuple[str, ...] | None]], candidate: dict[str, list[str]],
                baseline: dict[str, list[str]], prompts: dict[str, JudgePrompt], client: JudgeClient,
                cache: ReplyCache) -> tuple[list[PairGame], int]:
    """Judge every (question, turn, reference) slot in both orders; returns the games and the requests sent."""
    requests: list[Messages] = []
    names = []
    for q, turn, ref in slots:
        name = prompt_name(q.category, turn, pairwise=True)
        cand, base = candidate[q.question_id], baseline[q.question_id]
        names.append(name)
        requests.append(fill_pair(prompts[name], q.turns, cand, base, turn, ref))
        requests.append(fill_pair(prompts[name], q.turns, base, cand, turn, ref))
    judged = judge_ratings(requests, client, cache, parse_retries=0, parse=parse_verdict)
    games = []
    for k, (q, turn, _) in enumerate(slots):
        j1, j2 = judged[2 * k], judged[2 * k + 1]
        outcome = fastchat_outcome(j1.rating, j2.rating)
        why = "; ".join(f"game {g}: {j.error}" for g, j in ((1, j1), (2, j2)) if j.rating is None)
        games.append(PairGame(q.question_id, turn, names[k], j1.rating, j2.rating, outcome, why))
    return games, sum(j.sent for j in judged)


def win_rates(games: list[PairGame], confidence: float = 0.95, resamples: int = 10_000,
              seed: int = 0) -> dict[str, Any]:
    """FastChat's counts and rates over the judged games, with a bootstrap CI of win_rate_adjusted."""
    judged = [g for g in games if g.outcome is not None]
    counts = {k: sum(g.outcome == k for g in judged) for k in ("win", "tie", "loss")}
    n = len(judged)
    out: dict[str, Any] = dict(counts, n=n, total=len(games), errors=len(games) - n,
                               inconsistent=sum(g.g1 != "tie" and g.g1 is not None and g.outcome == "tie"
                                                for g in judged),
                               win_rate=counts["win"] / n if n else None,
                               loss_rate=counts["loss"] / n if n else None,
                               win_rate_adjusted=(counts["win"] + 0.5 * counts["tie"]) / n if n else None,
                               confidence=confidence, ci=None)
    qids = sorted({g.question_id for g in judged})
    if len(qids) >= 2:
        index = {q: i for i, q in enumerate(qids)}
        sums, sizes = np.zeros(len(qids)), np.zeros(len(qids))
        for g in judged:
            sums[index[g.question_id]] += OUTCOME_VALUE[g.outcome]
            sizes[index[g.question_id]] += 1
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(qids), size=(resamples, len(qids)))
        boot = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
        alpha = (1 - confidence) / 2
        out["ci"] = [float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))]
    return out
