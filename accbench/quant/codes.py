"""The integer (or FP8) codes behind a fake-quantized weight, kept for the real-quant export.

Fake quantization throws the codes away: it hands back (q - zero) * scale in float. A real-quant checkpoint
stores q, scale and zero instead, and must dequantize to exactly the weights the method evaluated at
`fake_quant`. `weight_codes` computes q, scale and zero with the same formulas as `fake_quantize_weight`
(quantizer.py), and `WeightCodes.dequantize` repeats its last step operation for operation, so the two are
equal bit for bit (tested). GPTQ computes its own per-group scales while it updates the weight; it hands them
over and `codes_from_dequantized` reads q back from the float32 result, where (q - zero) * scale / scale
lies within a rounding error of an integer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from accbench.quant.floats import fp8_codes, float_scale
from accbench.quant.quantizer import (WeightQuantSpec, int_range, row_range, signed_offset, to_rows,
                                      weight_qparams)


@dataclass
class WeightCodes:
    """One linear's quantized weight on the method's grid.

    `q`: [out, in] integer codes as int8 in the signed range -2^(b-1)..2^(b-1)-1 (llmc's asymmetric range
    0..2^b-1 shifted down by `offset()`, compressed-tensors' convention; 1 byte per weight) or, for a float
    format, the float8 values. `scale` / `zero`: float32, one per group ([out, in / group_size]),
    per row ([out, 1]) or per tensor ([1, 1]); `zero` is None for symmetric and float formats. A bf16 / fp16
    weight's scales are values of that dtype (scale_dtype.py), so the serving kernels hold them exactly."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    spec: WeightQuantSpec

    def offset(self) -> int:
        """What was subtracted from llmc's codes to store them signed (2^(b-1) for asymmetric integers)."""
        return signed_offset(self.spec.bit, self.spec.symmetric)

    def dequantize(self) -> torch.Tensor:
        """The float32 [out, in] weight: (q - zero) * scale, as fake quantization computes it (small integers
        are exact in float32, so the shift of the stored codes changes nothing)."""
        out, cols = self.q.shape
        n = self.scale.shape[-1]
        q = self.q.float() + self.offset() if self.offset() else self.q.float()
        rows = q.reshape(out * n, cols // n) if n > 1 else q
        scale = self.scale.reshape(-1, 1) if n > 1 else self.scale
        if self.zero is not None:
            zero = self.zero.reshape(-1, 1) if n > 1 else self.zero
            rows = rows - zero
        return (rows * scale).reshape(out, cols)

    def cpu(self) -> "WeightCodes":
        return WeightCodes(self.q.cpu(), self.scale.cpu(), None if self.zero is None else self.zero.cpu(), self.spec)


def _per_layer(t: torch.Tensor, w: torch.Tensor, spec: WeightQuantSpec) -> torch.Tensor:
    """A per-row-of-`to_rows` tensor as [out, groups] (per_group), [out, 1] (per_channel) or [1, 1]."""
    if spec.granularity == "per_group":
        return t.reshape(w.shape[0], w.shape[1] // spec.group_size)
    return t.reshape(-1, 1)


def weight_codes(w: torch.Tensor, spec: WeightQuantSpec,
                 clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> WeightCodes:
    """The codes `fake_quantize_weight(w, spec, clip)` rounds to (per_block has no export and is refused)."""
    if spec.granularity == "per_block":
        raise ValueError("per_block weights have no real-quant export")
    rows = to_rows(w.float(), spec.granularity, spec.group_size)
    if isinstance(spec.bit, str):
        lo, hi = clip if clip is not None else row_range(rows, spec.granularity == "per_tensor")
        scale = float_scale(lo, hi, spec.bit, w.dtype)
        q = fp8_codes(rows / scale, spec.bit)
        return WeightCodes(q.reshape(w.shape), _per_layer(scale, w, spec), None, spec)
    scale, zero = weight_qparams(w, spec, clip)
    qmin, qmax = int_range(spec.bit, spec.symmetric)
    q = torch.clamp(torch.round(rows / scale) + zero, qmin, qmax) - signed_offset(spec.bit, spec.symmetric)
    return WeightCodes(q.reshape(w.shape).to(torch.int8), _per_layer(scale, w, spec),
                       None if spec.symmetric else _per_layer(zero, w, spec), spec)


def codes_from_dequantized(w_hat: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                           spec: WeightQuantSpec) -> WeightCodes:
    """Codes of a float32 weight already on the grid of (scale, zero) ([out, groups] / [out, 1] / [1, 1])."""
    out, cols = w_hat.shape
    n = scale.shape[-1]
    rows = w_hat.float().reshape(out * n, cols // n) if n > 1 else w_hat.float()
    s = scale.reshape(-1, 1) if n > 1 else scale
    if isinstance(spec.bit, str):  # (fp8 value * s) / s lies within an ulp of the fp8 value: the cast recovers it
        q8 = fp8_codes(rows / s, spec.bit)
        return WeightCodes(q8.reshape(out, cols), scale.float(), None, spec)
    z = torch.zeros_like(s) if zero is None else (zero.reshape(-1, 1) if n > 1 else zero)
    qmin, qmax = int_range(spec.bit, spec.symmetric)
    q = torch.clamp(torch.round(rows / s) + z, qmin, qmax) - signed_offset(spec.bit, spec.symmetric)
    return WeightCodes(q.reshape(out, cols).to(torch.int8), scale.float(), None if spec.symmetric else zero.float(),
                       spec)
