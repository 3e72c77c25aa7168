"""KV-cache quantization (quant/kvcache.py) and decode perplexity (evaluate/decode_ppl.py).

Naive and Kivi are pinned against hand computations on a 4-wide head (llmc's kvquant.py semantics: what each
update returns, what the cache then holds); decode_ppl without KV quantization equals ordinary perplexity of the
same samples computed independently (one full forward each); 16-bit KV quantization leaves it within 1e-4; on
the built-in model fewer bits raise decode_ppl monotonically while 8 bits barely move it.
"""

from __future__ import annotations

import math

import pytest
import torch

from accbench.evaluate.decode_ppl import decode_perplexity
from accbench.quant.kvcache import (KiviQuantLayer, KVCacheQuantizer, KVQuantSpec, NaiveQuantLayer,
                                    calibrate_kv_ranges, fake_quantize_kv)

pytestmark = pytest.mark.usefixtures("one_thread")

A = [0.3, -1.5, 0.6, 0.9]
B = [3.0, -0.5, 1.0, 2.2]
C = [0.2, 0.1, -0.4, 0.3]
D = [1.0, 1.0, 1.0, -2.0]


def kv(*rows: list[float]) -> torch.Tensor:
    """[batch 1, heads 1, tokens, head_dim 4]."""
    return torch.tensor([rows], dtype=torch.float32)


# by hand, 3-bit symmetric per token: qmax 3, scale = absmax / 3, q = round-half-even(x / scale)
A3 = [0.5, -1.5, 0.5, 1.0]  # scale 0.5: 0.6 -> 1, -3 -> -3, 1.2 -> 1, 1.8 -> 2
B3 = [3.0, 0.0, 1.0, 2.0]  # scale 1.0: -0.5 -> -0 (half to even)
C3 = [0.8 / 3, 0.4 / 3, -0.4, 0.8 / 3]  # scale 0.4/3: 1.5 -> 2, 0.75 -> 1, -3, 2.25 -> 2
SPEC3 = KVQuantSpec("Naive", 3, True, "per_token")


def close(t: torch.Tensor, rows: list[list[float]]) -> bool:
    return torch.allclose(t, kv(*rows), atol=1e-6)


def test_fake_quantize_kv_by_hand_for_each_granularity():
    assert close(fake_quantize_kv(kv(A, B), SPEC3), [A3, B3])
    # per_tensor: one scale for both tokens, absmax 3.0 -> scale 1.0; -1.5 rounds half to even -> -2
    assert close(fake_quantize_kv(kv(A, B), KVQuantSpec("Naive", 3, True, "per_tensor")),
                 [[0, -2, 1, 1], [3, 0, 1, 2]])
    # per_group of 2: [0.3, -1.5] scale 0.5 -> [0.5, -1.5]; [0.6, 0.9] scale 0.3 -> exact
    assert close(fake_quantize_kv(kv(A), KVQuantSpec("Naive", 3, True, "per_group", group_size=2)),
                 [[0.5, -1.5, 0.6, 0.9]])
    # 2-bit asymmetric per token: scale (0.9 + 1.5) / 3 = 0.8, zero = -round(-1.875) = 2, q = round(x/0.8) + 2
    assert close(fake_quantize_kv(kv(A), KVQuantSpec("Naive", 2, False, "per_token")), [[0, -1.6, 0.8, 0.8]])
    # a head_dim smaller than group_size is one group (llmc), i.e. per token
    assert close(fake_quantize_kv(kv(A, B), KVQuantSpec("Naive", 3, True, "per_group", group_size=128)), [A3, B3])


def test_naive_quantizes_the_prompt_and_requantizes_everything_at_each_step():
    layer = NaiveQuantLayer(SPEC3)
    k, v = layer.update(kv(A, B), kv(B, A))
    assert close(k, [A3, B3]) and close(v, [B3, A3])  # the prompt attends to quantized keys
    k, _ = layer.update(kv(C), kv(C))
    assert close(k, [A3, B3, C])  # the new token in full precision
    assert close(layer.keys, [A3, B3, C3]) and layer.get_seq_length() == 3  # then everything held quantized


