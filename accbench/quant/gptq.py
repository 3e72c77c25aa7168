"""GPTQ: quantize a linear's weight column by column, pushing each column's rounding error onto the
columns not yet quantized, weighted by the inverse Hessian H = 2/n sum x x^T of the layer's inputs.

Options (`special`, llmc's names): `blocksize` columns updated together (lazy batch updates), `percdamp`
(H += percdamp * mean(diag H) * I before inverting), `actorder` (quantize columns by decreasing diag H),
`static_groups` (group scales from the original weight before any update; otherwise each group's scale
is taken from the partially updated weight when the group's first column is reached), and
`true_sequential` (within a block, quantize q/k/v, then o, then gate/up, then down, each on inputs
produced by the already-quantized earlier layers; otherwise every layer sees the float block's inputs).
`online_rotate` / `fp32_had` (QuaRot's run-time Hadamards, for a model QuaRot transformed and saved) are
installed before the first block, so the Hessians see rotated inputs; `chunk_num` (llmc's memory option for
the Hessian accumulation) changes nothing computed and is accepted as such.

The result is the dequantized weight, written into the layer. GPTQ has no equivalent transform: the
`transformed` position of a GPTQ run is the unchanged pretrained model (llmc instead reports the
error-compensated float weights there, which are not an equivalent model).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from pydantic import field_validator

from accbench.quant.blockwise import BlockInputs, forward_block, trace_block
from accbench.quant.codes import WeightCodes, codes_from_dequantized
from accbench.quant.floats import float_quant_dequant, float_scale
from accbench.quant.options import MethodOptions
from accbench.quant.quantizer import WeightQuantSpec, quant_dequant, row_range, to_rows, weight_qparams
from accbench.quant.spec import QuantSpec, QuantState

log = logging.getLogger("accbench.quant")


class GptqOptions(MethodOptions):
    """GPTQ's `quant.special` options (llmc's names and defaults; see the module docstring)."""

    actorder: bool = False
    static_groups: bool = False
    percdamp: float = 0.01
    blocksize: int = 128
    true_sequential: bool = True
    owq: bool = False
    online_rotate: bool = False  # QuaRot's run-time Hadamards on o_proj / down_proj inputs (quarot_comb_gptq)
    fp32_had: bool = False
    chunk_num: int = 1  # llmc accumulates the Hessian in this many token chunks: the same H, less memory

    @field_validator("chunk_num")
    @classmethod
    def _chunk_num(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"quant.special.chunk_num must be a positive integer, got {v!r}")
        return v

    @field_validator("percdamp")
    @classmethod
    def _percdamp(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"quant.special.percdamp must be in (0, 1], got {v!r}")
        return v

    @field_validator("blocksize")
    @classmethod
    def _blocksize(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"quant.special.blocksize must be a positive integer, got {v!r}")
        return v

    @field_validator("owq")
    @classmethod
    def _owq(cls, v: bool) -> bool:
        if v:
            raise ValueError("quant.special.owq (outlier-aware GPTQ) is an llmc option accbench does not support "
                             "yet; remove it")
        return v


class HessianAccumulator:
    """Running H = 2/n sum_i x_i x_i^T over the tokens a linear sees (llmc's and GPTQ's update rule)."""

    def __init__(self, columns: int, device: Any):
        self.H: torch.Tensor | None = torch.zeros(columns, columns, device=device, dtype=torch.float32)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        batch = x.shape[0] if x.dim() > 2 else 1
        x = x.reshape(-1, x.shape[-1]).float().t()
        self.H *= self.n / (self.n + batch)
        self.n += batch
        x = math.sqrt(2 / self.n) * x
        self.H.addmm_(x, x.t())

    def take(self) -> torch.Tensor:
        """Hand the matrix over (the accumulator forgets it), so its memory is freed as soon as the caller's is."""
        H, self.H = self.H, None
        return H


