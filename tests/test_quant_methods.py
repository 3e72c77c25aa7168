"""Methods and the blockwise runner on tiny Llamas: AWQ/SmoothQuant equivalence, GPTQ vs RTN, block I/O."""

from __future__ import annotations

import copy

import pytest
import torch

from accbench.errors import AccbenchError
from accbench.quant.blockwise import catch_block_inputs, run_blockwise, trace_block
from accbench.quant.gptq import HessianAccumulator, gptq_quantize_weight
from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec, fake_quantize_weight
from accbench.quant.runner import check_quant, fake_quantize_model, transform_model
from accbench.quant.spec import QuantSpec


pytestmark = pytest.mark.usefixtures("one_thread")


def _llama(kv_heads: int = 4, seed: int = 0, hidden: int = 64, intermediate: int = 128):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    # give the norms non-trivial weights and a few outlier channels, as trained models have
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(torch.rand_like(p) + 0.5)
                p[:3] *= 8
    return model


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 48), generator=g)


def _spec(method: str, bit: int = 3, act: ActQuantSpec | None = None, **special) -> QuantSpec:
    from accbench.quant.methods import METHOD_SPECIAL_KEYS

    return QuantSpec(method, WeightQuantSpec(bit, False, "per_group", 32), act,
                     {**METHOD_SPECIAL_KEYS[method], **special}, False, 48)


def test_trace_block_finds_llama_subsets():
    block = _llama().model.layers[0]
    x = torch.randn(1, 8, 64)
    cos_sin = _llama().model.rotary_emb(x, torch.arange(8)[None])
    subsets = trace_block(block, x, {"position_embeddings": cos_sin, "attention_mask": None})
    got = [(s.layers, s.prev, s.inspect) for s in subsets]
    assert got == [
        (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "input_layernorm", "self_attn"),
        (["self_attn.o_proj"], "self_attn.v_proj", "self_attn.o_proj"),
        (["mlp.gate_proj", "mlp.up_proj"], "post_attention_layernorm", "mlp"),
        (["mlp.down_proj"], "mlp.up_proj", "mlp.down_proj"),
    ]


def test_trace_block_skips_v_to_o_under_gqa():
    model = _llama(kv_heads=2)
    x = torch.randn(1, 8, 64)
    subsets = trace_block(model.model.layers[0], x, {"position_embeddings": model.model.rotary_emb(x, torch.arange(8)[None])})
    o = next(s for s in subsets if s.layers == ["self_attn.o_proj"])
    assert o.prev is None  # v_proj has 32 outputs, o_proj 64 inputs: no channel-wise scale between them


def test_catch_and_blockwise_feed_float_outputs(ids):
    model = _llama()
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    inputs = catch_block_inputs(model, model.model.layers, [ids[:2], ids[2:]], "cpu")
    assert [h.shape for h in inputs.hidden] == [(2, 48, 64), (2, 48, 64)]
    seen = []

    def record(i, block, inp):
        seen.append(torch.cat(inp.hidden))
        for lin in (m for m in block.modules() if isinstance(m, torch.nn.Linear)):
            lin.weight.data = fake_quantize_weight(lin.weight.data, WeightQuantSpec(2, False, "per_group", 32))

    run_blockwise(model.model.layers, inputs, "cpu", record, quant_out=False)
    torch.testing.assert_close(seen[0], hs[0])
    torch.testing.assert_close(seen[1], hs[1], rtol=1e-5, atol=1e-5)  # float outputs, before the block changed


def test_quant_out_feeds_quantized_outputs(ids):
    model = _llama()
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    inputs = catch_block_inputs(model, model.model.layers, [ids], "cpu")
    seen = []

    def record(i, block, inp):
        seen.append(inp.hidden[0])
        for lin in (m for m in block.modules() if isinstance(m, torch.nn.Linear)):
            lin.weight.data = fake_quantize_weight(lin.weight.data, WeightQuantSpec(2, False, "per_group", 32))

    run_blockwise(model.model.layers, inputs, "cpu", record, quant_out=True)
    assert (seen[1] - hs[1]).abs().max() > 1e-2  # block 1 saw block 0's 2-bit output


def test_oom_names_the_block(ids):
    model = _llama()
    inputs = catch_block_inputs(model, model.model.layers, [ids], "cpu")

    def boom(i, block, inp):
        if i == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(AccbenchError, match=r"decoder block 1 \(LlamaDecoderLayer\)") as e:
        run_blockwise(model.model.layers, inputs, "cpu", boom)
    assert "calib.bs" in e.value.hint and "n_samples" in e.value.hint


@pytest.mark.parametrize("method,act", [("Awq", None), ("SmoothQuant", ActQuantSpec())])
def test_transform_is_equivalent(method, act, ids):
    model = _llama()
    ref = model(ids).logits
    spec = _spec(method, act=act)
    state = transform_model(model, spec, [ids], "cpu")
    assert state.scales  # it did scale something
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), _llama().state_dict().values()))
    assert changed
    torch.testing.assert_close(model(ids).logits, ref, rtol=1e-4, atol=1e-4)


def test_awq_clip_v1_changes_weights_v2_keeps_them(ids):
    m1, m2 = _llama(), _llama()
    transform_model(m1, _spec("Awq", weight_clip=True, clip_version="v1"), [ids], "cpu")
    s2 = transform_model(m2, _spec("Awq", weight_clip=True, clip_version="v2"), [ids], "cpu")
    assert s2.clips and all(lo.shape == hi.shape for lo, hi in s2.clips.values())
    ref = _llama()(ids).logits
    torch.testing.assert_close(m2(ids).logits, ref, rtol=1e-4, atol=1e-4)
    assert (m1(ids).logits - ref).abs().max() > 1e-4


