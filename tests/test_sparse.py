"""Sparsity methods on tiny models, each checked against an independent computation: masks (exact counts,
2:4 groups), Wanda's scores from the dense model's own hidden states, ShortGPT's Block Influence from hooks on
a full forward, the shortened model running, generating and saving; and the sparse config section."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from accbench.sparse.masks import n_m_mask, unstructured_mask
from accbench.sparse.runner import sparsify_model
from accbench.sparse.spec import SparseSpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny4(tiny_tokenizer):
    """A random 4-block Llama (hidden 64), weights scaled up so each block changes the hidden state visibly,
    and 4 calibration samples of 64 tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=0, eos_token_id=1, pad_token_id=1, initializer_range=0.1)
    model = LlamaForCausalLM(cfg).eval()
    batches = [torch.randint(2, len(tiny_tokenizer), (4, 64), generator=torch.Generator().manual_seed(1))]
    return model, batches


def _linears(model) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.model.layers.named_modules() if isinstance(m, nn.Linear)}


# ----------------------------------------------------------------------------- masks


def test_unstructured_masks_remove_exactly_the_ratio():
    score = torch.rand(8, 20, generator=torch.Generator().manual_seed(0))
    row = unstructured_mask(score, 0.3, per_row=True)
    assert row.sum(1).tolist() == [6] * 8  # int(20 * 0.3) per row
    kept_min = score.masked_fill(row, float("inf")).min(1).values
    dropped_max = score.masked_fill(~row, float("-inf")).max(1).values
    assert (dropped_max < kept_min).all()  # the lowest of each row went
    layer = unstructured_mask(score, 0.3, per_row=False)
    assert int(layer.sum()) == 48 and score[layer].max() < score[~layer].min()
    ties = torch.ones(4, 8)  # all equal: still exactly half, not "everything <= threshold"
    assert int(unstructured_mask(ties, 0.5, per_row=False).sum()) == 16


def test_n_m_mask_keeps_the_n_best_of_every_m():
    score = torch.rand(6, 16, generator=torch.Generator().manual_seed(1))
    mask = n_m_mask(score, 2, 4)
    groups, drop = score.reshape(6, 4, 4), mask.reshape(6, 4, 4)
    assert (drop.sum(-1) == 2).all()
    assert (groups.masked_fill(drop, float("-inf")).max(-1).values
            >= groups.masked_fill(~drop, float("-inf")).max(-1).values).all()
    assert (groups.masked_fill(drop, float("inf")).min(-1).values
            >= groups.masked_fill(~drop, float("-inf")).max(-1).values).all()
    with pytest.raises(ValueError, match="multiple of M"):
        n_m_mask(torch.rand(2, 6), 2, 4)


# ----------------------------------------------------------------------------- Magnitude and Wanda


@pytest.mark.parametrize("method", ["Magnitude", "Wanda"])
def test_2_4_has_exactly_two_nonzeros_in_every_four(tiny4, method):
    base, batches = tiny4
    model = copy.deepcopy(base)
    _, stats = sparsify_model(model, SparseSpec(method, 0.5, (2, 4)), batches, "cpu")
    for name, lin in _linears(model).items():
        nz = (lin.weight != 0).reshape(lin.out_features, -1, 4).sum(-1)
        assert (nz == 2).all(), name
    assert stats.achieved_sparsity == 0.5 and stats.pruned * 2 == stats.total
    assert base.model.layers[0].self_attn.q_proj.weight.count_nonzero() == 64 * 64  # the original untouched


@pytest.mark.parametrize("method,sparsity", [("Magnitude", 0.5), ("Wanda", 0.5), ("Magnitude", 0.3), ("Wanda", 0.75),
                                             ("Wanda", 0.7)])
def test_achieved_sparsity_is_the_ratio(tiny4, method, sparsity):
    model = copy.deepcopy(tiny4[0])
    _, stats = sparsify_model(model, SparseSpec(method, sparsity), tiny4[1], "cpu")
    want = 0
    for lin in _linears(model).values():
        rows, cols = lin.weight.shape
        k = rows * int(cols * sparsity) if method == "Wanda" else int(rows * cols * sparsity)  # row / layer groups
        assert int((lin.weight == 0).sum()) == k
        want += k
    assert stats.pruned == want
    # llmc's count int(n * ratio) per group: the ratio itself when it is a whole number of weights (64 and 128
    # columns), otherwise at most one weight per row below it
    exact = all(float(c * sparsity).is_integer() for c in (64, 128)) or method == "Magnitude"
    assert stats.achieved_sparsity == pytest.approx(sparsity, abs=1e-3) if exact else \
        sparsity - 1 / 64 < stats.achieved_sparsity < sparsity
    if method == "Wanda":  # per output row: every row loses the same number
        q = model.model.layers[0].self_attn.q_proj.weight
        assert (q == 0).sum(1).unique().tolist() == [int(64 * sparsity)]


