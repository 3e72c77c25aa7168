"""The quantization methods by config name (`quant.method`), as a plain dict of what each one does.

`transform` is the calibrated, function-preserving step (AWQ / SmoothQuant scales), run block by block
before the `transformed` position is evaluated; `quantize` fake-quantizes one block's weights, with
calibration inputs when `quantize_calibrated` (GPTQ) and without otherwise (plain rounding, using any
clip ranges the transform left behind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from accbench.quant import awq, gptq, rtn, smoothquant


@dataclass(frozen=True)
class QuantMethod:
    transform: Callable | None  # (prefix, block, inputs, spec, state) -> None
    quantize: Callable  # (prefix, block, [inputs,] spec, state) -> None
    quantize_calibrated: bool


METHODS: dict[str, QuantMethod] = {
    "RTN": QuantMethod(transform=None, quantize=rtn.quantize_block, quantize_calibrated=False),
    "Awq": QuantMethod(transform=awq.transform_block, quantize=rtn.quantize_block, quantize_calibrated=False),
    "GPTQ": QuantMethod(transform=None, quantize=gptq.quantize_block, quantize_calibrated=True),
    "SmoothQuant": QuantMethod(transform=smoothquant.transform_block, quantize=rtn.quantize_block,
                               quantize_calibrated=False),
}


def needs_calibration(method: str, act_static: bool) -> bool:
    m = METHODS[method]
    return m.transform is not None or m.quantize_calibrated or act_static