def _logit_mse(model, ids, ref) -> float:
    with torch.no_grad():
        return float((model(ids).logits - ref).pow(2).mean())


def test_methods_beat_rtn_on_block_outputs(ids):
    ref = _llama()(ids).logits
    err = {}
    for method in ("RTN", "Awq", "GPTQ"):
        model = _llama()
        spec = _spec(method, bit=3)
        state = transform_model(model, spec, [ids], "cpu")
        fake_quantize_model(model, spec, [ids], "cpu", state)
        err[method] = _logit_mse(model, ids, ref)
    assert err["Awq"] < err["RTN"] and err["GPTQ"] < err["RTN"], err


def test_smoothquant_w8a8_close_and_hooks_quantize_inputs(ids):
    model = _llama()
    ref = model(ids).logits
    spec = QuantSpec("SmoothQuant", WeightQuantSpec(8, True, "per_channel"), ActQuantSpec(8), {"alpha": 0.5})
    state = transform_model(model, spec, [ids], "cpu")
    handles = fake_quantize_model(model, spec, [ids], "cpu", state)
    assert len(handles) == 14  # 7 linears x 2 blocks
    with_act = model(ids).logits
    for h in handles:
        h.remove()
    without_act = model(ids).logits
    assert 0 < float((with_act - ref).detach().abs().max()) < 0.1
    assert not torch.equal(with_act, without_act)


def test_static_act_ranges_are_calibrated(ids):
    model = _llama()
    spec = QuantSpec("RTN", WeightQuantSpec(8, True, "per_channel"), ActQuantSpec(8, True, "per_tensor", True), {})
    state = transform_model(model, spec, [ids], "cpu")
    assert len(state.act_ranges) == 14
    lo, hi = state.act_ranges["model.layers.0.self_attn.q_proj"]
    x = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))
    torch.testing.assert_close(lo, x.min())
    torch.testing.assert_close(hi, x.max())
    fake_quantize_model(model, spec, [ids], "cpu", state)
    assert torch.isfinite(model(ids).logits).all()


def _correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    x = torch.randn(n, d, generator=g) @ mix
    x[:, :4] *= 10  # outlier channels
    return x


@pytest.mark.parametrize("actorder,static_groups", [(False, False), (True, False), (True, True)])
def test_gptq_beats_rtn_on_layer_reconstruction(actorder, static_groups):
    torch.manual_seed(0)
    w = torch.randn(96, 128)
    x = _correlated_inputs(2048, 128)
    acc = HessianAccumulator(128, "cpu")
    acc.add(x[None])
    spec = WeightQuantSpec(3, False, "per_group", 32)
    q, _ = gptq_quantize_weight(w, acc.H, spec, blocksize=32, actorder=actorder, static_groups=static_groups)
    rtn = fake_quantize_weight(w, spec)
    e_gptq = float((x @ (q - w).t()).pow(2).mean())
    e_rtn = float((x @ (rtn - w).t()).pow(2).mean())
    assert e_gptq < 0.7 * e_rtn, (e_gptq, e_rtn)
    # every GPTQ value lies on its group's 3-bit grid: at most 8 distinct values per row and group
    # (with actorder and dynamic groups, the groups are runs of the permuted columns, as in llmc)
    cols = torch.argsort(torch.diag(acc.H), descending=True) if actorder and not static_groups else torch.arange(128)
    qq = q[:, cols]
    assert max(len(torch.unique(qq[r, g : g + 32])) for r in range(96) for g in range(0, 128, 32)) <= 8


def test_gptq_equals_rtn_for_uncorrelated_inputs():
    # with H diagonal no error is propagated, so GPTQ rounds like RTN (per-channel ranges from the same W)
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    H = torch.diag(torch.rand(64) + 0.5)
    spec = WeightQuantSpec(4, True, "per_channel")
    q, _ = gptq_quantize_weight(w, H, spec, blocksize=16)
    torch.testing.assert_close(q, fake_quantize_weight(w, spec))


def test_hessian_matches_closed_form():
    x = torch.randn(3, 10, 8)
    acc = HessianAccumulator(8, "cpu")
    acc.add(x[:2])
    acc.add(x[2:])
    flat = x.reshape(-1, 8)
    torch.testing.assert_close(acc.H, 2 / 3 * flat.t() @ flat, rtol=1e-5, atol=1e-5)


def test_check_quant_reports_every_problem():
    model = _llama()
    spec = QuantSpec("GPTQ", WeightQuantSpec(4, False, "per_group", 48), None,
                     {"percdamp": 0.0, "blocksize": 128, "owq": True})
    with pytest.raises(AccbenchError) as e:
        check_quant(model, spec, has_calib=False)
    msg = str(e.value)
    assert "group_size 48 does not divide the input dimension 64 of model.layers.0.self_attn.q_proj" in msg
    assert "[16, 32, 64]" in msg  # the group sizes that would fit
    assert "needs calibration data" in msg and "percdamp" in msg and "owq" in msg


def test_check_quant_without_blocks():
    class NoBlocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

    with pytest.raises(AccbenchError, match="cannot quantize: could not find the decoder blocks"):
        check_quant(NoBlocks(), _spec("RTN"), has_calib=True)


def test_quantize_copy_leaves_original_alone(ids):
    model = _llama()
    twin = copy.deepcopy(model)
    spec = _spec("GPTQ")
    fake_quantize_model(twin, spec, [ids], "cpu", transform_model(twin, spec, [ids], "cpu"))
    torch.testing.assert_close(model(ids).logits, _llama()(ids).logits)
