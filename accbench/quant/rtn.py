"""Round-to-nearest: every linear weight of every decoder block rounded on its own, no calibration.

The baseline every other method must beat. No equivalent transform exists, so the `transformed`
position of an RTN run is the unchanged pretrained model. With static activation quantization the
runner still makes one calibration pass to record each linear's input range.
"""

from __future__ import annotations

import torch.nn as nn

from accbench.quant.codes import weight_codes
from accbench.quant.options import MethodOptions
from accbench.quant.quantizer import fake_quantize_weight
from accbench.quant.spec import QuantSpec, QuantState


class RTNOptions(MethodOptions):
    """Round-to-nearest takes no `quant.special` options."""


def quantize_block(prefix: str, block: nn.Module, spec: QuantSpec, state: QuantState) -> None:
    """Fake-quantize the block's linear weights in place, using clip ranges a method left in `state`."""
    for name, lin in block.named_modules():
        if isinstance(lin, nn.Linear):
            wspec = spec.weight_for(prefix, name)  # None: ignored_layers / mix_bits keep it in float
            if wspec is None:
                continue
            clip = state.clips.get(prefix + name)
            if clip is not None:
                clip = (clip[0].to(lin.weight.device), clip[1].to(lin.weight.device))
            if state.codes is None:
                lin.weight.data.copy_(fake_quantize_weight(lin.weight.data, wspec, clip))  # in place: no 2nd copy
                continue
            codes = weight_codes(lin.weight.data, wspec, clip)  # the same grid, codes kept for the export
            lin.weight.data.copy_(codes.dequantize().to(lin.weight.dtype))
            state.codes[prefix + name] = codes.cpu()
