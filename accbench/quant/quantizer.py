"""Integer fake quantization of weights and activations, with llmc's (and AutoAWQ's) conventions.

Fake quantization rounds a float tensor onto an integer grid and maps it straight back to floats, so
the model keeps running in floating point but only holds values a b-bit kernel could represent.

Conventions (the same formulas as llmc's `Quantizer` and AutoAWQ's `pseudo_quantize_tensor`):

- symmetric, b bits:  qmin = -2^(b-1), qmax = 2^(b-1) - 1,
  scale = max(|min|, |max|).clamp(1e-5) / qmax, zero = 0.
- asymmetric, b bits: qmin = 0, qmax = 2^b - 1,
  scale = (max - min).clamp(1e-5) / qmax, zero = clamp(-round(min / scale), qmin, qmax).
- q = clamp(round(x / scale) + zero, qmin, qmax); x_hat = (q - zero) * scale.
  `round` is torch.round: half to even.
- The range is the tensor's own min and max; zero is NOT forced into it. A group whose values are all
  positive therefore gets zero clamped to 0 and its top end clipped (llmc and AutoAWQ behave the same;
  we keep it so that numbers match theirs). Weight groups in real models straddle zero.

Granularity: `per_tensor` (one scale), `per_channel` (one per output row of a weight), `per_group`
(one per `group_size` consecutive input columns of each row), `per_block` (symmetric, one per
`block_size` x `block_size` tile of the weight, llmc's absmax per block), and for activations `per_token` (one per
row of the flattened [tokens, features] input). `calib_algo: mse` searches a shrink factor p of the
range per row: p = 1 - i/100 for i < 80, minimising sum |x_hat - x|^2.4 (llmc's grid). `calib_algo: learnable`
(llmc's learnable clipping) is the min/max range here; OmniQuant, and AWQ's clip_version v2, hand the learned or
searched ranges in as `clip`.

llmc's explicit integer grid `int_range: [qmin, qmax]` replaces the grid bit and symmetric imply (symmetric:
scale = absmax / qmax; asymmetric: scale = (max - min) / (qmax - qmin), zero = clamp(qmin - round(min / scale))).
`round_zp: false` keeps the zero point unrounded and unclamped, zero = qmin - min / scale, and rounds after adding
it: q = clamp(round(x / scale + zero), qmin, qmax) (llmc's IntegerQuantizer).

Float formats (llmc's `quant_type: float-quant`; e4m3, e5m2, e2m1, e3m2, e4m7): see floats.py. Ranges and
granularities as for integers. Two-level W4A8 weights (`bit: 48`): w48.py. Static histogram calibration of
activation ranges (`calib_algo: static_hist`): histogram.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from accbench.quant.floats import check_float_format, float_quant_dequant
from accbench.quant.scale_dtype import held

if TYPE_CHECKING:
    from accbench.quant.w48 import Weight48Spec

WEIGHT_GRANULARITIES = ("per_tensor", "per_channel", "per_group", "per_block")
ACT_GRANULARITIES = ("per_token", "per_tensor", "per_group")
ACT_CALIB_ALGOS = ("minmax", "static_hist")
MSE_GRID, MSE_MAXSHRINK, MSE_NORM = 100, 0.8, 2.4


@dataclass(frozen=True)
class WeightQuantSpec:
    """How weights are quantized: bits, symmetry, granularity, range search."""

    bit: int | str = 4
    symmetric: bool = False
    granularity: str = "per_group"
    group_size: int = 128
    calib_algo: str = "minmax"
    block_size: int = 128
    int_range: tuple[int, int] | None = None  # llmc's explicit integer grid (qmin, qmax)
    round_zp: bool = True  # llmc: False keeps the asymmetric zero point unrounded
    w48: Weight48Spec | None = None  # llmc's two-level W4A8 weights (bit 48)

    def grid(self) -> tuple[int, int]:
        """(qmin, qmax) of the integer grid: int_range when given, else what bit and symmetric imply."""
        return self.int_range if self.int_range is not None else int_range(int(self.bit), self.symmetric)

    def __post_init__(self) -> None:
        if self.int_range is not None and (isinstance(self.bit, str) or self.int_range[0] >= self.int_range[1]):
            raise ValueError(f"int_range {list(self.int_range)} must be [qmin, qmax] with qmin < qmax, on integer weights")
        if self.granularity == "per_block" and (not self.symmetric or self.block_size <= 0):
            raise ValueError("per_block weights are symmetric with a positive block_size (llmc's absmax per block)")
        if isinstance(self.bit, str):
            check_float_format(self.bit, "weight")
            if self.calib_algo != "minmax":
                raise ValueError("float weights take calib_algo minmax")
        elif (self.bit == 48) != (self.w48 is not None):
            raise ValueError("bit 48 (two-level W4A8 weights) needs the bit4 and bit8 settings, and only it takes them")
        elif not 2 <= self.bit <= 8 and self.bit != 48:
            raise ValueError(f"weight bit must be 2..8, got {self.bit}")
        if self.granularity not in WEIGHT_GRANULARITIES:
            raise ValueError(f"unknown weight granularity {self.granularity!r}; valid: {WEIGHT_GRANULARITIES}")
        if self.granularity == "per_group" and self.group_size <= 0:
            raise ValueError("per_group needs a positive group_size")
        if self.calib_algo not in ("minmax", "mse", "learnable"):
            raise ValueError(f"unknown calib_algo {self.calib_algo!r}; valid: minmax, mse, learnable")


@dataclass(frozen=True)
class ActQuantSpec:
    """How linear-layer inputs are quantized: per token on the fly, or per tensor with a calibrated range."""

    bit: int | str = 8
    symmetric: bool = True
    granularity: str = "per_token"
    static: bool = False
    group_size: int = 128  # per_group: consecutive features of one token sharing a scale
    calib_algo: str = "minmax"  # static ranges: minmax over the calibration tokens, or llmc's static_hist

    def __post_init__(self) -> None:
        if isinstance(self.bit, str):
            check_float_format(self.bit, "act")
        elif not 2 <= self.bit <= 8:
            raise ValueError(f"act bit must be 2..8, got {self.bit}")
        if self.granularity not in ACT_GRANULARITIES:
            raise ValueError(f"unknown act granularity {self.granularity!r}; valid: {ACT_GRANULARITIES}")
        if self.static and self.granularity != "per_tensor":
            raise ValueError("static activation quantization is per_tensor (a per-token range cannot be calibrated)")
        if self.granularity == "per_group" and self.group_size <= 0:
            raise ValueError("per_group activations need a positive group_size")
        if self.calib_algo not in ACT_CALIB_ALGOS:
            raise ValueError(f"unknown act calib_algo {self.calib_algo!r}; valid: {', '.join(ACT_CALIB_ALGOS)}")
        if self.calib_algo == "static_hist" and not (self.static and self.symmetric):
            raise ValueError("calib_algo static_hist calibrates a static, symmetric per_tensor range (as llmc): "
                             "set static: true and symmetric: true")


def int_range(bit: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) of the integer grid."""
    if symmetric:
        return -(2 ** (bit - 1)), 2 ** (bit - 1) - 1
    return 0, 2**bit - 1


