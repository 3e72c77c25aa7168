"""OmniQuant's learnable equivalent transformation (LET) and the straight-through pieces its training needs.

LET learns one positive per-channel scale s for every producer -> consumers pair `trace_block` finds (a norm
feeding q/k/v or gate/up, v_proj feeding o_proj; up_proj feeding down_proj only with `smooth_up_down`, as
llmc) and one for the q/k product: producer weight (rows of a linear, or a norm's weight) / s, consumers'
input columns * s; q_proj rows / s_qk, k_proj rows * s_qk (when q and k have the same shape, as llmc).
Scales are truncated to |s| >= 0.01 in the forward pass with a straight-through gradient (llmc's
TruncateFunction). Init (llmc / the paper): s = max|X|^alpha / max|W|^(1 - alpha) (clamped to >= 1e-5) with
max|X| per channel of the input over the calibration tokens of the float model and max|W| over the
consumers' columns (the paper takes |W|; llmc takes the signed max of one consumer), or AWQ's saved
scale (`search_scale_init`), and s_qk = 1. Folding the norm/linear scales leaves the model's function
unchanged; the q/k scale is applied before the rotary embedding (as llmc and the reference code), so with RoPE
the folded model is close to, not exactly, the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from accbench.errors import AccbenchError
from accbench.quant.blockwise import BlockInputs, forward_block, trace_block
from accbench.quant.quantizer import ActQuantSpec, int_range, qparams, row_range

if TYPE_CHECKING:
    from accbench.quant.omniquant import OmniQuantOptions

TRUNCATE = 1e-2


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, identity gradient (llmc's `ste: True`)."""
    return (x.round() - x).detach() + x


def truncate(s: torch.Tensor) -> torch.Tensor:
    """|s| raised to at least 0.01 (sign kept) with a straight-through gradient."""
    t = torch.where(s.abs() < TRUNCATE, torch.sign(s) * TRUNCATE, s)
    return s + (t - s).detach()


def act_quant_ste(x: torch.Tensor, spec: ActQuantSpec) -> torch.Tensor:
    """Dynamic activation fake quantization (the quantizer's formulas) with a straight-through round."""
    rows = x.reshape(-1, x.shape[-1])
    lo, hi = row_range(rows, spec.granularity == "per_tensor")
    scale, zero = qparams(lo, hi, int(spec.bit), spec.symmetric)
    qmin, qmax = int_range(int(spec.bit), spec.symmetric)
    q = torch.clamp(ste_round(rows / scale) + zero.detach(), qmin, qmax)
    return ((q - zero.detach()) * scale).reshape(x.shape)


@dataclass
class LetPair:
    prev: str
    prev_kind: str  # "norm" | "linear"
    layers: list[str]
    scale: nn.Parameter


@dataclass
class LetParams:
    """The LET scales of one block (names relative to the block)."""

    pairs: list[LetPair]
    qk: tuple[str, str, nn.Parameter] | None

    def parameters(self) -> list[nn.Parameter]:
        return [p.scale for p in self.pairs] + ([self.qk[2]] if self.qk else [])

    @classmethod
    def build(cls, prefix: str, block: nn.Module, fp_inputs: BlockInputs, opts: OmniQuantOptions) -> LetParams:
        mods = dict(block.named_modules())
        subsets = [s for s in trace_block(block, fp_inputs.hidden[0], fp_inputs.kwargs[0]) if s.prev is not None
                   and (opts.smooth_up_down or s.layers[0].rsplit(".", 1)[-1] != "down_proj")]
        x_max = _input_absmax(block, fp_inputs, [s.layers[0] for s in subsets])
        saved = _load_scales(opts.scale_path or "") if opts.search_scale_init else None
        pairs = []
        for s in subsets:
            if saved is not None:
                if prefix + s.prev not in saved:
                    raise AccbenchError(f"OmniQuant: {opts.scale_path}/scales.pt has no scale for {prefix}{s.prev}",
                                        "load scales saved by an AWQ run on the same model (save_scale)")
                init = saved[prefix + s.prev].float().clamp(min=1e-5)
            else:
                w_max = torch.stack([mods[n].weight.detach().abs().amax(0).float() for n in s.layers]).amax(0)
                init = (x_max[s.layers[0]].pow(opts.alpha) / w_max.clamp(min=1e-5).pow(1 - opts.alpha)).clamp(min=1e-5)
            dev = mods[s.layers[0]].weight.device
            pairs.append(LetPair(s.prev, s.prev_kind, list(s.layers), nn.Parameter(init.to(dev))))
        return cls(pairs, _qk_pair(block, subsets))


