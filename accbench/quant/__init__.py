"""Weight and activation quantization: quantizer math, the blockwise runner, one file per method.

Entry points: `accbench.quant.runner` (check, transform, fake-quantize a model) and
`accbench.quant.methods.METHODS` (method name -> what it does). Imports torch; load lazily.
"""
