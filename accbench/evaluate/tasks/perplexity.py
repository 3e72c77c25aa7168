"""Perplexity as a task, on any text file (txt, json/jsonl, parquet, a saved dataset), by llmc's recipe.

The text is joined, tokenized once and cut into non-overlapping `seq_len` windows (tail dropped);
per_sample holds each window's mean loss, so two models can be compared window by window.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from accbench.errors import DataError
from accbench.evaluate.requests import Answerer, TaskResult, WindowLossRequest
from accbench.evaluate.tasks.common import mean_stderr

if TYPE_CHECKING:
    from accbench.config import PerplexityTask


def check(cfg: "PerplexityTask") -> None:
    from pathlib import Path

    if not cfg.path or not Path(cfg.path).expanduser().exists():
        raise DataError(f"task '{cfg.name}': text file not found: {cfg.path}", f"set path: for task '{cfg.name}'")


def run(cfg: "PerplexityTask", answerer: Answerer) -> TaskResult:
    if not cfg.path:
        raise DataError(f"task '{cfg.name}' needs a path to a text file", f"set path: for task '{cfg.name}'")
    # the per-sample store (when the answerer is one) keeps the window losses for resume and rescore
    losses = answerer.window_losses(WindowLossRequest(cfg.name, cfg.path, cfg.seq_len, cfg.bs, cfg.limit))
    mean = sum(losses) / len(losses)
    se = mean_stderr(losses)
    return TaskResult(task=cfg.name, type="perplexity", metrics={"ppl": math.exp(mean), "loss": mean},
                      stderr={"ppl": None if se is None else math.exp(mean) * se, "loss": se}, n=len(losses),
                      per_sample={"loss": {f"window{i}": v for i, v in enumerate(losses)}},
                      extra={"seq_len": cfg.seq_len, "windows": len(losses)})
