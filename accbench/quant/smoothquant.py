"""SmoothQuant: migrate activation outliers into the weights with a per-channel scale, then W8A8.

For every group of linears fed by a norm (q/k/v after input_layernorm, gate/up after
post_attention_layernorm), s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha) (clamped to >= 1e-5) over
the calibration tokens and the group's weights; the norm's weight is divided by s and the linears'
input columns multiplied by s. `transformed` is this smoothed, still-float model (equivalent to the
original); `fake_quant` then rounds weights (per_channel in the usual W8A8 setting) and quantizes every
linear's input (per token, dynamic; or per tensor, static).

llmc computes the weight term as max|W|^alpha instead of max|W|^(1 - alpha); both agree at the
default alpha = 0.5. We follow the SmoothQuant paper.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import field_validator

from accbench.quant.blockwise import BlockInputs, capture_calls, trace_block
from accbench.quant.options import MethodOptions
from accbench.quant.scaling import apply_scale
from accbench.quant.spec import QuantSpec, QuantState


class SmoothQuantOptions(MethodOptions):
    """SmoothQuant's `quant.special` options: the migration strength alpha (llmc's default 0.5)."""

    alpha: float = 0.5

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError(f"quant.special.alpha must be in [0, 1], got {v!r}")
        return v


def smooth_scale(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    return (x_max.float().pow(alpha) / w_max.float().clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def transform_block(prefix: str, block: nn.Module, inputs: BlockInputs, spec: QuantSpec, state: QuantState) -> None:
    alpha = SmoothQuantOptions.of(spec).alpha
    modules = dict(block.named_modules())
    subsets = [s for s in trace_block(block, inputs.hidden[0], inputs.kwargs[0]) if s.prev_kind == "norm"]
    calls = capture_calls(block, inputs, [s.layers[0] for s in subsets])
    for s in subsets:
        x_max = torch.stack([x.abs().reshape(-1, x.shape[-1]).amax(0).float() for x in calls[s.layers[0]].inputs])
        x_max = x_max.amax(0)
        layers = [modules[n] for n in s.layers]
        w_max = torch.stack([lin.weight.abs().amax(0).float() for lin in layers]).amax(0)
        scale = smooth_scale(x_max, w_max, alpha)
        apply_scale(modules[s.prev], layers, scale)
        state.scales[prefix + s.prev] = scale.cpu()