def test_kivi_returns_the_prompt_unquantized_and_keeps_a_residual():
    layer = KiviQuantLayer(KVQuantSpec("Kivi", 3, True, "per_token", residual_length=2))
    k, _ = layer.update(kv(A, B), kv(A, B))
    assert close(k, [A, B]) and close(layer.keys, [A3, B3])  # returned in full precision, stored quantized
    k, _ = layer.update(kv(C), kv(C))
    assert close(k, [A3, B3, C]) and close(layer.res_keys, [C]) and layer.get_seq_length() == 3
    k, _ = layer.update(kv(D), kv(D))  # residual 1 + 1 >= residual_length 2: everything quantized
    assert close(k, [A3, B3, C, D]) and layer.res_keys is None
    d3 = fake_quantize_kv(kv(D), SPEC3)
    assert torch.allclose(layer.keys, torch.cat([kv(A3, B3, C3), d3], dim=-2), atol=1e-6)


def test_spec_refuses_what_llmc_does_not_build():
    with pytest.raises(ValueError, match="per_tensor with the Naive"):
        KVQuantSpec("Kivi", 8, True, "per_tensor", static=True)
    with pytest.raises(ValueError, match="valid: per_token, per_tensor, per_group"):
        KVQuantSpec("Naive", 8, True, "per_channel")
    with pytest.raises(ValueError, match="2..16"):
        KVQuantSpec("Naive", 1)


def _tiny(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from conftest import _pydoc_texts

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    samples = [tiny_tokenizer(t)["input_ids"][:40] for t in _pydoc_texts()[10:13]]
    return model, samples


def _parallel_ppl(model, samples) -> float:
    """Ordinary perplexity of the samples, one full causal forward each (no cache)."""
    losses = []
    with torch.no_grad():
        for s in samples:
            ids = torch.tensor([s])
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            losses += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").tolist()
    return math.exp(sum(losses) / len(losses))


def test_decode_ppl_equals_parallel_ppl_and_16_bit_kv_leaves_it(tiny_model_dir, tiny_tokenizer):
    model, samples = _tiny(tiny_model_dir, tiny_tokenizer)
    ref = _parallel_ppl(model, samples)
    res = decode_perplexity(model, samples, progress=False)
    assert res.tokens == sum(len(s) - 1 for s in samples) == 117 and res.samples == 3
    assert res.ppl == pytest.approx(ref, rel=1e-5)
    for method in ("Naive", "Kivi"):
        q16 = decode_perplexity(model, samples, new_cache=KVCacheQuantizer(KVQuantSpec(method, 16)).new_cache,
                                progress=False)
        assert q16.ppl == pytest.approx(ref, rel=1e-4)
    capped = decode_perplexity(model, samples, max_tokens=50, progress=False)
    assert capped.tokens == 50 and capped.samples == 2  # llmc's num_eval_tokens


def test_static_kv_ranges_are_the_calibration_min_max(tiny_model_dir, tiny_tokenizer):
    model, samples = _tiny(tiny_model_dir, tiny_tokenizer)
    batches = [torch.tensor([samples[0][:32], samples[1][:32]])]
    ranges = calibrate_kv_ranges(model, batches, "cpu")
    from transformers import DynamicCache

    from accbench.evaluate.backends.hf import cache_kwarg

    cache = DynamicCache(config=model.config)  # the keys of layer 0, independently: a plain cache, one forward
    with torch.no_grad():
        model(input_ids=batches[0], use_cache=True, **{cache_kwarg(model): cache})
    seen = cache.layers[0].keys
    assert sorted(ranges) == [0, 1]
    assert float(ranges[0][0][0]) == pytest.approx(float(seen.min())) and \
        float(ranges[0][0][1]) == pytest.approx(float(seen.max()))
    q = KVCacheQuantizer(KVQuantSpec("Naive", 8, True, "per_tensor", static=True), ranges)
    res = decode_perplexity(model, samples, new_cache=q.new_cache, progress=False)
    assert res.ppl == pytest.approx(_parallel_ppl(model, samples), rel=0.05)


def test_fewer_kv_bits_raise_decode_ppl_on_the_builtin_model():
    from accbench.data.text import load_texts
    from accbench.models import load_model

    loaded = load_model("builtin:tiny-llama", "float32", device="cpu")
    texts = load_texts("builtin:pydoc")
    samples = [loaded.tokenizer(t)["input_ids"][:64] for t in texts[:3]]
    base = decode_perplexity(loaded.model, samples, progress=False).ppl
    rel = {}
    for bit in (8, 4, 3, 2):
        q = KVCacheQuantizer(KVQuantSpec("Naive", bit, False, "per_token"))
        rel[bit] = decode_perplexity(loaded.model, samples, new_cache=q.new_cache, progress=False).ppl / base - 1
    assert abs(rel[8]) < 0.005, rel
    assert rel[8] < rel[4] < rel[3] < rel[2], rel
    assert rel[2] > 0.05, rel
