"""LLM.int8() (Dettmers et al. 2022): W8A8 with the outlier feature dimensions kept in full precision.

For every call of a linear, the feature dimensions (input columns) whose activation magnitude reaches
`threshold` anywhere in the call's input are outliers (llmc's rule: max over tokens of |x| >= threshold, the
union over the batch). The other columns of the input are quantized per token over those columns only, the
weight's matching columns per output channel over those columns only (both as the quant section says); the
outlier columns of input and weight stay in full precision, and one matmul of the mixed tensors gives the
output, as llmc's `LlmInt8` computes it.

Thresholds follow llmc: a dimension is an outlier when its magnitude is >= threshold, so `threshold: 0` keeps
every dimension in full precision (the float model), and a threshold above every activation (e.g. 1e9) keeps
none: plain W8A8 round-to-nearest. (bitsandbytes reads threshold 0 as "no decomposition"; llmc does not.)

The decomposition depends on each call's input, so weights are rounded at run time from the float weights the
model keeps (a saved fake_quant checkpoint holds those float weights). llmc rounds the weight once, with the
outlier columns of the first call it sees; we decompose every call the same way, so a window's result does not
depend on which window came first.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import field_validator

from accbench.quant.options import MethodOptions
from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec, fake_quantize_act_dynamic, fake_quantize_weight
from accbench.quant.spec import QuantSpec, QuantState


class LlmInt8Options(MethodOptions):
    """LLM.int8()'s `quant.special` options: the outlier threshold on activation magnitude (llmc's default 6.0)."""

    threshold: float = 6.0

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if not v >= 0:
            raise ValueError(f"quant.special.threshold must be >= 0, got {v!r}")
        return v


def check(model: Any, spec: QuantSpec) -> list[str]:
    """LLM.int8() needs per-token dynamic activation quantization and integer per-channel/per-tensor weights."""
    problems = []
    if spec.act is None:
        problems.append("LlmInt8 finds its outlier dimensions in the activations: add a quant.act section "
                        "(llmc's config: bit 8, symmetric, per_token)")
    elif spec.act.static or isinstance(spec.act.bit, str):
        problems.append("LlmInt8 quantizes activations per call with integers: set quant.act.static: false and an "
                        "integer quant.act.bit")
    if spec.weight.granularity not in ("per_channel", "per_tensor") or isinstance(spec.weight.bit, str):
        problems.append("LlmInt8 rounds the non-outlier columns of each weight with integer per_channel or "
                        f"per_tensor scales; quant.weight.granularity is {spec.weight.granularity}")
    return problems


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask of the input's feature dimensions whose magnitude reaches `threshold` anywhere."""
    return x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0) >= threshold


def decompose(x: torch.Tensor, weight: torch.Tensor, threshold: float, wspec: WeightQuantSpec,
              aspec: ActQuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, weight) with the non-outlier columns fake-quantized and the outlier columns as they were."""
    outliers = outlier_columns(x, threshold)
    if bool(outliers.all()):
        return x, weight
    if not bool(outliers.any()):
        return fake_quantize_act_dynamic(x, aspec), fake_quantize_weight(weight, wspec)
    keep = (~outliers).nonzero().squeeze(1)
    x_mix, w_mix = x.clone(), weight.clone()
    x_mix[..., keep] = fake_quantize_act_dynamic(x[..., keep], aspec)
    w_mix[:, keep] = fake_quantize_weight(weight[:, keep], wspec)
    return x_mix, w_mix


def _install(lin: nn.Linear, wspec: WeightQuantSpec, aspec: ActQuantSpec, threshold: float) -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        x_mix, w = decompose(x, lin.weight, threshold, wspec, aspec)
        return F.linear(x_mix, w, lin.bias)

    lin.forward = forward  # the instance's forward: hooks still run, the state dict is unchanged


def quantize_block(prefix: str, block: nn.Module, spec: QuantSpec, state: QuantState) -> None:
    """Make every (not ignored) linear of the block compute its outlier-decomposed W8A8 product."""
    threshold = LlmInt8Options.of(spec).threshold
    assert spec.act is not None  # check() refused it before
    blocks_name, index = prefix.rstrip(".").rsplit(".", 1)
    for name, lin in block.named_modules():
        if isinstance(lin, nn.Linear) and not spec.is_ignored(blocks_name, int(index), name):
            _install(lin, spec.weight, spec.act, threshold)
