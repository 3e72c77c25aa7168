"""Perplexity as a task, on any text file (txt, json/jsonl, parquet, a saved dataset), by llmc's recipe.

The text is joined, tokenized once and cut into non-overlapping `seq_len` windows (tail dropped);
per_sample holds each window's mean loss, so two models can be compared window by window.
"""

from __future__ import annotations

import math
from typing import Any

from accbench.errors import DataError
from accbench.evaluate.requests import TaskResult
from accbench.evaluate.tasks.common import mean_stderr


def window_losses(cfg: Any, engine: Any) -> list[float]:
    from accbench.data.text import load_texts, ppl_token_stream
    from accbench.evaluate.perplexity import perplexity

    if not cfg.path:
        raise DataError(f"task '{cfg.name}' needs a path to a text file", f"set path: for task '{cfg.name}'")
    texts = load_texts("custom", cfg.path)
    stream = ppl_token_stream("custom", texts, engine.tokenizer, cfg.seq_len)
    try:
        res = perplexity(engine.model, stream, cfg.seq_len, cfg.bs, engine.device, max_windows=cfg.limit,
                         desc=f"ppl {cfg.name}")
    except ValueError as exc:
        raise DataError(f"task '{cfg.name}': {exc}", "use a longer text or a smaller seq_len") from None
    return res.window_losses


def check(cfg: Any) -> None:
    from pathlib import Path

    if not cfg.path or not Path(cfg.path).expanduser().exists():
        raise DataError(f"task '{cfg.name}': text file not found: {cfg.path}", f"set path: for task '{cfg.name}'")


def run(cfg: Any, answerer: Any) -> TaskResult:
    engine = getattr(answerer, "engine", answerer)
    if hasattr(answerer, "memo"):  # the per-sample store keeps the window losses for resume and rescore
        losses = answerer.memo("perplexity", {"path": cfg.path, "seq_len": cfg.seq_len, "limit": cfg.limit},
                               lambda: window_losses(cfg, engine))
    else:
        losses = window_losses(cfg, engine)
    mean = sum(losses) / len(losses)
    se = mean_stderr(losses)
    return TaskResult(task=cfg.name, type="perplexity", metrics={"ppl": math.exp(mean), "loss": mean},
                      stderr={"ppl": None if se is None else math.exp(mean) * se, "loss": se}, n=len(losses),
                      per_sample={"loss": {f"window{i}": v for i, v in enumerate(losses)}},
                      extra={"seq_len": cfg.seq_len, "windows": len(losses)})
