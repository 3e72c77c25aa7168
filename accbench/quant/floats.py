"""Float formats of llmc's `quant_type: float-quant`: FP8 (e4m3, e5m2) and the small formats e2m1, e3m2, e4m7.

Fake quantization with a float format scales a row so that its absolute maximum lands on the format's largest
value, rounds every element to the format and scales back (llmc's FloatQuantizer):
scale = max(|lo|, |hi|).clamp(1e-5) / fmax,  x_hat = round_fmt(x / scale) * scale.  Formats are always symmetric
(llmc sets `sym = True` whatever the config says).

- FP8: fmax is the largest finite value of torch.float8_e4m3fn (448) / float8_e5m2 (57344), the rounding a cast
  to that dtype (nearest, ties to even).
- e2m1 (FP4), e3m2 (FP6), e4m7: llmc rounds with QPyTorch's `float_quantize(x, exp, man, rounding="nearest")`,
  whose format has no infinities or NaNs: exponent bias 2^(e-1) - 1, every exponent value normal, so
  fmax = 2^(2^(e-1)) * (2 - 2^-m) (6, 28, 510: llmc's table); below 2^(2 - 2^(e-1)) values are subnormal with
  step 2^(2 - 2^(e-1) - m); values beyond fmax saturate to +-fmax. "Nearest" adds half a unit in the last
  place to the float32 bit pattern and truncates, so ties round away from zero. The e2m1 grid is
  0, 0.5, 1, 1.5, 2, 3, 4, 6.
"""

from __future__ import annotations

import torch

from accbench.quant.scale_dtype import held

CAST_FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
SMALL_FORMATS = {"e2m1": (2, 1), "e3m2": (3, 2), "e4m7": (4, 7)}  # (exponent bits, mantissa bits)
FLOAT_FORMATS = (*CAST_FORMATS, *SMALL_FORMATS)


def check_float_format(fmt: str, what: str) -> None:
    """A ValueError naming the valid formats when `fmt` is not one."""
    if fmt not in FLOAT_FORMATS:
        raise ValueError(f"{what} float format {fmt!r} is not supported; valid: {', '.join(FLOAT_FORMATS)}")


def float_max(fmt: str) -> float:
    """The largest value of the format (the scale maps a row's absolute maximum onto it)."""
    if fmt in CAST_FORMATS:
        return float(torch.finfo(CAST_FORMATS[fmt]).max)
    e, m = SMALL_FORMATS[fmt]
    return 2.0 ** (2 ** (e - 1)) * (2 - 2.0**-m)


def float_bits(fmt: str) -> int:
    """Bits of one value (sign + exponent + mantissa): 8 for FP8, 4 for e2m1 (llmc's histogram target bins)."""
    return 1 + int(fmt[1]) + int(fmt[3:])


def _round_bits(x: torch.Tensor, man: int) -> torch.Tensor:
    """QPyTorch's nearest rounding of float32 values to `man` mantissa bits: add half an ulp to the bit
    pattern, clear the bits below (ties away from zero)."""
    bits = x.contiguous().view(torch.int32)
    drop = 23 - man
    bits = (bits + (1 << (drop - 1))) & ~((1 << drop) - 1)
    return bits.view(torch.float32)


def round_small_float(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Round float32 `x` to e2m1 / e3m2 / e4m7 as QPyTorch's float_quantize (nearest) does."""
    e, m = SMALL_FORMATS[fmt]
    x = x.float()
    min_exp = 2 - 2 ** (e - 1)  # smallest normal exponent
    exp = ((x.contiguous().view(torch.int32) >> 23) & 0xFF) - 127
    # subnormals: shift by the smallest normal (same sign) so the mantissa rounding lands on the subnormal grid
    shift = torch.where(x < 0, -(2.0**min_exp), 2.0**min_exp)
    sub = _round_bits(x + shift, m) - shift
    normal = _round_bits(x, m)
    fmax = float_max(fmt)
    normal = torch.where(normal.abs() > fmax, torch.copysign(torch.full_like(x, fmax), x), normal)
    return torch.where(exp < min_exp, sub, normal)


def float_scale(lo: torch.Tensor, hi: torch.Tensor, fmt: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """llmc's scale of a float format for the range (lo, hi): max(|lo|, |hi|).clamp(1e-5) / fmax (float32),
    held in `dtype` (a bf16 / fp16 weight's: scale_dtype.py)."""
    return held(torch.maximum(lo.abs(), hi.abs()).float().clamp(min=1e-5) / float_max(fmt), dtype)


def fp8_codes(scaled: torch.Tensor, fmt: str) -> torch.Tensor:
    """FP8 codes of values already divided by their scale: saturated at the format's max, then cast."""
    fmax = float_max(fmt)
    return scaled.clamp(-fmax, fmax).to(CAST_FORMATS[fmt])


def float_quant_dequant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fmt: str,
                        dtype: torch.dtype | None = None) -> torch.Tensor:
    """llmc's float fake quantization with the range (lo, hi) per row: scale = `float_scale(lo, hi, dtype)`,
    x_hat = round_fmt(x / scale) * scale (float32 result)."""
    scale = float_scale(lo, hi, fmt, dtype)
    if fmt in CAST_FORMATS:
        return fp8_codes(x / scale, fmt).float() * scale
    return round_small_float(x.float() / scale, fmt) * scale
