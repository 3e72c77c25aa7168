"""HQQ (Badri & Shaji 2023, "Half-Quadratic Quantization"): calibration-free optimisation of the zero point.

For every group of weights W (b bits, asymmetric) HQQ starts from the min/max scale s and zero z
(s = (max - min) / (2^b - 1), z = -min / s, integer-rounded when `round_zp`) and minimises the sparsity-
promoting error |W - Q^-1(Q(W))|_p^p (p = `lp_norm` < 1) by half-quadratic splitting, iterating:

  W_q = clamp(round(W / s + z), 0, 2^b - 1)          quantize with the current zero
  W_r = (W_q - z) s                                   dequantize
  W_e = shrink_p(W - W_r, beta)                       generalized soft-thresholding:
        sign(x) relu(|x| - |x|^(p-1) / beta)          (|x| - 1/beta for p = 1)
  z   = mean_group(W_q - (W - W_e) / s)               closed-form zero update
  beta = kappa * beta

for `iters` steps, stopping after the first step whose error mean|W - W_r| (over the whole tensor) does
not improve; the scale stays at its min/max value. These are llmc's `HQQ` and the reference hqq code's
`optimize_weights_proximal_legacy` step for step, including that the zero returned is the one computed in
the step that stopped (one update past the best error). beta grows by kappa every step, as in the hqq library
(llmc's shrink reads the initial beta, so there kappa has no effect).

`axis` (llmc's name): 1 groups `group_size` consecutive input columns of each output row (as every other
method here); 0 (llmc's config) groups `group_size` consecutive output rows of each input column (llmc
transposes the weight). `quant.weight.round_zp: False` (llmc's HQQ config) keeps the optimised zero a float,
so q = clamp(round(W / s + z)); with `round_zp: True` the zero is rounded to an integer in the grid after the
optimisation (llmc would instead add a float zero after rounding, which leaves the grid unshifted).
No calibration data, no equivalent transform: `transformed` is the unchanged model.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from pydantic import field_validator

from accbench.errors import AccbenchError
from accbench.quant.codes import WeightCodes
from accbench.quant.options import MethodOptions
from accbench.quant.quantizer import WeightQuantSpec, int_range, qparams, signed_offset, to_rows
from accbench.quant.spec import QuantSpec, QuantState

log = logging.getLogger("accbench.quant")


class HqqOptions(MethodOptions):
    """HQQ's `quant.special` options (llmc's names; defaults from llmc's hqq_w_only.yml)."""

    axis: int = 0
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iters: int = 20

    @field_validator("axis")
    @classmethod
    def _axis(cls, v: int) -> int:
        if v not in (0, 1):
            raise ValueError(f"quant.special.axis must be 0 (groups along output rows, llmc's default) or 1 "
                             f"(along input columns), got {v!r}")
        return v

    @field_validator("lp_norm")
    @classmethod
    def _lp(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"quant.special.lp_norm must be in (0, 1], got {v!r}")
        return v

    @field_validator("beta", "kappa")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"quant.special.beta and kappa must be positive, got {v!r}")
        return v

    @field_validator("iters")
    @classmethod
    def _iters(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"quant.special.iters must be >= 0, got {v!r}")
        return v

    def problems(self, weight: WeightQuantSpec) -> list[str]:
        out = []
        if isinstance(weight.bit, str):
            out.append("HQQ quantizes to integers: use an integer quant.weight.bit")
        if weight.symmetric:
            out.append("HQQ optimises the zero point: set quant.weight.symmetric: False")
        if weight.granularity not in ("per_group", "per_channel"):
            out.append(f"HQQ works per_group or per_channel, not {weight.granularity}")
        return out


