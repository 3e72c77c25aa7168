"""On the trained built-in model: AWQ and GPTQ beat round-to-nearest at 3 and 4 bits (perplexity order).

Measured on the v3 built-in model (hidden 128, so g128 is a whole row; 48 windows of 256 tokens), AWQ with its
default options (no clipping search): W3 pretrain 55.596, RTN 56.423, AWQ 56.315, GPTQ 56.068; W4 pretrain
55.596, RTN 55.768, AWQ 55.735, GPTQ 55.699. With `weight_clip: true` AWQ is better at W3 (56.228) but worse
than RTN at W4 g128 (55.828): the clip search on 16 calibration samples overfits at 4 bits on this model.
About 30 s, plus the built-in model's one-time build (~2 minutes) when it is not cached; it runs by default
because it is the check that the methods order as they should on a real (trained) model.
"""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="module")
def setup():
    import torch

    torch.set_num_threads(1)
    from accbench.data.calib import calib_batches, calib_samples
    from accbench.data.text import load_texts, ppl_token_stream
    from accbench.models import load_model

    loaded = load_model("builtin:tiny-llama", "float32", device="cpu")
    tok = loaded.tokenizer
    batches = calib_batches(calib_samples(load_texts("builtin:pydoc", builtin_split="calib"), tok,
                                          "random_truncate_txt", 16, 256, 42), -1)
    stream = ppl_token_stream("builtin:pydoc", load_texts("builtin:pydoc"), tok, 256)
    return loaded.model, batches, stream


def _ppl(model, stream) -> float:
    from accbench.evaluate.perplexity import perplexity

    return perplexity(model, stream, 256, 8, "cpu", max_windows=48, progress=False).ppl


def _quantized_ppl(base, method: str, bit: int, batches, stream) -> float:
    from accbench.quant.methods import METHOD_SPECIAL_KEYS
    from accbench.quant.quantizer import WeightQuantSpec
    from accbench.quant.runner import fake_quantize_model, transform_model
    from accbench.quant.spec import QuantSpec

    special = {**METHOD_SPECIAL_KEYS[method]}  # AWQ: scale search only (its default), see the docstring
    if method == "GPTQ":
        special.update(actorder=True)
    spec = QuantSpec(method, WeightQuantSpec(bit, False, "per_group", 128), None, special, False, 256)
    model = copy.deepcopy(base)
    state = transform_model(model, spec, batches, "cpu")
    fake_quantize_model(model, spec, batches, "cpu", state)
    return _ppl(model, stream)


@pytest.mark.parametrize("bit", [3, 4])
def test_awq_and_gptq_beat_rtn(setup, bit):
    model, batches, stream = setup
    pre = _ppl(model, stream)
    got = {m: _quantized_ppl(model, m, bit, batches, stream) for m in ("RTN", "Awq", "GPTQ")}
    print(f"W{bit} g128 ppl: pretrain {pre:.4f} " + " ".join(f"{k} {v:.4f}" for k, v in got.items()))
    # At 4 bits the v1 built-in model barely reacts (RTN +0.15%); AWQ/GPTQ land within noise of pretrain
    # and were measured 0.01-0.02% *below* it, so W4 allows that much; W3 must not beat pretrain.
    slack = 1e-4 if bit == 3 else 5e-4
    assert pre <= got["Awq"] * (1 + slack) and pre <= got["GPTQ"] * (1 + slack), (pre, got)
    assert got["Awq"] < got["RTN"] and got["GPTQ"] < got["RTN"], (pre, got)