def signed_offset(bit: int | str, symmetric: bool) -> int:
    """What shifts llmc's asymmetric integer range 0..2^b-1 onto the signed range -2^(b-1)..2^(b-1)-1 that
    compressed-tensors stores codes and zero points in (0 for symmetric ranges and float formats)."""
    return 0 if isinstance(bit, str) or symmetric else 2 ** (bit - 1)


def qparams(min_val: torch.Tensor, max_val: torch.Tensor, bit: int, symmetric: bool,
            grid: tuple[int, int] | None = None, round_zp: bool = True,
            dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for a range (tensors broadcast against the quantized rows); `grid` (qmin, qmax)
    overrides the one bit and symmetric imply (llmc's int_range); `dtype`: the scale is held in it
    (scale_dtype.py: a bf16 / fp16 weight's), the zero point computed against the held scale."""
    qmin, qmax = grid if grid is not None else int_range(bit, symmetric)
    if symmetric:
        scale = held(torch.maximum(min_val.abs(), max_val.abs()).clamp(min=1e-5) / qmax, dtype)
        return scale, torch.zeros_like(scale)
    scale = held((max_val - min_val).clamp(min=1e-5) / (qmax - qmin), dtype)
    if not round_zp:
        return scale, qmin - min_val / scale
    return scale, (qmin - torch.round(min_val / scale)).clamp(qmin, qmax)


def quant_dequant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bit: int, symmetric: bool,
                  grid: tuple[int, int] | None = None, round_zp: bool = True) -> torch.Tensor:
    """Round onto the grid and back: (clamp(round(x/scale) + zero) - zero) * scale; with round_zp False
    (an unrounded zero) the zero is added before rounding, as llmc does."""
    qmin, qmax = grid if grid is not None else int_range(bit, symmetric)
    if not round_zp:
        return (torch.clamp(torch.round(x / scale.clamp(min=1e-9) + zero), qmin, qmax) - zero) * scale
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def to_rows(w: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """View a [out, in] weight as the rows that share one scale (per_tensor keeps the 2-D shape)."""
    if granularity == "per_group":
        if w.shape[-1] % group_size:
            raise ValueError(f"group_size {group_size} does not divide the input dimension {w.shape[-1]}")
        return w.reshape(-1, group_size)
    return w


def row_range(rows: torch.Tensor, per_tensor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if per_tensor:
        return rows.min().reshape(1, 1), rows.max().reshape(1, 1)
    return rows.amin(dim=-1, keepdim=True), rows.amax(dim=-1, keepdim=True)


def mse_range(rows: torch.Tensor, spec: WeightQuantSpec, per_tensor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """llmc's grid search of a shrink factor of the min/max range, per row, minimising |err|^2.4."""
    lo, hi = row_range(rows, per_tensor)
    bit, symmetric, grid, rzp = spec.bit, spec.symmetric, spec.grid(), spec.round_zp
    best_err = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for i in range(int(MSE_MAXSHRINK * MSE_GRID)):
        p = 1 - i / MSE_GRID
        s, z = qparams(p * lo, p * hi, bit, symmetric, grid, rzp)
        err = (quant_dequant(rows, s, z, bit, symmetric, grid, rzp) - rows).abs_().pow_(MSE_NORM)
        err = err.sum().reshape(1, 1) if per_tensor else err.sum(dim=-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, p * lo, best_lo)
        best_hi = torch.where(better, p * hi, best_hi)
    return best_lo, best_hi


def weight_qparams(w: torch.Tensor, spec: WeightQuantSpec, clip: tuple[torch.Tensor, torch.Tensor] | None = None,
                   dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero per row of `to_rows(w)`; `clip` (min, max per row) overrides the observed range; the
    scale is held in `dtype` (default: w's, see scale_dtype.py)."""
    rows = to_rows(w.float(), spec.granularity, spec.group_size)
    per_tensor = spec.granularity == "per_tensor"
    if clip is not None:
        lo, hi = clip
    elif spec.calib_algo == "mse":
        lo, hi = mse_range(rows, spec, per_tensor)
    else:
        lo, hi = row_range(rows, per_tensor)
    return qparams(lo, hi, spec.bit, spec.symmetric, spec.grid(), spec.round_zp, dtype or w.dtype)


def _blocks(w: torch.Tensor, bs: int) -> torch.Tensor:
    """[out, in] -> one row per bs x bs tile (llmc's per_block: DeepSeek-V3's 128 x 128 weight blocks)."""
    o, i = w.shape
    if o % bs or i % bs:
        raise ValueError(f"block_size {bs} does not divide the weight shape {tuple(w.shape)}")
    return w.reshape(o // bs, bs, i // bs, bs).permute(0, 2, 1, 3).reshape(-1, bs * bs)


def _unblocks(rows: torch.Tensor, shape: torch.Size, bs: int) -> torch.Tensor:
    o, i = shape
    return rows.reshape(o // bs, i // bs, bs, bs).permute(0, 2, 1, 3).reshape(o, i)


def fake_quantize_weight(w: torch.Tensor, spec: WeightQuantSpec,
                         clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The [out, in] weight rounded to `spec` and dequantized, in the weight's dtype (with the scale held in
    that dtype, as the serving kernels hold it: scale_dtype.py)."""
    if spec.w48 is not None:
        from accbench.quant.w48 import fake_quantize_weight48

        return fake_quantize_weight48(w, spec.w48)
    if spec.granularity == "per_block":
        rows = _blocks(w.float(), spec.block_size)
        absmax = rows.abs().amax(dim=-1, keepdim=True)
        if isinstance(spec.bit, str):
            q = float_quant_dequant(rows, -absmax, absmax, spec.bit)
        else:
            scale, zero = qparams(-absmax, absmax, spec.bit, True, spec.grid())
            q = quant_dequant(rows, scale, zero, spec.bit, True, spec.grid())
        return _unblocks(q, w.shape, spec.block_size).to(w.dtype)
    rows = to_rows(w.float(), spec.granularity, spec.group_size)
    if isinstance(spec.bit, str):
        lo, hi = clip if clip is not None else row_range(rows, spec.granularity == "per_tensor")
        return float_quant_dequant(rows, lo, hi, spec.bit, w.dtype).reshape(w.shape).to(w.dtype)
    scale, zero = weight_qparams(w, spec, clip)
    q = quant_dequant(rows, scale, zero, spec.bit, spec.symmetric, spec.grid(), spec.round_zp)
    return q.reshape(w.shape).to(w.dtype)


def _act_rows(x: torch.Tensor, spec: ActQuantSpec) -> torch.Tensor:
    """One row per token, or per `group_size` features of a token (per_group; llmc keeps a token whose
    feature count is below group_size as one row)."""
    if spec.granularity == "per_group" and x.shape[-1] >= spec.group_size:
        if x.shape[-1] % spec.group_size:
            raise ValueError(f"act group_size {spec.group_size} does not divide the feature dimension {x.shape[-1]}")
        return x.reshape(-1, spec.group_size).float()
    return x.reshape(-1, x.shape[-1]).float()


def fake_quantize_act_dynamic(x: torch.Tensor, spec: ActQuantSpec) -> torch.Tensor:
    """Quantize activations with a range taken from the tensor itself (per token, per group or per tensor)."""
    rows = _act_rows(x, spec)
    lo, hi = row_range(rows, spec.granularity == "per_tensor")
    if isinstance(spec.bit, str):
        return float_quant_dequant(rows, lo, hi, spec.bit).reshape(x.shape).to(x.dtype)
    scale, zero = qparams(lo, hi, spec.bit, spec.symmetric)
    return quant_dequant(rows, scale, zero, spec.bit, spec.symmetric).reshape(x.shape).to(x.dtype)


def fake_quantize_act_static(x: torch.Tensor, spec: ActQuantSpec, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Quantize activations with a calibrated per-tensor range (lo, hi)."""
    if isinstance(spec.bit, str):
        return float_quant_dequant(x.float(), lo.float().to(x.device), hi.float().to(x.device), spec.bit).to(x.dtype)
    scale, zero = qparams(lo.float(), hi.float(), spec.bit, spec.symmetric)
    return quant_dequant(x.float(), scale.to(x.device), zero.to(x.device), spec.bit, spec.symmetric).to(x.dtype)


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|x|^2 / |x - x_hat|^2)."""
    x, x_hat = x.double(), x_hat.double()
    noise = (x - x_hat).pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(x.pow(2).sum() / noise))


def install_act_quant(linears: dict[str, Any], spec: "ActQuantSpec | dict[str, ActQuantSpec]",
                      static_ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> list:
    """Quantize every input of these linears at run time (forward pre-hooks; the state dict is untouched);
    `spec` is one for all or one per linear name."""
    handles = []
    for name, lin in linears.items():
        a = spec[name] if isinstance(spec, dict) else spec
        if a.static:
            if not static_ranges or name not in static_ranges:
                raise ValueError(f"no calibrated activation range for {name}")
            lo, hi = static_ranges[name]

            def hook(mod: Any, args: tuple, lo: torch.Tensor = lo, hi: torch.Tensor = hi, a: ActQuantSpec = a) -> tuple:
                return (fake_quantize_act_static(args[0], a, lo, hi),) + tuple(args[1:])
        else:
            def hook(mod: Any, args: tuple, a: ActQuantSpec = a) -> tuple:
                return (fake_quantize_act_dynamic(args[0], a),) + tuple(args[1:])
        handles.append(lin.register_forward_pre_hook(hook))
    return handles