def test_magnitude_removes_the_smallest_weights_of_each_layer(tiny4):
    base = tiny4[0]
    model = copy.deepcopy(base)
    sparsify_model(model, SparseSpec("Magnitude", 0.5), None, "cpu")
    for name, lin in _linears(model).items():
        w0 = _linears(base)[name].weight.abs()
        gone = lin.weight == 0
        assert w0[gone].max() <= w0[~gone].min(), name


def test_wanda_scores_from_the_dense_models_hidden_states(tiny4):
    """Independently: q_proj of block i reads input_layernorm(h_i), with h_i the dense model's hidden state
    entering block i (output_hidden_states); its score |W|·‖X_j‖₂, lowest half of every row zeroed."""
    base, batches = tiny4
    model = copy.deepcopy(base)
    sparsify_model(model, SparseSpec("Wanda", 0.5), batches, "cpu")
    with torch.no_grad():
        hidden = base(input_ids=batches[0], output_hidden_states=True).hidden_states
    for i in range(4):
        blk = base.model.layers[i]
        with torch.no_grad():
            x = blk.input_layernorm(hidden[i]).reshape(-1, 64)
        w = blk.self_attn.q_proj.weight
        score = w.abs() * x.norm(dim=0)
        drop = torch.zeros_like(w, dtype=torch.bool).scatter_(1, score.argsort(1)[:, :32], True)
        got = model.model.layers[i].self_attn.q_proj.weight
        assert torch.equal(got == 0, drop), i
        assert torch.equal(got[~drop], w[~drop])


def test_wanda_differs_from_magnitude_and_sparsity_out_changes_later_blocks(tiny4):
    base, batches = tiny4
    mag, wanda, out = (copy.deepcopy(base) for _ in range(3))
    sparsify_model(mag, SparseSpec("Magnitude", 0.5), None, "cpu")
    sparsify_model(wanda, SparseSpec("Wanda", 0.5), batches, "cpu")
    sparsify_model(out, SparseSpec("Wanda", 0.5, sparsity_out=True), batches, "cpu")
    q = lambda m, i: m.model.layers[i].self_attn.q_proj.weight == 0  # noqa: E731
    assert not torch.equal(q(mag, 0), q(wanda, 0))
    assert torch.equal(q(wanda, 0), q(out, 0))  # block 0 sees the same inputs
    assert not torch.equal(q(wanda, 3), q(out, 3))  # later blocks see pruned outputs


# ----------------------------------------------------------------------------- ShortGPT


