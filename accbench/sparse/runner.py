"""Sparsify a whole model with one method: check the inputs, run the method block by block, measure the result.

`check_sparse` runs before calibration (it works on a meta-device model built from config.json, so preflight
calls it before any weights load). `sparsify_model` catches the first block's calibration inputs when the
method needs them, runs it, and measures what it achieved: the fraction of zero weights in the decoder-block
linears (Magnitude, Wanda), or the fraction of decoder-block parameters removed (ShortGPT). Embeddings, the
final norm and the LM head are never pruned, as in llmc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from accbench.errors import AccbenchError
from accbench.quant.blockwise import catch_block_inputs
from accbench.quant.runner import _blocks, _no_offload
from accbench.sparse.methods import SPARSE_METHODS
from accbench.sparse.spec import SparseOutcome, SparseSpec


@dataclass(frozen=True)
class SparseStats:
    """What sparsification achieved over the parameters it acts on (`total` of them, `pruned` zero or gone)."""

    achieved_sparsity: float
    pruned: int
    total: int
    layers_before: int
    layers_after: int


def check_sparse(model: Any, spec: SparseSpec, has_calib: bool) -> None:
    """Every problem visible before calibration, as one AccbenchError (what, where, how to fix)."""
    method = SPARSE_METHODS[spec.method]
    blocks, prefix = _blocks(model)
    problems = []
    if method.calibrated and not has_calib:
        problems.append(f"sparse method {spec.method} needs calibration data: add a calib section")
    if method.removes_layers and spec.n_prune_layers >= len(blocks):
        problems.append(f"sparse.weight.n_prune_layers {spec.n_prune_layers} would remove every decoder block "
                        f"({prefix} has {len(blocks)}); use at most {len(blocks) - 1}")
    if spec.n_m is not None:
        m = spec.n_m[1]
        bad = [f"{prefix}.{i}.{n} ({mod.in_features})" for i, b in enumerate(blocks) for n, mod in b.named_modules()
               if isinstance(mod, nn.Linear) and mod.in_features % m]
        if bad:
            problems.append(f"sparse.weight.sparsity_type {spec.pattern}: the input dimension of {bad[0]} is not a "
                            f"multiple of {m} ({len(bad)} layers affected)")
    if problems:
        raise AccbenchError("cannot sparsify:\n" + "\n".join(f"  - {p}" for p in problems),
                            "fix the sparse section (see docs/sparsity.md)")


def _linear_weights(blocks: Any) -> list[torch.Tensor]:
    return [m.weight for b in blocks for m in b.modules() if isinstance(m, nn.Linear)]


def _block_params(blocks: Any) -> int:
    return sum(p.numel() for b in blocks for p in b.parameters())


def sparsify_model(model: Any, spec: SparseSpec, batches: list[torch.Tensor] | None,
                   device: str) -> tuple[SparseOutcome, SparseStats]:
    """Run the method on the model in place; what it reports and what it achieved."""
    method = SPARSE_METHODS[spec.method]
    blocks, _ = _blocks(model)
    n_before, params_before = len(blocks), _block_params(blocks)
    with _no_offload(model, device), torch.no_grad():
        inputs = catch_block_inputs(model, blocks, batches or [], device) if method.calibrated else None
        outcome = method.sparsify(model, blocks, inputs, spec, device)
    if method.removes_layers:
        pruned = params_before - _block_params(blocks)
        stats = SparseStats(pruned / params_before, pruned, params_before, n_before, len(blocks))
    else:
        weights = _linear_weights(blocks)
        total = sum(w.numel() for w in weights)
        zeros = sum(int((w == 0).sum()) for w in weights)
        stats = SparseStats(zeros / total, zeros, total, n_before, len(blocks))
    return outcome, stats
