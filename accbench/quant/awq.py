"""AWQ: activation-aware per-channel scaling searched block by block, optional weight-clipping search.

For each group of linears sharing an input (q/k/v after input_layernorm, o_proj after v_proj,
gate/up after post_attention_layernorm, down_proj after up_proj) the search tries `n_grid` ratios r:
  v2 (default): s = mean|X|^r;   v1: s = mean|X|^r / mean_rows(|W| / max|W| per group)^(1 - r)
clamped to >= 1e-4 and normalised by sqrt(max(s) * min(s)). For each s the layers' weights are
multiplied by s and fake-quantized, the input divided by s (and fake-quantized when `act` is set),
and the output of the module that consumes the input (self_attn, mlp, or the linear itself) is
compared with the float output (MSE over all calibration tokens). The best s is folded into the
producer (norm or linear), so the `transformed` model equals the original in exact arithmetic.

`weight_clip` then searches, per output row and group, a shrink of the weight range (10 steps of
1/20, down to half) minimising the error of X W^T on up to `calib.seq_len` sampled tokens; q/k
projections are skipped (as llmc). `clip_version: v1` clamps the weights in place (llmc's default: the
`transformed` model then includes the clipping); `v2` keeps the ranges and applies them only when
fake-quantizing, so `transformed` stays equivalent. `clip_sym` searches a symmetric range.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Literal

import torch
import torch.nn as nn
from pydantic import field_validator

from accbench.quant.blockwise import BlockInputs, ModuleCalls, Subset, capture_calls, replay, trace_block
from accbench.quant.options import MethodOptions
from accbench.quant.quantizer import (ActQuantSpec, WeightQuantSpec, fake_quantize_act_dynamic, fake_quantize_weight,
                                      to_rows)
from accbench.quant.scaling import apply_scale
from accbench.quant.spec import QuantSpec, QuantState

log = logging.getLogger("accbench.quant")


class AwqOptions(MethodOptions):
    """AWQ's `quant.special` options (llmc's names and defaults; see the module docstring)."""

    trans: bool = True
    trans_version: Literal["v1", "v2"] = "v2"
    weight_clip: bool = False
    clip_sym: bool = True
    n_grid: int = 20
    save_scale: bool = False
    save_clip: bool = False
    clip_version: Literal["v1", "v2"] = "v1"
    awq_bs: int | None = None
    scale_path: str | None = None  # where save_scale writes scales.pt (OmniQuant's search_scale_init reads it)
    clip_path: str | None = None  # where save_clip writes clips.pt (OmniQuant's load_clip reads it)

    @field_validator("n_grid")
    @classmethod
    def _n_grid(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"quant.special.n_grid must be a positive integer, got {v!r}")
        return v

    def saved_state(self) -> dict[str, str | None]:
        return {name: folder for name, wanted, folder in (("scales", self.save_scale, self.scale_path),
                                                          ("clips", self.save_clip, self.clip_path)) if wanted}

    def problems(self, weight: WeightQuantSpec) -> list[str]:
        if self.weight_clip and weight.granularity == "per_tensor":
            return ["quant.special.weight_clip: llmc's AWQ clip search with per_tensor weights is not supported yet; set "
                    "weight_clip: false (the search runs per row or group)"]
        return []


def _subset_output(modules: dict, s: Subset, calls: dict[str, ModuleCalls], i: int, x: torch.Tensor,
                   use_inspect: bool) -> torch.Tensor:
    if use_inspect:
        return replay(modules[s.inspect], calls[s.inspect].templates[i], x)
    return torch.cat([modules[n](x) for n in s.layers], dim=-1)


def _weight_mean(layers: list[nn.Linear], weight: WeightQuantSpec) -> torch.Tensor:
    """AWQ v1's weight term: |W| normalised by its group max, averaged over all output rows."""
    w = torch.cat([lin.weight.float() for lin in layers], dim=0)
    wspec = weight if weight.granularity == "per_group" else replace(weight, granularity="per_channel")
    rows = to_rows(w, wspec.granularity, wspec.group_size).abs()
    rows = rows / rows.amax(dim=1, keepdim=True).clamp(min=1e-8)
    return rows.reshape(w.shape).mean(0)


