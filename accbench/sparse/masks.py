"""Pruning masks from a score matrix (larger score: more important), shared by Magnitude and Wanda.

A mask is True where a weight is removed. Exactly `int(count * sparsity)` weights of each comparison group go
(ties broken by position, stable sort), so the achieved sparsity is the requested one, not "everything at or
below a threshold" (which removes every tied weight and can overshoot).
"""

from __future__ import annotations

import torch


def unstructured_mask(score: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Remove the lowest-scoring `sparsity` fraction of each output row (`per_row`, Wanda's comparison group)
    or of the whole matrix (Magnitude's layer-wise group, as llmc and the Wanda paper's baseline)."""
    flat = score if per_row else score.reshape(1, -1)
    k = int(flat.shape[1] * sparsity)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(flat.float(), dim=1, stable=True).indices[:, :k]
        mask.scatter_(1, idx, True)
    return mask.reshape(score.shape)


def n_m_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of `m` consecutive weights of a row (along the input dimension), keep the `n` with the
    highest score and remove the other m - n (NVIDIA's 2:4: two non-zeros in every four)."""
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"N:M sparsity needs the input dimension ({cols}) to be a multiple of M ({m})")
    groups = score.float().reshape(rows, cols // m, m)
    drop = torch.sort(groups, dim=2, stable=True).indices[:, :, : m - n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, drop, True)
    return mask.reshape(rows, cols)


def prune_(weight: torch.Tensor, score: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None,
           per_row: bool) -> None:
    """Zero `weight` in place where the mask of `score` says so."""
    mask = n_m_mask(score, *n_m) if n_m is not None else unstructured_mask(score, sparsity, per_row)
    weight.masked_fill_(mask.to(weight.device), 0)
