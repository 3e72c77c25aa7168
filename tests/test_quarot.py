"""QuaRot: Hadamard matrices, the rotated float model's equivalence, W4A4 with rotation against without, GPTQ's
online_rotate on a saved rotated model, and the checks that refuse what cannot be rotated."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from quarot_fixtures import kl, logits, quantized, spec, tiny_llama, token_batch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n", [2, 12, 20, 28, 36, 52, 60, 96, 108, 140, 344])
def test_hadamard_matrices_are_orthogonal_with_equal_magnitudes(n):
    from accbench.quant.hadamard import hadamard_matrix

    H = hadamard_matrix(n)
    assert torch.allclose(H @ H.T, torch.eye(n, dtype=H.dtype), atol=1e-12)
    assert torch.allclose(H.abs(), torch.full_like(H, 1 / math.sqrt(n)), atol=1e-12)


def test_fast_transform_equals_sylvester_and_sizes_without_a_construction_are_named():
    from accbench.quant.hadamard import fwht, hadamard_factors, paley_matrix

    H2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    syl = H2
    for _ in range(5):
        syl = torch.kron(syl, H2)
    x = torch.randn(3, 64, dtype=torch.float64)
    assert torch.allclose(fwht(x), x @ syl / 8, atol=1e-12)
    assert hadamard_factors(11008) == (344, 32)  # Llama-2-7B's MLP width: Paley I over GF(7^3)
    assert hadamard_factors(14336) == (28, 512)  # Llama-3-8B's: Paley I over GF(27)
    assert hadamard_factors(156) is None and paley_matrix(156) is None


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("mode,online", [("hadamard", False), ("hadamard", True), ("random", True)])
def test_rotated_float_model_computes_the_same_logits(tied, mode, online):
    from accbench.quant.runner import transform_model

    base = tiny_llama(tied=tied)
    ids = token_batch()
    ref = logits(base, ids)
    model = copy.deepcopy(base)
    transform_model(model, spec("Quarot", 4, 4, rotate_mode=mode, online_rotate=online, fp32_had=True), None, "cpu")
    assert (logits(model, ids) - ref).abs().max() <= 1e-4
    # and the weights did change: every linear reading the residual stream is rotated
    assert not torch.allclose(model.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)
    assert torch.all(model.model.layers[0].input_layernorm.weight == 1)
    assert model.lm_head.weight is not model.model.embed_tokens.weight


def test_w4a4_with_rotation_beats_without():
    base = tiny_llama()
    ids = token_batch()
    ref = logits(base, ids)
    rtn = kl(ref, logits(quantized(base, spec("RTN", 4, 4)), ids))
    quarot = kl(ref, logits(quantized(base, spec("Quarot", 4, 4)), ids))
    online = kl(ref, logits(quantized(base, spec("Quarot", 4, 4, online_rotate=True, fp32_had=True)), ids))
    assert quarot < 0.1 * rtn and online < 0.1 * rtn, (rtn, quarot, online)
    assert (rtn, quarot, online) == pytest.approx((0.018631, 0.0012503, 0.0010011), rel=0.05)


def test_gptq_online_rotate_restores_a_saved_rotated_model(tmp_path):
    """quarot_comb_gptq: step 1 saves the rotated weights (tied embeddings untied in config.json); the saved
    checkpoint alone lacks the online Hadamards, GPTQ's online_rotate installs them again."""
    from transformers import AutoModelForCausalLM

    from accbench.quant.gptq import prepare
    from accbench.quant.runner import transform_model
    from accbench.quant.spec import QuantState

    base = tiny_llama(tied=True)
    ids = token_batch()
    ref = logits(base, ids)
    model = copy.deepcopy(base)
    transform_model(model, spec("Quarot", 4, 4, online_rotate=True, fp32_had=True), None, "cpu")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert loaded.config.tie_word_embeddings is False
    assert (logits(loaded, ids) - ref).abs().max() > 1e-2  # without the online rotation: another function
    prepare(loaded, spec("GPTQ", 4, 4, online_rotate=True, fp32_had=True), QuantState())
    assert (logits(loaded, ids) - ref).abs().max() <= 1e-4


def test_checks_refuse_what_cannot_be_rotated():
    from transformers import GPT2Config, GPT2LMHeadModel

    from accbench.quant.quarot import check

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert "Llama-style" in check(gpt2, spec("Quarot", 4, 4))[0]
    odd = tiny_llama()
    odd.config.hidden_size = 156  # no Paley construction (llmc stores Williamson's)
    problems = check(odd, spec("Quarot", 4, 4))
    assert len(problems) == 1 and "size 156 (hidden_size)" in problems[0] and "rotate_mode: random" in problems[0]
    assert check(odd, spec("Quarot", 4, 4, rotate_mode="random")) == []


@pytest.mark.slow
def test_builtin_w4a4_quarot_far_below_rtn():
    """The built-in model (outlier channels), 48 test windows of 256 tokens: W4A4 (per-channel weights, per-token
    activations, asymmetric, as llmc's QuaRot configs at 4 bits) perplexity and KL to the float model, pinned
    (the numbers in docs/quantization.md). QuaRot with online Hadamards cuts RTN's KL by more than 10x."""
    from quarot_fixtures import builtin_setup
    from test_quant_builtin import _log_probs, _ppl_and_kl

    model, windows, ref = builtin_setup()
    torch.manual_seed(42)  # base.seed: the rotation's signs
    got = {name: _ppl_and_kl(_log_probs(quantized(model, spec(m, 4, 4, **o)), windows), ref, windows)
           for name, m, o in (("RTN", "RTN", {}), ("Quarot", "Quarot", {}),
                              ("Quarot online", "Quarot", {"online_rotate": True, "fp32_had": True}))}
    print(got)
    pinned = {"RTN": (185.0029, 1.07761), "Quarot": (92.6843, 0.43833), "Quarot online": (63.2145, 0.08719)}
    for name, (ppl, kld) in pinned.items():
        assert got[name][0] == pytest.approx(ppl, rel=2e-3) and got[name][1] == pytest.approx(kld, rel=0.03), got
    assert got["Quarot online"][1] < 0.1 * got["RTN"][1]
