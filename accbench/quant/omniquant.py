"""OmniQuant (Shao et al. 2024): learnable weight clipping (LWC) and learnable equivalent transformation (LET),
trained block by block to make the quantized block reproduce the float block's output.

LWC (`lwc`, needs `quant.weight.calib_algo: learnable`): every linear's weight range per row or group is
(sigmoid(l) min, sigmoid(u) max) (symmetric: +-sigmoid(u) max|W|), l and u learned (init 4.0, so the ranges
start at 0.982 of min/max); the clip ratios sigmoid(.) stay in (0, 1). LET (`let`, for weight-activation
quantization; omniquant_let.py): per-channel scales between every norm or linear and the linears it feeds,
and between q and k, learned jointly. Training (llmc's `omni_train`): AdamW (`lwc_lr`, `let_lr`, `wd`), one
step per calibration batch, `epochs` passes; the loss is the MSE between the quantized block's output (weights
and, with `act`, inputs fake-quantized; rounding with a straight-through gradient) on the block's inputs and
the float model's output of the block (the float chain: block i's targets are the float model's, not the
quantized model's, hidden states); `aug_loss` adds the MSE to the float block's output on the quantized inputs.
The mean loss of every epoch is logged and recorded per block (results.json `quant.epoch_losses`).

After training the LET scales are folded into the weights (the `transformed` model) and the learned ranges
are handed to the fake-quant step as clip ranges (rounded there exactly as in training). `search_clip_init`
starts the clip factors at AWQ's searched clip ratios (q/k projections are then not clipped, as in llmc),
from `clip_path/clips.pt` (written by an AWQ run with `clip_version: v2`, `save_clip`, `clip_path`) when
`load_clip`, else searched here; `search_scale_init` starts the LET scales at AWQ's scales from
`scale_path/scales.pt` (AWQ's `save_scale`, `scale_path`), else at SmoothQuant's max|X|^a / max|W|^(1-a).
Training always runs in float32 (llmc's `deactive_amp: True`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import field_validator

from accbench.errors import AccbenchError
from accbench.quant.blockwise import BlockInputs, block_output, capture_calls, forward_block
from accbench.quant.omniquant_let import LetParams, act_quant_ste, fold_let, let_weights, ste_round
from accbench.quant.options import MethodOptions
from accbench.quant.quantizer import WeightQuantSpec, int_range, qparams, to_rows
from accbench.quant.spec import QuantSpec, QuantState

log = logging.getLogger("accbench.quant")
LWC_INIT = 4.0
QK_LEAVES = ("q_", "k_", "query", "key", "qkv")  # llmc's AWQ/OmniQuant clip search skips these


class OmniQuantOptions(MethodOptions):
    """OmniQuant's `quant.special` options (llmc's names; defaults from llmc's omniq_w_only.yml)."""

    epochs: int = 20
    lwc: bool = True
    let: bool = False
    lwc_lr: float = 0.01
    let_lr: float = 0.005
    aug_loss: bool = False
    wd: float = 0.0
    alpha: float = 0.5
    use_shift: bool = False
    deactive_amp: bool = True
    smooth_up_down: bool = False
    search_clip_init: bool = False
    load_clip: bool = False
    clip_path: str | None = None
    search_scale_init: bool = False
    scale_path: str | None = None

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"quant.special.epochs must be >= 0, got {v!r}")
        return v

    @field_validator("use_shift")
    @classmethod
    def _shift(cls, v: bool) -> bool:
        if v:
            raise ValueError("llmc's use_shift (LET channel shifts, for models with biases) is not supported yet; "
                             "set quant.special.use_shift: False")
        return v

    @field_validator("deactive_amp")
    @classmethod
    def _amp(cls, v: bool) -> bool:
        if not v:
            raise ValueError("accbench trains OmniQuant in float32 only: set quant.special.deactive_amp: True")
        return v

    def problems(self, weight: WeightQuantSpec) -> list[str]:
        out = []
        if isinstance(weight.bit, str):
            out.append("OmniQuant quantizes to integers: use an integer quant.weight.bit")
        if weight.granularity not in ("per_group", "per_channel"):
            out.append(f"OmniQuant's clipping is per_group or per_channel, not {weight.granularity}")
        if self.lwc and weight.calib_algo != "learnable":
            out.append("quant.special.lwc learns the weight ranges: set quant.weight.calib_algo: learnable "
                       "(as llmc, whose ranges stay min/max otherwise)")
        if self.epochs > 0 and not (self.lwc or self.let):
            out.append("OmniQuant trains nothing with lwc and let both off: set one of them, or epochs: 0")
        if self.load_clip and not (self.search_clip_init and self.clip_path):
            out.append("quant.special.load_clip needs search_clip_init: True and clip_path (the folder of an AWQ "
                       "run's clips.pt)")
        if self.search_scale_init and not (self.let and self.scale_path):
            out.append("quant.special.search_scale_init needs let: True and scale_path (the folder of an AWQ "
                       "run's scales.pt)")
        return out


