"""ShortGPT (Men et al. 2024, llmc's `ShortGPT`): remove the decoder blocks that change the hidden state least.

Block Influence of block i: BI_i = mean over calibration tokens of 1 − cos(h_i, h_{i+1}), where h_i is the
hidden state entering block i and h_{i+1} the one leaving it, all computed on the dense model. The
`n_prune_layers` blocks of lowest BI are deleted (ties: the earlier block); the model's config and the
attention layers' cache indices are renumbered so the shortened model runs, generates and saves as a model of
that depth. A token whose cosine is undefined (a zero vector) counts as cos = 0.5, as in llmc. llmc sums BI over
the tokens of the first calibration batch; the mean over every token ranks blocks alike when there is one batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from accbench.quant.blockwise import BlockInputs, run_blockwise
from accbench.sparse.spec import SparseOutcome, SparseSpec


def block_influence(h_in: list[torch.Tensor], h_out: list[torch.Tensor]) -> float:
    """Mean over every token of 1 − cos(h_in, h_out)."""
    total, count = 0.0, 0
    for a, b in zip(h_in, h_out):
        a2, b2 = a.reshape(-1, a.shape[-1]).float(), b.reshape(-1, b.shape[-1]).float()
        cos = torch.nn.functional.cosine_similarity(a2, b2, dim=-1, eps=0.0).nan_to_num(nan=0.5)
        total += float((1 - cos).sum())
        count += cos.numel()
    return total / max(count, 1)


def influences(blocks: Any, inputs: BlockInputs, device: str) -> list[float]:
    """BI of every block, block by block. The runner hands each block the inputs the previous block's outputs
    became, so block i's BI is measured when block i + 1 starts (the last one after the loop); it computes a
    block's outputs after `seen` ran (quant_out with no quantized view: the dense outputs), so only the inputs
    of two consecutive blocks are alive at once."""
    seen: list[list[torch.Tensor]] = []
    bi: list[float] = []

    def process(i: int, block: nn.Module, inp: BlockInputs) -> None:
        if seen:
            bi.append(block_influence(seen.pop(), inp.hidden))
        seen.append(inp.hidden)

    run_blockwise(blocks, inputs, device, process, quant_out=True, desc="ShortGPT")
    bi.append(block_influence(seen.pop(), inputs.hidden))
    return bi


def lowest(bi: list[float], n: int) -> list[int]:
    """The indices of the `n` smallest values (the earlier index first among equals), ascending."""
    return sorted(sorted(range(len(bi)), key=lambda i: (bi[i], i))[:n])


def remove_blocks(model: Any, blocks: nn.ModuleList, removed: list[int]) -> None:
    """Delete the blocks and make the rest a model of that depth: config.num_hidden_layers (and a per-layer
    config.layer_types), and each remaining block's `layer_idx` (transformers' attention indexes its KV cache
    by it)."""
    for idx in sorted(removed, reverse=True):
        del blocks[idx]
    for j, block in enumerate(blocks):
        for mod in block.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):  # a transformers attribute, not ours
                mod.layer_idx = j
    gone = set(removed)
    cfg = model.config
    n_before = cfg.num_hidden_layers
    cfg.num_hidden_layers = len(blocks)
    layer_types = getattr(cfg, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n_before:
        cfg.layer_types = [t for i, t in enumerate(layer_types) if i not in gone]


def sparsify(model: Any, blocks: Any, inputs: BlockInputs | None, spec: SparseSpec, device: str) -> SparseOutcome:
    assert inputs is not None, "ShortGPT needs calibration inputs"
    bi = influences(blocks, inputs, device)
    removed = lowest(bi, spec.n_prune_layers)
    remove_blocks(model, blocks, removed)
    return SparseOutcome(block_influence=bi, removed_layers=removed)
