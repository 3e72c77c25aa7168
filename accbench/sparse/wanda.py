"""Wanda (Sun et al. 2023, llmc's `Wanda`): prune by weight magnitude times input activation norm.

The score of weight W_ij is |W_ij| · ‖X_j‖₂, where X_j is input feature j of that linear over every calibration
token; the comparison group is each output row (unstructured: the lowest `sparsity` fraction of the row goes),
or each group of m consecutive weights of a row (N:M). Block by block: a block's linears are scored with the
inputs the dense block gives them, then all pruned; the next block is calibrated on this block's dense outputs
(llmc's default) or, with `sparsity_out`, its pruned ones. llmc divides ‖X_j‖² by the number of samples, a
constant per layer that does not change which weights go.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from accbench.quant.blockwise import BlockInputs, each_linear_input, run_blockwise
from accbench.sparse.masks import prune_
from accbench.sparse.spec import SparseOutcome, SparseSpec


def input_sq_norms(block: nn.Module, inputs: BlockInputs) -> dict[str, torch.Tensor]:
    """For every linear of the block: Σ over calibration tokens of x_j², per input feature j (float32)."""
    sums: dict[str, torch.Tensor] = {}

    def visit(name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        s = (x * x).sum(0)
        sums[name] = s if name not in sums else sums[name] + s

    each_linear_input(block, inputs, visit)
    return sums


def prune_block(block: nn.Module, inputs: BlockInputs, spec: SparseSpec) -> None:
    """Score every linear of the block on the calibration inputs, then prune them all in place."""
    norms = {n: s.sqrt() for n, s in input_sq_norms(block, inputs).items()}
    for name, mod in block.named_modules():
        if isinstance(mod, nn.Linear) and name in norms:
            w = mod.weight.data
            score = w.abs().float() * norms[name].to(w.device).reshape(1, -1)
            prune_(w, score, spec.sparsity, spec.n_m, per_row=True)


def sparsify(model: Any, blocks: Any, inputs: BlockInputs | None, spec: SparseSpec, device: str) -> SparseOutcome:
    assert inputs is not None, "Wanda needs calibration inputs"
    run_blockwise(blocks, inputs, device, lambda i, block, inp: prune_block(block, inp, spec),
                  quant_out=spec.sparsity_out, desc="Wanda")
    return SparseOutcome()