def lwc_range(rows: torch.Tensor, up: torch.Tensor | None, low: torch.Tensor | None,
              symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The learned (lo, hi) of every row: the min/max range shrunk by sigmoid(factor) (llmc's learnable range)."""
    lo, hi = rows.amin(dim=-1, keepdim=True), rows.amax(dim=-1, keepdim=True)
    if up is None:
        return lo, hi
    if symmetric:
        a = torch.maximum(lo.abs(), hi.abs()) * torch.sigmoid(up)
        return -a, a
    return torch.sigmoid(low) * lo, torch.sigmoid(up) * hi


def lwc_fake_quantize(w: torch.Tensor, spec: WeightQuantSpec, up: torch.Tensor | None,
                      low: torch.Tensor | None) -> torch.Tensor:
    """Differentiable fake quantization of w with learned ranges: the quantizer's formulas with a
    straight-through round (the zero point is rounded without gradient, as in llmc)."""
    rows = to_rows(w, spec.granularity, spec.group_size)
    lo, hi = lwc_range(rows, up, low, spec.symmetric)
    qmin, qmax = int_range(int(spec.bit), spec.symmetric)
    scale, zero = qparams(lo, hi, int(spec.bit), spec.symmetric)
    zero = zero.detach()
    q = torch.clamp(ste_round(rows / scale) + zero, qmin, qmax)
    return ((q - zero) * scale).reshape(w.shape)


def _logit(ratio: torch.Tensor) -> torch.Tensor:
    # ratio 1 (no clipping chosen) would be +inf: kept just inside (0, 1) so the factor stays trainable
    r = torch.nan_to_num(ratio, nan=1.0).clamp(1e-4, 1 - 1e-4)
    return torch.log(r / (1 - r))


def _clip_factors(w: torch.Tensor, spec: WeightQuantSpec, lo: torch.Tensor,
                  hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(up, low) factors whose learnable range reproduces the clip range (lo, hi) of w's rows."""
    rows = to_rows(w.float(), spec.granularity, spec.group_size)
    olo, ohi = rows.amin(dim=-1, keepdim=True), rows.amax(dim=-1, keepdim=True)
    if spec.symmetric:
        return _logit(hi.to(w.device) / torch.maximum(olo.abs(), ohi.abs()).clamp(min=1e-5)), None
    return _logit(hi.to(w.device) / ohi), _logit(lo.to(w.device) / olo)


def _load(folder: str, name: str, what: str) -> dict[str, Any]:
    path = Path(folder) / name
    if not path.is_file():
        raise AccbenchError(f"OmniQuant: no {what} file {path}",
                            f"run the AWQ step first with save_{what[:-1]}: True and {what[:-1]}_path: {folder}")
    return torch.load(path, map_location="cpu")


def _init_lwc(prefix: str, block: nn.Module, inputs: BlockInputs, spec: QuantSpec, opts: OmniQuantOptions,
              lins: dict[str, nn.Linear]) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """The LWC parameters (up, low) per linear: 4.0 everywhere, or AWQ's clip ratios (search_clip_init)."""
    from accbench.quant.awq import search_clip

    w0 = {n: m.weight.detach() for n, m in lins.items()}
    params: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    if not opts.search_clip_init:
        for n, w in w0.items():
            rows = to_rows(w, spec.weight.granularity, spec.weight.group_size).shape[0]
            up = torch.full((rows, 1), LWC_INIT, device=w.device)
            params[n] = (up, None if spec.weight.symmetric else up.clone())
        return params
    clipped = [n for n in lins if not any(k in n.rsplit(".", 1)[-1] for k in QK_LEAVES)]
    if opts.load_clip:
        saved = _load(opts.clip_path or "", "clips.pt", "clips")
        missing = [prefix + n for n in clipped if prefix + n not in saved]
        if missing:
            raise AccbenchError(f"OmniQuant: {opts.clip_path}/clips.pt has no clip range for {missing[0]}",
                                "load clips saved by an AWQ run on the same model (clip_version: v2, save_clip)")
        ranges = {n: saved[prefix + n] for n in clipped}
    else:
        calls = capture_calls(block, inputs, clipped)
        awq_spec = replace(spec, special={"clip_sym": spec.weight.symmetric})
        ranges = {n: search_clip(w0[n], calls[n].inputs, awq_spec, spec.clip_tokens) for n in clipped}
    for n, (lo, hi) in ranges.items():
        params[n] = _clip_factors(w0[n], spec.weight, lo, hi)
    return params


def _float(obj: Any) -> Any:
    """Floating tensors nested in lists/tuples/dicts as float32 (the block trains in float32); others as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_float(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _float(v) for k, v in obj.items()}
    return obj


def _targets(block: nn.Module, q_in: BlockInputs, fp_in: BlockInputs,
             aug: bool) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """The float block's outputs on the float chain (the targets) and, for aug_loss, on the block's inputs."""
    return forward_block(block, fp_in), (forward_block(block, q_in) if aug else None)


def _train(prefix: str, block: nn.Module, inputs: BlockInputs, spec: QuantSpec, opts: OmniQuantOptions,
           lins: dict[str, nn.Linear], lwc: dict[str, list[nn.Parameter | None]], let: LetParams | None,
           targets: list[torch.Tensor], aug_targets: list[torch.Tensor] | None) -> list[float]:
    """AdamW over the calibration batches for `epochs` passes; returns the mean loss of each epoch.
    `lins`: the linears that are quantized (not ignored)."""
    groups = []
    if lwc:
        groups.append({"params": [p for pair in lwc.values() for p in pair if p is not None], "lr": opts.lwc_lr})
    if let is not None:
        groups.append({"params": let.parameters(), "lr": opts.let_lr})
    if not groups or opts.epochs == 0:
        return []
    opt = torch.optim.AdamW(groups, weight_decay=opts.wd)
    act = spec.act
    handles = [] if act is None else [
        m.register_forward_pre_hook(lambda mod, args: (act_quant_ste(args[0], act),) + tuple(args[1:]))
        for m in lins.values()]
    losses: list[float] = []
    try:
        for epoch in range(opts.epochs):
            total = 0.0
            for i, h in enumerate(inputs.hidden):
                out = _quant_forward(block, h, inputs.kwargs[i], spec, lins, lwc, let)
                loss = torch.nn.functional.mse_loss(out, targets[i])
                if aug_targets is not None:
                    loss = loss + torch.nn.functional.mse_loss(out, aug_targets[i])
                if not math.isfinite(loss.item()):
                    raise AccbenchError(f"OmniQuant: the loss of block {prefix.rstrip('.')} is not finite "
                                        f"(epoch {epoch})", "lower quant.special.lwc_lr / let_lr")
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            losses.append(total / len(inputs.hidden))
            log.info("omniquant %s epoch %d: loss %.6g", prefix.rstrip("."), epoch, losses[-1])
    finally:
        for hd in handles:
            hd.remove()
    return losses


def _quant_forward(block: nn.Module, h: torch.Tensor, kwargs: dict, spec: QuantSpec, lins: dict[str, nn.Linear],
                   lwc: dict[str, list[nn.Parameter | None]], let: LetParams | None) -> torch.Tensor:
    """The block's output with its LET-scaled weights fake-quantized through the learned ranges."""
    over = let_weights(block, let)
    for n in lins:
        up, low = lwc.get(n, (None, None))
        over[f"{n}.weight"] = lwc_fake_quantize(over[f"{n}.weight"], spec.weight, up, low)
    return block_output(torch.func.functional_call(block, over, (h,), kwargs, strict=False))


def transform_block(prefix: str, block: nn.Module, inputs: BlockInputs, spec: QuantSpec, state: QuantState) -> None:
    """Train LWC/LET for one block, fold LET into its weights and leave the learned clip ranges in `state`."""
    opts = OmniQuantOptions.of(spec)
    block_index = int(prefix.rstrip(".").rsplit(".", 1)[-1])
    model_prefix = prefix.rstrip(".").rsplit(".", 1)[0]
    dtype = next(block.parameters()).dtype
    flags = {n: p.requires_grad for n, p in block.named_parameters()}
    block.float().requires_grad_(False)
    try:
        q_in = BlockInputs(_float(inputs.hidden), _float(inputs.kwargs))
        fp_in = BlockInputs(state.fp_hidden, q_in.kwargs) if (state.fp_hidden is not None and spec.quant_out) else q_in
        targets, aug = _targets(block, q_in, fp_in, opts.aug_loss)
        lins = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)
                and not spec.is_ignored(model_prefix, block_index, n)}
        let = LetParams.build(prefix, block, fp_in, opts) if opts.let else None
        lwc: dict[str, list[nn.Parameter | None]] = {}
        if opts.lwc:
            with torch.no_grad(), _values_set(block, let_weights(block, let) if let is not None else {}):
                # the clip search and the LWC init see the LET-initialised weights
                lwc_init = _init_lwc(prefix, block, q_in, spec, opts, lins)
            lwc = {n: [nn.Parameter(u.float()), None if lo is None else nn.Parameter(lo.float())]
                   for n, (u, lo) in lwc_init.items()}
        with torch.enable_grad():
            state.epoch_losses[prefix.rstrip(".")] = _train(prefix, block, q_in, spec, opts, lins, lwc, let,
                                                           targets, aug)
        with torch.no_grad():
            if let is not None:
                fold_let(block, let)
            for n, (up, low) in lwc.items():
                w = lins[n].weight.float()
                rows = to_rows(w, spec.weight.granularity, spec.weight.group_size)
                lo, hi = lwc_range(rows, up.detach(), None if low is None else low.detach(), spec.weight.symmetric)
                state.clips[prefix + n] = (lo.cpu(), hi.cpu())
        if spec.quant_out:
            state.fp_hidden = targets
    finally:
        block.to(dtype)
        for n, p in block.named_parameters():
            p.requires_grad_(flags.get(n, False))


@contextlib.contextmanager
def _values_set(block: nn.Module, values: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily give the block the parameter values in `values` (parameter name -> tensor)."""
    params = dict(block.named_parameters())
    saved = {n: params[n].data for n in values}
    try:
        for n, v in values.items():
            params[n].data = v.detach()
        yield
    finally:
        for n, v in saved.items():
            params[n].data = v
