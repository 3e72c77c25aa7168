"""Equivalent per-channel scaling: divide a producer's output channels by s, multiply its consumers' inputs by s.

For a norm (y = w * normalize(x) [+ b]) feeding linears, or a linear feeding another through a
channel-wise map (v_proj -> attention -> o_proj, up_proj -> (act(gate) *) -> down_proj), the model's
function is unchanged in exact arithmetic; AWQ and SmoothQuant pick s so the consumers quantize better.
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def apply_scale(prev: nn.Module, layers: list[nn.Linear], scale: torch.Tensor) -> None:
    """Fold `scale` (one value per channel of the shared input) into `prev` and `layers`, in place."""
    s = scale.float()
    if isinstance(prev, nn.Linear):
        prev.weight.data.copy_(prev.weight.data.float() / s.view(-1, 1).to(prev.weight.device))
    else:
        prev.weight.data.copy_(prev.weight.data.float() / s.to(prev.weight.device))
    bias = getattr(prev, "bias", None)
    if bias is not None:
        bias.data.copy_(bias.data.float() / s.to(bias.device))
    for lin in layers:
        lin.weight.data.copy_(lin.weight.data.float() * s.view(1, -1).to(lin.weight.device))
