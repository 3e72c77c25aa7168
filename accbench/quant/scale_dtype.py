"""Weight scales are held in the model's dtype, as the kernels that run the quantized model hold them.

A bfloat16 / float16 model's quantized weight is dequantized by its serving code with the scale in the model's
dtype: vLLM's WNA16 kernels (Marlin, Machete, the CPU kernel) load `weight_scale` into a parameter of the
model's dtype, transformers before 5.20 (with compressed-tensors 0.17) casts every scale to it while loading,
and llm-compressor and llmc compute the scales in it. A float32 scale (what the range formulas give) would be
rounded there, and the weights that run would differ from the evaluated ones by up to one ulp of the dtype
(measured on the built-in model in bfloat16: 28 of 28 quantized linears, up to 2^-6).

So fake quantization rounds every weight scale to the weight's dtype first (`held`), then computes the zero
point and the codes against that scale, and dequantizes in float32: (q - zero) * scale is exact there (at
most 8 + 11 significant bits) and rounds once to the dtype, exactly what a loader that keeps the scale in
float32, or one that multiplies in the model's dtype, computes. In float32 nothing changes. Activation
scales stay float32 (vLLM's activation scales are float32 parameters, dynamic ones computed in float32).
"""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def held(scale: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`scale` (float32) rounded to `dtype` when that is bfloat16 / float16, as float32; a positive scale
    that would underflow to 0 keeps the dtype's smallest positive value instead (all-zero rows only)."""
    if dtype not in LOW_PRECISION:
        return scale
    r = scale.to(dtype).float()
    tiny = float(torch.finfo(dtype).smallest_normal) * float(torch.finfo(dtype).eps)  # smallest subnormal
    return torch.where((r == 0) & (scale > 0), torch.full_like(r, tiny), r)
