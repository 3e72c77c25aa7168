"""Magnitude pruning (llmc's `Magnitude`): in every decoder-block linear, remove the weights of smallest |W|.

Unstructured, the comparison group is the whole weight matrix (llmc's and the Wanda paper's magnitude
baseline); N:M keeps the n largest |W| of every m consecutive weights of a row. No calibration data.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from accbench.quant.blockwise import BlockInputs
from accbench.sparse.masks import prune_
from accbench.sparse.spec import SparseOutcome, SparseSpec


def prune_block(block: nn.Module, spec: SparseSpec) -> None:
    """Prune every linear of one block in place."""
    for m in block.modules():
        if isinstance(m, nn.Linear):
            w = m.weight.data
            prune_(w, w.abs(), spec.sparsity, spec.n_m, per_row=False)


def sparsify(model: Any, blocks: Any, inputs: BlockInputs | None, spec: SparseSpec, device: str) -> SparseOutcome:
    with torch.no_grad():
        for block in blocks:
            prune_block(block, spec)
    return SparseOutcome()
