"""Batch sizes for the HF backend, in one place for scoring and generation: the first choice (fixed, the size
found before, a CPU token budget, or a GPU memory probe) and the out-of-memory halving while running."""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("accbench.engine")

CPU_TOKEN_BUDGET = 8192  # tokens per forward on CPU with batch_size=auto: larger batches stop paying off
PROGRESS_LOG_S = 30.0  # a long pass says how far it got this often, as one plain line in the log


def initial_batch_size(setting: int | str, found: int | None, device: str, longest: int, max_batch_size: int,
                       probe: Callable[[int], int]) -> int:
    """The batch size to start a pass with: the fixed setting; else the size an earlier pass of the same kind
    settled on (`found`); else on CPU as many rows of `longest` tokens as CPU_TOKEN_BUDGET allows; else on GPU
    what `probe(longest)` finds fits in memory."""
    if setting != "auto":
        return int(setting)
    if found is not None:
        return found
    if longest <= 0:  # nothing to run
        return 1
    if not device.startswith("cuda"):
        return max(1, min(max_batch_size, CPU_TOKEN_BUDGET // max(longest, 1)))
    return probe(longest)


def probe_batch_size(try_forward: Callable[[int], None], start: int) -> int:
    """Largest batch size, from `start` halving, for which `try_forward(bs)` does not run out of memory."""
    bs = start
    while True:
        try:
            try_forward(bs)
            return bs
        except Exception as exc:
            if not is_oom(exc) or bs == 1:
                raise
            bs //= 2
            empty_cache()


def run_in_batches(items: list, bs: int, run: Callable[[list, int], None], what: str) -> int:
    """Call `run(chunk, bs)` over `items` in chunks of `bs`, halving `bs` and retrying the chunk on out-of-memory;
    return the batch size that held. A pass longer than PROGRESS_LOG_S logs one plain progress line that often
    (logs are files: no progress bar, no carriage returns)."""
    start, last = 0, time.monotonic()
    while start < len(items):
        chunk = items[start : start + bs]
        try:
            run(chunk, bs)
        except Exception as exc:
            if not is_oom(exc) or bs == 1:
                raise
            bs //= 2
            log.warning("out of memory while %s; batch size -> %d", what, bs)
            empty_cache()
            continue
        start += len(chunk)
        if time.monotonic() - last >= PROGRESS_LOG_S and start < len(items):
            last = time.monotonic()
            log.info("%s: %d/%d requests done (batch size %d)", what, start, len(items), bs)
    return bs


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