def shrink(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The generalized soft-thresholding operator of the l_p proximal step (HQQ eq. 6)."""
    if p == 1:
        return torch.sign(x) * torch.relu(x.abs() - 1.0 / beta)
    return torch.sign(x) * torch.relu(x.abs() - x.abs().pow(p - 1) / beta)


@torch.no_grad()
def optimize_zero(rows: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int,
                  opts: HqqOptions) -> tuple[torch.Tensor, int]:
    """HQQ's proximal iterations on `rows` (one group per row); returns (zero, iterations run)."""
    inv = 1.0 / scale
    beta, best = opts.beta, 1e4
    for i in range(opts.iters):
        w_q = torch.round(rows * inv + zero).clamp(qmin, qmax)
        w_r = (w_q - zero) / inv
        w_e = shrink(rows - w_r, beta, opts.lp_norm)
        zero = torch.mean(w_q - (rows - w_e) * inv, dim=-1, keepdim=True)
        beta *= opts.kappa
        err = float((rows - w_r).abs().mean())
        if err < best:
            best = err
        else:
            return zero, i + 1
    return zero, opts.iters


def _hqq_grid(w: torch.Tensor, spec: WeightQuantSpec, opts: HqqOptions,
              round_zp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, scale, zero) per row of HQQ's groups (of w.t() with axis 0): llmc's range 0..2^b-1, the scale held in
    w's dtype (scale_dtype.py), the zero optimised."""
    t = w.float().t() if opts.axis == 0 else w.float()
    rows = to_rows(t, spec.granularity, spec.group_size)
    qmin, qmax = int_range(int(spec.bit), False)
    lo, hi = rows.amin(dim=-1, keepdim=True), rows.amax(dim=-1, keepdim=True)
    scale, zero = qparams(lo, hi, int(spec.bit), False, round_zp=round_zp, dtype=w.dtype)  # min/max start
    zero, _ = optimize_zero(rows, scale, zero, qmin, qmax, opts)
    if round_zp:
        zero = torch.round(zero).clamp(qmin, qmax)
    return torch.clamp(torch.round(rows / scale + zero), qmin, qmax), scale, zero


def hqq_fake_quantize(w: torch.Tensor, spec: WeightQuantSpec, opts: HqqOptions, round_zp: bool) -> torch.Tensor:
    """The [out, in] weight quantized with HQQ's optimised zero points and dequantized, in w's dtype."""
    q, scale, zero = _hqq_grid(w, spec, opts, round_zp)
    out = ((q - zero) * scale).reshape(w.shape[::-1] if opts.axis == 0 else w.shape)
    return (out.t() if opts.axis == 0 else out).to(w.dtype)


def hqq_codes(w: torch.Tensor, spec: WeightQuantSpec, opts: HqqOptions) -> WeightCodes:
    """The codes `hqq_fake_quantize(w, spec, opts, True)` rounds to, with axis 1 (groups of input columns, the
    real-quant export's layout; the export refuses axis 0 and a float zero point)."""
    assert opts.axis == 1, "HQQ's codes are kept with axis 1 only"
    q, scale, zero = _hqq_grid(w, spec, opts, True)
    groups = (w.shape[0], -1)
    return WeightCodes((q - signed_offset(spec.bit, spec.symmetric)).reshape(w.shape).to(torch.int8), scale.reshape(groups),
                       zero.reshape(groups), spec)


def quantize_block(prefix: str, block: nn.Module, spec: QuantSpec, state: QuantState) -> None:
    """Fake-quantize the block's linear weights in place with HQQ (no calibration data); with `state.codes`, keep
    the codes for the real-quant export (which takes axis 1 and an integer zero point only)."""
    opts = HqqOptions.of(spec)
    for name, lin in block.named_modules():
        if not isinstance(lin, nn.Linear):
            continue
        if opts.axis == 0 and spec.weight.granularity == "per_group" and lin.out_features % spec.weight.group_size:
            raise AccbenchError(f"HQQ with axis 0 groups output rows: group_size {spec.weight.group_size} does not "
                                f"divide the {lin.out_features} outputs of {prefix}{name}",
                                "use quant.special.axis: 1 or a group_size that divides every layer's outputs")
        if state.codes is None:
            lin.weight.data.copy_(hqq_fake_quantize(lin.weight.data, spec.weight, opts, spec.weight.round_zp))
            continue
        codes = hqq_codes(lin.weight.data, spec.weight, opts)
        lin.weight.data.copy_(codes.dequantize().to(lin.weight.dtype))
        state.codes[prefix + name] = codes.cpu()