def _column_params(W: torch.Tensor, spec: WeightQuantSpec, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (scale held in the model's `dtype`, zero) of an integer grid, or the (lo, hi) range a float
    format scales from."""
    if isinstance(spec.bit, str):
        return row_range(to_rows(W.float(), spec.granularity, spec.group_size), spec.granularity == "per_tensor")
    return weight_qparams(W, spec, dtype=dtype)


def _column_qdq(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, spec: WeightQuantSpec,
                dtype: torch.dtype) -> torch.Tensor:
    """One column rounded with its row's parameters (`_column_params`); float formats saturate at their max,
    as QPyTorch does when the error feedback pushes a value past the group's range (scale held in `dtype`)."""
    if isinstance(spec.bit, str):
        return float_quant_dequant(w, a, b, spec.bit, dtype)
    return quant_dequant(w, a, b, spec.bit, spec.symmetric, spec.grid(), spec.round_zp)


@torch.no_grad()
def gptq_quantize_weight(W: torch.Tensor, H: "torch.Tensor | HessianAccumulator", spec: WeightQuantSpec,
                         blocksize: int = 128, percdamp: float = 0.01, actorder: bool = False,
                         static_groups: bool = False,
                         codes_out: "list[WeightCodes] | None" = None) -> tuple[torch.Tensor, float]:
    """Return (dequantized weight in W's dtype, sum of GPTQ's per-column losses); with `codes_out`, append the
    weight's integer codes and the scales GPTQ used (for the real-quant export; act-order with dynamic groups
    has no contiguous groups and is refused before it gets here).

    Longer than our usual 60 lines on purpose: it mirrors the published algorithm (Frantar et al. 2022,
    "GPTQ", Algorithm 1, with the reference implementation's lazy block updates, act-order and static
    groups) step by step, so it can be checked against the paper line by line.

    Memory: besides W's float copy (which becomes the result), at most two [cols, cols] matrices exist at
    once. Pass the HessianAccumulator itself (not .H) to let this function consume its matrix: then the
    Hessian is transformed in place and freed on the way instead of copied."""
    dtype = W.dtype
    H = H.take() if isinstance(H, HessianAccumulator) else H.clone()
    W = W.float().clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    per_group = spec.granularity == "per_group"
    if codes_out is not None and per_group and actorder and not static_groups:
        raise ValueError("act-order GPTQ without static_groups has no contiguous weight groups to export")
    gs = spec.group_size
    col_spec = replace(spec, granularity="per_channel")
    groups: list[tuple[torch.Tensor, torch.Tensor]] = []
    if per_group and static_groups:
        groups = [_column_params(W[:, g : g + gs], col_spec, dtype) for g in range(0, cols, gs)]
    elif not per_group:
        scale, zero = _column_params(W, spec, dtype)  # [rows, 1] or [1, 1], from the original weight
    perm = None
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm]
        H = H[:, perm]
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    L = torch.linalg.cholesky(H)
    del H
    Hinv = torch.cholesky_inverse(L)
    del L
    Hinv = torch.linalg.cholesky(Hinv, upper=True)

    loss = torch.zeros((), dtype=torch.float64, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if per_group:
                if static_groups:
                    scale, zero = groups[(int(perm[col]) if perm is not None else col) // gs]
                elif col % gs == 0:
                    # as the GPTQ reference: read from W, whose columns inside the current block do not yet
                    # hold this block's updates (identical when group_size divides blocksize)
                    scale, zero = _column_params(W[:, col : col + gs], col_spec, dtype)
                    groups.append((scale, zero))
            w, d = W1[:, i].clone(), Hinv1[i, i]
            q = _column_qdq(w.unsqueeze(1), scale, zero, spec, dtype).squeeze(1)
            W1[:, i] = q  # W1's column i is not read again: it holds the result from here on
            loss += ((w - q) ** 2 / d**2 / 2).sum()
            err = (w - q) / d
            W1[:, i + 1 :] -= err.unsqueeze(1) @ Hinv1[i, i + 1 :].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        W[:, i1:i2] = W1  # the block's quantized columns: W becomes the result, no separate Q
    if perm is not None:
        W = W[:, torch.argsort(perm)]
    if codes_out is not None:
        a = torch.cat([g[0] for g in groups], 1) if per_group else scale
        b = torch.cat([g[1] for g in groups], 1) if per_group else zero
        if isinstance(spec.bit, str):  # float formats: (a, b) is the range the scale comes from
            s, z = float_scale(a, b, spec.bit, dtype), None
        else:
            s, z = a, None if spec.symmetric else b
        codes_out.append(codes_from_dequantized(W, s, z, spec))
    return W.to(dtype), float(loss)


def check(model: Any, spec: QuantSpec) -> list[str]:
    """With online_rotate, the model must be one QuaRot rotates (its sizes need Hadamard matrices)."""
    from accbench.quant.quarot import layout_problems

    return layout_problems(model, True, False) if GptqOptions.of(spec).online_rotate else []


def prepare(model: Any, spec: QuantSpec, state: QuantState) -> None:
    """llmc's online_rotate for GPTQ (step 2 of quarot_comb_gptq): the QuaRot-transformed checkpoint's o_proj
    and down_proj read Hadamard-rotated inputs; install those rotations, so the Hessians see them too."""
    opts = GptqOptions.of(spec)
    if opts.online_rotate:
        from accbench.quant.quarot import install_online_rotation

        install_online_rotation(model, opts.fp32_had)


@torch.no_grad()
def quantize_block(prefix: str, block: nn.Module, inputs: BlockInputs, spec: QuantSpec, state: QuantState) -> None:
    """Quantize every linear of the block with GPTQ (sequentially by input group when true_sequential)."""
    opts = GptqOptions.of(spec)
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    if opts.true_sequential:
        order = [s.layers for s in trace_block(block, inputs.hidden[0], inputs.kwargs[0])]
    else:
        order = [list(linears)]
    for names in order:
        acc = {n: HessianAccumulator(linears[n].in_features, linears[n].weight.device) for n in names}
        handles = [linears[n].register_forward_pre_hook(lambda m, args, n=n: acc[n].add(args[0].detach()))
                   for n in names]
        try:
            forward_block(block, inputs)
        finally:
            for h in handles:
                h.remove()
        for n in names:
            lin = linears[n]
            wspec = spec.weight_for(prefix, n)  # None: ignored_layers / mix_bits keep it in float
            if wspec is None:
                acc.pop(n)
                continue
            codes: list = [] if state.codes is not None else None
            q, loss = gptq_quantize_weight(lin.weight.data, acc.pop(n), wspec, opts.blocksize, opts.percdamp,
                                           opts.actorder, opts.static_groups, codes)
            if codes:
                state.codes[prefix + n] = codes[0].cpu()
            lin.weight.data.copy_(q)
            state.losses[prefix + n] = loss
            log.info("gptq %s%s: error %.4g", prefix, n, loss)
            del q
