"""Were the training variants trained on the same data? A variant compared with a baseline that saw other data
(a `command` variant whose script holds out part of the file for validation, as run_clm.py's
validation_split_percentage does) measures the data, not the training stack, so the comparison refuses it
unless `compare.allow_different_train_data` says otherwise.

Each variant's count comes from its own output: `train_samples` in all_results.json (run_clm.py and the
built-in worker write it) and, when known, `train_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataMismatch:
    """A variant whose training data differs from the baseline's, in samples or tokens."""

    variant: str
    baseline: str
    what: str  # train_samples | train_tokens
    variant_value: int
    baseline_value: int

    def message(self) -> str:
        noun = "samples" if self.what == "train_samples" else "tokens"
        return (f"variant {self.variant} trained on {self.variant_value} {noun}, the baseline {self.baseline} on "
                f"{self.baseline_value}: not compared (a script holding out validation data, as run_clm.py's "
                "validation_split_percentage does, trains on fewer); give every variant the same data, or set "
                "compare.allow_different_train_data: true")


def data_mismatches(train: list[Any]) -> list[DataMismatch]:
    """Variants whose known sample or token count differs from the baseline variant's."""
    base = next((t for t in train if t.baseline), None)
    if base is None:
        return []
    out = []
    for t in train:
        if t is base:
            continue
        for what in ("train_samples", "train_tokens"):
            mine, theirs = getattr(t, what), getattr(base, what)
            if mine is not None and theirs is not None and mine != theirs:
                out.append(DataMismatch(t.variant, base.variant, what, mine, theirs))
                break
    return out


def data_counts(metrics: dict[str, Any], builtin_block_size: int | None) -> tuple[int | None, int | None]:
    """(train_samples, train_tokens) from a run's all_results.json metrics; a built-in variant's samples are
    blocks of `builtin_block_size` tokens."""
    samples = metrics.get("train_samples")
    samples = int(samples) if isinstance(samples, (int, float)) and not isinstance(samples, bool) else None
    tokens = metrics.get("train_tokens")
    tokens = int(tokens) if isinstance(tokens, (int, float)) and not isinstance(tokens, bool) else None
    if tokens is None and samples is not None and builtin_block_size:
        tokens = samples * builtin_block_size
    return samples, tokens
