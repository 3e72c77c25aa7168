"""The quantization methods by config name (`quant.method`), as a plain dict of what each one does.

A new method is its own file (its functions and its options class, `MethodOptions`) plus one line here.
`transform` is the calibrated, function-preserving step (AWQ / SmoothQuant scales), run block by block
before the `transformed` position is evaluated; `quantize` fake-quantizes one block's weights, with
calibration inputs when `quantize_calibrated` (GPTQ) and without otherwise (plain rounding, using any
clip ranges the transform left behind). Optional: `prepare` transforms the whole model before the blocks
(QuaRot's rotation of embeddings, head and every block; GPTQ's online rotation), `check` returns a method's
problems with the model (structure, sizes) before anything runs, and `quantizes_act` says the method quantizes
activations itself (LLM.int8()'s outlier decomposition) instead of the runner's per-linear hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from accbench.quant import awq, gptq, hqq, llmint8, omniquant, quarot, rtn, smoothquant
from accbench.quant.options import MethodOptions


@dataclass(frozen=True)
class QuantMethod:
    transform: Callable | None  # (prefix, block, inputs, spec, state) -> None
    quantize: Callable  # (prefix, block, [inputs,] spec, state) -> None
    quantize_calibrated: bool
    options: type[MethodOptions]  # the method's `quant.special` options, with their defaults
    prepare: Callable | None = None  # (model, spec, state) -> None, before the blocks
    check: Callable | None = None  # (model, spec) -> list of problems
    quantizes_act: bool = False


METHODS: dict[str, QuantMethod] = {
    "RTN": QuantMethod(None, rtn.quantize_block, False, rtn.RTNOptions),
    "Awq": QuantMethod(awq.transform_block, rtn.quantize_block, False, awq.AwqOptions),
    "GPTQ": QuantMethod(None, gptq.quantize_block, True, gptq.GptqOptions, gptq.prepare, gptq.check),
    "SmoothQuant": QuantMethod(smoothquant.transform_block, rtn.quantize_block, False, smoothquant.SmoothQuantOptions),
    "Quarot": QuantMethod(None, rtn.quantize_block, False, quarot.QuarotOptions, quarot.prepare, quarot.check),
    "LlmInt8": QuantMethod(None, llmint8.quantize_block, False, llmint8.LlmInt8Options, None, llmint8.check, True),
    "OmniQuant": QuantMethod(omniquant.transform_block, rtn.quantize_block, False, omniquant.OmniQuantOptions),
    "HQQ": QuantMethod(None, hqq.quantize_block, False, hqq.HqqOptions),
}
# method -> its `quant.special` options with their defaults (llmc's names)
METHOD_SPECIAL_KEYS: dict[str, dict] = {name: m.options.defaults() for name, m in METHODS.items()}


def needs_calibration(method: str, act_static: bool) -> bool:
    m = METHODS[method]
    return m.transform is not None or m.quantize_calibrated or act_static
