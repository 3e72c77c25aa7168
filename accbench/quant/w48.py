"""Two-level W4A8 weights (llmc's `bit: 48`, its Weight48IntegerQuantizer): int8 first, then int4 of the int8 codes.

A kernel that multiplies int8 activations by int4 weights stores 4-bit codes whose dequantization yields int8
values, which a per-channel scale then turns into floats. llmc's `bit8` and `bit4` settings describe the two
levels; fake quantization (all in float32, rows as the level's granularity makes them) is:

1. level 8 (usually symmetric per_channel, `int_range: [-120, 120]`): range (min, max) per row,
   q8 = clamp(round(w / s8) + z8, qmin8, qmax8);
2. level 4 (usually asymmetric per_group 128) on the int8 codes q8: range per group,
   q4 = clamp(round(q8 / s4) + z4, qmin4, qmax4);
3. w_hat = ((q4 - z4) * s4 - z8) * s8.

Each level: symmetric s = max(|min|, |max|).clamp(1e-5) / qmax, z = 0; asymmetric s = (max - min).clamp(1e-5) /
(qmax - qmin), z = qmin - round(min / s). (qmin, qmax) is `int_range` or what bit and symmetric imply. Unlike the
one-level quantizer, z is not clamped to (qmin, qmax): it is clamped to the zero-point grid, by default
(qmin, qmax) of the level, with `zeros_bit` / `zeros_symmetric` the integer range of that many bits; s is clamped
to the `scales_bit` / `scales_symmetric` integer range when given (llmc clamps, it does not round: the level-4
scale of int8 codes stays a float, and with the shipped configs the clamps never bind). llmc reads the zero-point
range's width from `scales_bit`; the shipped configs set `zeros_bit` equal to it, and we read `zeros_bit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from accbench.quant.quantizer import int_range as _bits_range

LEVEL_GRANULARITIES = ("per_channel", "per_group")


@dataclass(frozen=True)
class LevelSpec:
    """One level of the two-level weights (llmc's `bit4:` or `bit8:` mapping)."""

    bit: int
    symmetric: bool
    granularity: str = "per_channel"
    group_size: int = 128
    int_range: tuple[int, int] | None = None
    scales_bit: int | None = None
    scales_symmetric: bool = True
    zeros_bit: int | None = None
    zeros_symmetric: bool = True

    def __post_init__(self) -> None:
        if self.granularity not in LEVEL_GRANULARITIES:
            raise ValueError(f"bit{self.bit} granularity {self.granularity!r} is not supported; valid: "
                             f"{', '.join(LEVEL_GRANULARITIES)}")
        if self.granularity == "per_group" and self.group_size <= 0:
            raise ValueError(f"bit{self.bit} per_group needs a positive group_size")
        if self.int_range is not None and self.int_range[0] >= self.int_range[1]:
            raise ValueError(f"bit{self.bit} int_range {list(self.int_range)} must be [qmin, qmax] with qmin < qmax")

    def grid(self) -> tuple[int, int]:
        return self.int_range if self.int_range is not None else _bits_range(self.bit, self.symmetric)

    def scale_clamp(self) -> tuple[float, float]:
        if self.scales_bit is None:
            return -math.inf, math.inf
        return _bits_range(self.scales_bit, self.scales_symmetric)

    def zero_clamp(self) -> tuple[float, float]:
        return self.grid() if self.zeros_bit is None else _bits_range(self.zeros_bit, self.zeros_symmetric)


@dataclass(frozen=True)
class Weight48Spec:
    """llmc's `bit: 48` weights: the int8 level, then the int4 level of its codes."""

    bit8: LevelSpec
    bit4: LevelSpec


def _rows(w: torch.Tensor, level: LevelSpec) -> torch.Tensor:
    if level.granularity == "per_group":
        if w.shape[-1] % level.group_size:
            raise ValueError(f"bit{level.bit} group_size {level.group_size} does not divide the input dimension "
                             f"{w.shape[-1]}")
        return w.reshape(-1, level.group_size)
    return w


def level_qparams(rows: torch.Tensor, level: LevelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of `rows` for one level (see the module docstring)."""
    qmin, qmax = level.grid()
    lo, hi = rows.amin(dim=-1, keepdim=True), rows.amax(dim=-1, keepdim=True)
    if level.symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()).clamp(min=1e-5) / qmax
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo).clamp(min=1e-5) / (qmax - qmin)
        zero = qmin - torch.round(lo / scale)
    return scale.clamp(*level.scale_clamp()), zero.clamp(*level.zero_clamp())


def _quant(rows: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, level: LevelSpec) -> torch.Tensor:
    qmin, qmax = level.grid()
    return torch.clamp(torch.round(rows / scale) + zero, qmin, qmax)


def fake_quantize_weight48(w: torch.Tensor, spec: Weight48Spec) -> torch.Tensor:
    """The [out, in] weight through both levels and back, in the weight's dtype."""
    rows8 = _rows(w.float(), spec.bit8)
    s8, z8 = level_qparams(rows8, spec.bit8)
    q8 = _quant(rows8, s8, z8, spec.bit8).reshape(w.shape)
    rows4 = _rows(q8, spec.bit4)
    s4, z4 = level_qparams(rows4, spec.bit4)
    q4 = _quant(rows4, s4, z4, spec.bit4)
    d8 = ((q4 - z4) * s4).reshape(w.shape)
    return ((_rows(d8, spec.bit8) - z8) * s8).reshape(w.shape).to(w.dtype)
