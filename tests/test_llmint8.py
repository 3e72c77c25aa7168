"""LLM.int8(): the decomposition against an independent computation, llmc's threshold semantics at both ends
(no outliers: plain W8A8 RTN; threshold 0: every dimension kept, the float model), and outliers kept in full
precision beating plain W8A8 on a model with outlier channels."""

from __future__ import annotations

import pytest
import torch

from quarot_fixtures import kl, logits, quantized, spec, tiny_llama, token_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_decomposition_equals_an_independent_computation():
    from accbench.quant.llmint8 import decompose
    from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec

    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    x[1, 3, 4] = 9.0  # one token reaches the threshold in column 4: the whole column is an outlier
    x[0, 0, 11] = -7.5
    w = torch.randn(8, 16)
    xm, wm = decompose(x, w, 6.0, WeightQuantSpec(8, True, "per_channel"), ActQuantSpec(8, True, "per_token"))
    out = torch.tensor([4, 11])
    keep = torch.tensor([c for c in range(16) if c not in (4, 11)])
    assert torch.equal(xm[..., out], x[..., out]) and torch.equal(wm[:, out], w[:, out])
    xs = x[..., keep].abs().amax(-1, keepdim=True) / 127  # symmetric int8 per token, over the kept columns
    assert torch.allclose(xm[..., keep], torch.round(x[..., keep] / xs).clamp(-128, 127) * xs, atol=1e-6)
    ws = w[:, keep].abs().amax(-1, keepdim=True) / 127
    assert torch.allclose(wm[:, keep], torch.round(w[:, keep] / ws).clamp(-128, 127) * ws, atol=1e-6)


def test_no_outliers_is_plain_w8a8_rtn_and_threshold_zero_keeps_everything():
    base = tiny_llama()
    ids = token_batch()
    rtn = logits(quantized(base, spec("RTN", 8, 8, symmetric=True)), ids)
    none = logits(quantized(base, spec("LlmInt8", 8, 8, symmetric=True, threshold=1e9)), ids)
    assert torch.equal(none, rtn)
    every = logits(quantized(base, spec("LlmInt8", 8, 8, symmetric=True, threshold=0.0)), ids)
    assert torch.equal(every, logits(base, ids))  # llmc: |x| >= 0 holds everywhere


def test_outliers_kept_beat_plain_w8a8():
    base = tiny_llama()
    ids = token_batch()
    ref = logits(base, ids)
    plain = kl(ref, logits(quantized(base, spec("RTN", 8, 8, symmetric=True)), ids))
    int8 = kl(ref, logits(quantized(base, spec("LlmInt8", 8, 8, symmetric=True, threshold=6.0)), ids))
    assert int8 < 0.1 * plain, (plain, int8)
    assert (plain, int8) == pytest.approx((4.7167e-4, 4.754e-6), rel=0.05)


def test_checks_name_what_llmint8_needs():
    from accbench.quant.llmint8 import check
    from accbench.quant.quantizer import WeightQuantSpec
    from dataclasses import replace

    model = tiny_llama(outliers=False)
    assert "add a quant.act section" in check(model, spec("LlmInt8", 8, None))[0]
    grouped = replace(spec("LlmInt8", 8, 8), weight=WeightQuantSpec(8, True, "per_group", 32))
    assert "per_group" in check(model, grouped)[0]
    assert check(model, spec("LlmInt8", 8, 8)) == []


@pytest.mark.slow
def test_builtin_w8a8_outliers_kept():
    """The built-in model, 48 test windows of 256 tokens, W8A8 symmetric (llmc's LlmInt8 config): perplexity and
    KL to the float model, pinned (the numbers in docs/quantization.md)."""
    from quarot_fixtures import builtin_setup
    from test_quant_builtin import _log_probs, _ppl_and_kl

    model, windows, ref = builtin_setup()
    got = {name: _ppl_and_kl(_log_probs(quantized(model, spec(m, 8, 8, symmetric=True, **o)), windows),
                             ref, windows)
           for name, m, o in (("RTN", "RTN", {}), ("LlmInt8", "LlmInt8", {"threshold": 6.0}))}
    print(got)
    pinned = {"RTN": (55.9273, 0.00578), "LlmInt8": (55.6237, 0.00008)}
    for name, (ppl, kld) in pinned.items():
        assert got[name][0] == pytest.approx(ppl, rel=2e-4) and got[name][1] == pytest.approx(kld, rel=0.05, abs=5e-6)
    assert got["LlmInt8"][1] < 0.1 * got["RTN"][1]