def _qk_pair(block: nn.Module, subsets: list) -> tuple[str, str, nn.Parameter] | None:
    mods = dict(block.named_modules())
    for s in subsets:
        q = [n for n in s.layers if n.rsplit(".", 1)[-1] == "q_proj"]
        k = [n for n in s.layers if n.rsplit(".", 1)[-1] == "k_proj"]
        if q and k and mods[q[0]].weight.shape == mods[k[0]].weight.shape:
            w = mods[q[0]].weight
            return q[0], k[0], nn.Parameter(torch.ones(w.shape[0], device=w.device))
    return None


def _load_scales(folder: str) -> dict[str, Any]:
    path = Path(folder) / "scales.pt"
    if not path.is_file():
        raise AccbenchError(f"OmniQuant: no scales file {path}",
                            f"run the AWQ step first with save_scale: True and scale_path: {folder}")
    return torch.load(path, map_location="cpu")


def _input_absmax(block: nn.Module, inputs: BlockInputs, names: list[str]) -> dict[str, torch.Tensor]:
    """max |x| per input channel of each named linear over all calibration tokens."""
    mods = dict(block.named_modules())
    out: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(mod: Any, args: tuple) -> None:
            m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
            out[name] = m if name not in out else torch.maximum(out[name], m)
        return fn

    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        forward_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    return out


def let_weights(block: nn.Module, let: LetParams | None) -> dict[str, torch.Tensor]:
    """The block's linear weights (and the norm weights / biases LET changes) under the LET scales, by
    parameter name ("self_attn.q_proj.weight"); differentiable in the scales."""
    mods = dict(block.named_modules())
    out = {f"{n}.weight": m.weight for n, m in mods.items() if isinstance(m, nn.Linear)}
    if let is None:
        return out

    def get(name: str) -> torch.Tensor | None:
        return out.get(name, getattr(mods[name.rsplit(".", 1)[0]], name.rsplit(".", 1)[1], None))

    for p in let.pairs:
        s = truncate(p.scale)
        row = s if p.prev_kind == "norm" else s.view(-1, 1)
        out[f"{p.prev}.weight"] = get(f"{p.prev}.weight") / row
        bias = get(f"{p.prev}.bias")
        if bias is not None:
            out[f"{p.prev}.bias"] = bias / s
        for n in p.layers:
            out[f"{n}.weight"] = out[f"{n}.weight"] * s.view(1, -1)
    if let.qk is not None:
        q, k, param = let.qk
        s = truncate(param)
        out[f"{q}.weight"] = out[f"{q}.weight"] / s.view(-1, 1)
        out[f"{k}.weight"] = out[f"{k}.weight"] * s.view(-1, 1)
        for name, f in ((f"{q}.bias", 1 / s), (f"{k}.bias", s)):
            bias = get(name)
            if bias is not None:
                out[name] = bias * f
    return out


@torch.no_grad()
def fold_let(block: nn.Module, let: LetParams) -> None:
    """Write the LET-scaled weights into the block (the `transformed` model)."""
    new = {k: v.detach().clone() for k, v in let_weights(block, let).items()}
    params = dict(block.named_parameters())
    for k, v in new.items():
        params[k].data.copy_(v)