def _independent_bi(model, batches) -> list[float]:
    """1 − cos(input, output) of every block, mean over tokens, from forward hooks on one full forward."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [blk.register_forward_hook(lambda mod, args, kw, out, i=i: seen.__setitem__(
        i, (kw.get("hidden_states", args[0] if args else None), out[0] if isinstance(out, tuple) else out)),
        with_kwargs=True) for i, blk in enumerate(model.model.layers)]
    with torch.no_grad():
        model(input_ids=batches[0], use_cache=False)
    for h in hooks:
        h.remove()
    out = []
    for i in range(len(model.model.layers)):
        a, b = (t.reshape(-1, t.shape[-1]) for t in seen[i])
        out.append(float((1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean()))
    return out


@pytest.mark.parametrize("n", [1, 2])
def test_shortgpt_removes_the_blocks_of_lowest_block_influence(tiny4, n):
    base, batches = tiny4
    bi = _independent_bi(base, batches)
    model = copy.deepcopy(base)
    outcome, stats = sparsify_model(model, SparseSpec("ShortGPT", n_prune_layers=n), batches, "cpu")
    assert outcome.block_influence == pytest.approx(bi, rel=1e-5)
    want = sorted(sorted(range(4), key=lambda i: bi[i])[:n])
    assert outcome.removed_layers == want and len(set(bi)) == 4
    assert len(model.model.layers) == 4 - n == model.config.num_hidden_layers == stats.layers_after
    kept = [i for i in range(4) if i not in want]
    for j, i in enumerate(kept):  # the remaining blocks are the original ones, in order, renumbered
        assert torch.equal(model.model.layers[j].mlp.down_proj.weight, base.model.layers[i].mlp.down_proj.weight)
        assert model.model.layers[j].self_attn.layer_idx == j
    assert stats.achieved_sparsity == pytest.approx(n / 4)


def test_shortened_model_generates_and_saves(tiny4, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    base, batches = tiny4
    model = copy.deepcopy(base)
    sparsify_model(model, SparseSpec("ShortGPT", n_prune_layers=2), batches, "cpu")
    ids = batches[0][:1, :8]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        full = model(input_ids=gen).logits
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert back.config.num_hidden_layers == 2 and len(back.model.layers) == 2
    with torch.no_grad():
        assert torch.allclose(back(input_ids=gen).logits, full, atol=1e-5)
        assert torch.equal(back.generate(ids, max_new_tokens=6, do_sample=False), gen)
    # greedy decoding with the KV cache agrees with recomputing every step without it
    assert torch.equal(gen[0, 8:], full[0, 7:-1].argmax(-1))


# ----------------------------------------------------------------------------- the sparse config section


def _cfg(sparse: dict, **extra):
    from accbench.config import validate_config

    data = {"model": {"path": "m"}, "eval": {"name": "builtin:pydoc", "eval_pos": ["pretrain", "transformed"]},
            "calib": {"name": "builtin:pydoc"}, "sparse": sparse, **extra}
    return validate_config(data)


def test_config_targets():
    assert _cfg({"method": "wanda", "weight": {"sparsity": 0.5}}).sparse.spec() == SparseSpec("Wanda", 0.5)
    s = _cfg({"method": "Magnitude", "weight": {"sparsity_type": "2:4"}}).sparse
    assert s.spec() == SparseSpec("Magnitude", 0.5, (2, 4)) and s.spec().pattern == "2:4"
    assert _cfg({"method": "ShortGPT", "weight": {"n_prune_layers": 9}}).sparse.spec().pattern == "layers"
    import yaml  # an unquoted 2:4 is the YAML 1.1 number 124; it still means 2:4

    for text in ("sparsity_type: 2:4", "sparsity_type: '2:4'"):
        weight = yaml.safe_load(text)
        assert _cfg({"method": "Wanda", "weight": weight}).sparse.spec().n_m == (2, 4), weight
    assert yaml.safe_load("sparsity_type: 4:8") == {"sparsity_type": 248}
    assert _cfg({"method": "Wanda", "weight": {"sparsity_type": 248}}).sparse.spec().n_m == (4, 8)


@pytest.mark.parametrize("sparse,extra,msg", [
    ({"method": "Wanda", "weight": {"sparsity": 0.5, "sparsity_type": "1:4"}}, {}, "contradicts sparsity_type 1:4"),
    ({"method": "Wanda", "weight": {"sparsity_type": "4:2"}}, {}, "neither 'unstructured' nor 'N:M'"),
    ({"method": "Wanda"}, {}, "needs weight.sparsity"),
    ({"method": "ShortGPT", "weight": {"sparsity": 0.5}}, {}, "set weight.n_prune_layers"),
    ({"method": "Wanda", "weight": {"sparsity": 1.0}}, {}, "less than 1"),
    ({"method": "Wandda", "weight": {"sparsity": 0.5}}, {}, "did you mean 'Wanda'"),
    ({"method": "Wanda", "weight": {"sparsity": 0.5}}, {"quant": {"method": "RTN"}}, "not both"),
    ({"method": "Wanda", "weight": {"sparsity": 0.5}}, {"calib": None}, "needs calibration data"),
    ({"method": "Wanda", "weight": {"sparsity": 0.5}, "sparsty_out": True}, {}, "did you mean 'sparsity_out'"),
])
def test_config_errors_name_the_problem(sparse, extra, msg):
    from accbench.errors import ConfigError

    with pytest.raises(ConfigError, match=msg):
        _cfg(sparse, **extra)


def test_fake_quant_is_not_a_sparse_position():
    from accbench.config import validate_config
    from accbench.errors import ConfigError

    with pytest.raises(ConfigError, match="a sparse run has pretrain and transformed"):
        validate_config({"model": {"path": "m"}, "eval": {"name": "builtin:pydoc", "eval_pos": ["fake_quant"]},
                         "sparse": {"method": "Magnitude", "weight": {"sparsity": 0.5}}})


def test_method_names_agree_with_the_table():
    from accbench.config_sparse import SPARSE_METHODS, SparseCfg
    from accbench.sparse.methods import SPARSE_METHODS as TABLE

    assert tuple(TABLE) == SPARSE_METHODS
    for name, m in TABLE.items():
        weight = {"n_prune_layers": 1} if m.removes_layers else {"sparsity": 0.5}
        assert SparseCfg(method=name, weight=weight).needs_calibration() == m.calibrated


def test_removing_a_middle_block_renumbers_the_kv_cache(tiny4):
    """Blocks after a removed one take its place in the KV cache (layer_idx), or cached decoding goes wrong."""
    from accbench.sparse.shortgpt import remove_blocks

    model = copy.deepcopy(tiny4[0])
    remove_blocks(model, model.model.layers, [0, 2])
    assert [blk.self_attn.layer_idx for blk in model.model.layers] == [0, 1]
    ids = tiny4[1][0][:1, :8]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
        full = model(input_ids=gen).logits
    assert torch.equal(gen[0, 8:], full[0, 7:-1].argmax(-1))