@torch.no_grad()
def search_scale(modules: dict, s: Subset, calls: dict[str, ModuleCalls], spec: QuantSpec,
                 block_prefix: str = "blocks.0.", masks: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Grid-search AWQ's per-channel scale for one subset; return the best scale (float32). Each linear is
    rounded with its own spec (mix_bits; a float one is left as is), the input with the first linear's act.
    Padded calibration batches (`masks`, 1 at real tokens) leave their padding out of the output error, as llmc
    does."""
    opts = AwqOptions.of(spec)
    layers = [modules[n] for n in s.layers]
    wspecs = [spec.mix_weight(block_prefix, n) for n in s.layers]
    act = spec.mix_act(block_prefix, s.layers[0])
    xs = calls[s.layers[0]].inputs
    use_inspect = s.inspect in calls and calls[s.inspect].inputs and calls[s.inspect].inputs[0] is xs[0]
    n_tok = sum(x.reshape(-1, x.shape[-1]).shape[0] for x in xs)
    x_mean = sum(x.abs().reshape(-1, x.shape[-1]).float().sum(0) for x in xs) / n_tok
    w_mean = _weight_mean(layers, wspecs[0] or spec.weight) if opts.trans_version == "v1" else None
    org_out = [_subset_output(modules, s, calls, i, x, use_inspect) for i, x in enumerate(xs)]
    n_samples = sum(x.shape[0] for x in xs)
    n_grid = opts.n_grid
    best, best_scale = float("inf"), None
    for g in range(n_grid):
        r = g / n_grid
        scale = x_mean.pow(r) if w_mean is None else x_mean.pow(r) / w_mean.clamp(min=1e-8).pow(1 - r)
        scale = scale.clamp(min=1e-4)
        scale = scale / (scale.max() * scale.min()).sqrt()
        saved = [lin.weight.data for lin in layers]
        try:
            for lin, wspec in zip(layers, wspecs):
                scaled = (lin.weight.float() * scale.view(1, -1)).to(lin.weight.dtype)
                lin.weight.data = scaled if wspec is None else fake_quantize_weight(scaled, wspec)
            loss = 0.0
            for i, x in enumerate(xs):
                xt = (x.float() / scale).to(x.dtype)
                if act is not None:
                    xt = fake_quantize_act_dynamic(xt, act)
                out = _subset_output(modules, s, calls, i, xt, use_inspect)
                diff = org_out[i] - out
                mask = masks[i] if masks else None
                if mask is not None and diff.shape[1] == mask.shape[-1]:
                    diff = diff * mask.unsqueeze(-1).to(diff.dtype)
                loss += x.shape[0] / n_samples * diff.float().pow(2).mean().item()
        finally:
            for lin, w in zip(layers, saved):
                lin.weight.data = w
        if loss < best:
            best, best_scale = loss, scale
    log.info("awq %s <- %s: best ratio error %.3g", s.layers, s.prev, best)
    return best_scale


def _real_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of `x` ([tokens, channels]) at real tokens of a padded batch (all rows when unpadded)."""
    if mask is None or mask.numel() != x.shape[0]:
        return x
    return x[mask.flatten().bool().to(x.device)]


@torch.no_grad()
def search_clip(w: torch.Tensor, xs: list[torch.Tensor], spec: QuantSpec, n_sample_token: int,
                n_grid: int = 20, max_shrink: float = 0.5, weight: WeightQuantSpec | None = None,
                act: ActQuantSpec | None | bool = True,
                masks: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best (lo, hi) per output row and group, shaped as the rows of `to_rows(w)` ([rows, 1]); `weight` / `act`
    (this linear's, under mix_bits) default to spec.weight / spec.act; the padding of padded batches (`masks`) is
    left out of the tokens searched on, as llmc does."""
    weight = weight or spec.weight
    act = spec.act if act is True else act
    oc, ic = w.shape
    gs = weight.group_size if weight.granularity == "per_group" else ic
    clip_sym = AwqOptions.of(spec).clip_sym
    x = torch.cat([_real_tokens(t.reshape(-1, ic), masks[i] if masks else None) for i, t in enumerate(xs)],
                  dim=0).float()
    x = x[0:: max(1, x.shape[0] // n_sample_token)]
    if act is not None:
        x = fake_quantize_act_dynamic(x, act)
    x = x.reshape(x.shape[0], -1, gs)  # [tokens, groups, gs]
    per_row = replace(weight, granularity="per_channel")
    best_lo, best_hi = [], []
    step = 256
    for o in range(0, oc, step):
        wb = w[o : o + step].float().reshape(-1, ic // gs, gs)  # [rows, groups, gs]
        # per-group partial dot products x_g . w_g as one batched matmul: [rows, tokens, groups]
        org_out = torch.einsum("tgk,rgk->rtg", x, wb)
        org_hi = wb.abs().amax(-1, keepdim=True) if clip_sym else wb.amax(-1, keepdim=True)
        org_lo = wb.amin(-1, keepdim=True)
        b_hi, b_lo = org_hi.clone(), org_lo.clone()
        min_err = torch.full_like(org_hi, float("inf"))
        for i in range(int(max_shrink * n_grid)):
            hi = org_hi * (1 - i / n_grid)
            lo = -hi if clip_sym else org_lo * (1 - i / n_grid)
            cw = torch.clamp(wb, lo, hi)
            qw = fake_quantize_weight(cw.reshape(-1, gs), per_row).reshape(cw.shape)
            err = (torch.einsum("tgk,rgk->rtg", x, qw) - org_out).pow(2).mean(dim=1).unsqueeze(-1)
            better = err < min_err
            min_err = torch.where(better, err, min_err)
            b_hi = torch.where(better, hi, b_hi)
            b_lo = torch.where(better, lo, b_lo)
        # the range the clamped weights actually span (what v1's min/max of the clamped tensor sees)
        best_hi.append(torch.minimum(b_hi, wb.amax(-1, keepdim=True)).reshape(-1, 1))
        best_lo.append(torch.maximum(b_lo, wb.amin(-1, keepdim=True)).reshape(-1, 1))
    return torch.cat(best_lo), torch.cat(best_hi)


@torch.no_grad()
def transform_block(prefix: str, block: nn.Module, inputs: BlockInputs, spec: QuantSpec, state: QuantState) -> None:
    opts = AwqOptions.of(spec)
    modules = dict(block.named_modules())
    subsets = trace_block(block, inputs.hidden[0], inputs.kwargs[0])
    wanted = sorted({n for s in subsets for n in s.layers} | {s.inspect for s in subsets if s.inspect})
    calls = capture_calls(block, inputs, wanted)
    if opts.trans:
        for s in subsets:
            if s.prev is None or spec.mix_weight(prefix, s.layers[0]) is None:
                continue  # mix_bits: a subset whose first linear stays float is not scaled (llmc)
            scale = search_scale(modules, s, calls, spec, prefix, inputs.token_masks)
            apply_scale(modules[s.prev], [modules[n] for n in s.layers], scale)
            state.scales[prefix + s.prev] = scale.cpu()
            old = calls[s.layers[0]].inputs
            new = [(x.float() / scale).to(x.dtype) for x in old]
            for name in set(s.layers) | {s.inspect}:
                if name in calls and calls[name].inputs and calls[name].inputs[0] is old[0]:
                    calls[name].inputs = new
    if opts.weight_clip:
        for s in subsets:
            for name in s.layers:
                leaf = name.rsplit(".", 1)[-1]
                if any(k in leaf for k in ("q_", "k_", "query", "key", "qkv")):
                    continue
                lin = modules[name]
                wspec = spec.mix_weight(prefix, name)
                if wspec is None:
                    continue  # mix_bits: a float linear is not clipped (llmc)
                lo, hi = search_clip(lin.weight.data, calls[name].inputs, spec, spec.clip_tokens, weight=wspec,
                                     act=spec.mix_act(prefix, name), masks=inputs.token_masks)
                if opts.clip_version == "v1":
                    rows = to_rows(lin.weight.data.float(), wspec.granularity
                                   if wspec.granularity == "per_group" else "per_channel", wspec.group_size)
                    lin.weight.data = torch.clamp(rows, lo, hi).reshape(lin.weight.shape).to(lin.weight.dtype)
                else:
                    state.clips[prefix + name] = (lo.cpu(), hi.cpu())
