"""Tests for the built-in tiny model and datasets (accbench.builtin)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accbench import builtin
from accbench.builtin import BUILTIN_DATASETS, BUILTIN_MODELS, builtin_model_path, builtin_texts

TINY_STEPS = 2


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ACCBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_root_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert builtin.cache_root() == cache
    monkeypatch.delenv("ACCBENCH_CACHE")
    assert builtin.cache_root() == Path.home() / ".cache" / "accbench"


def test_unknown_names_raise(cache: Path) -> None:
    with pytest.raises(ValueError, match="tiny-llama"):
        builtin_model_path("no-such-model")
    with pytest.raises(ValueError, match="pydoc"):
        builtin_texts("no-such-data")
    with pytest.raises(ValueError, match="calib"):
        builtin_texts("pydoc", "validation")
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


@pytest.mark.parametrize("name", list(BUILTIN_DATASETS))
def test_splits_disjoint_and_deterministic(name: str) -> None:
    splits = {s: builtin_texts(name, s) for s in ("train", "test", "calib")}
    assert all(splits.values())
    assert splits == {s: builtin_texts(name, s) for s in splits}
    names = builtin._split_names()
    assert sum(map(len, names.values())) == len(builtin._corpus())
    assert not set(names["train"]) & set(names["test"])
    assert not set(names["train"]) & set(names["calib"])
    assert not set(names["test"]) & set(names["calib"])
    # no held-out document's text appears in train
    train = "\n".join(builtin_texts("pydoc-plain", "train"))
    for doc in builtin_texts("pydoc-plain", "test"):
        assert doc[:300] not in train


def test_structured_split_contains_inserts() -> None:
    plain = builtin_texts("pydoc-plain", "test")
    mixed = builtin_texts("pydoc", "test")
    assert len(plain) == len(mixed)
    assert sum(map(len, mixed)) > 1.2 * sum(map(len, plain))
    assert ">>> d = {" in "".join(mixed) and ">>> d = {" not in "".join(plain)


@pytest.fixture
def tiny_model(cache: Path) -> Path:
    return builtin_model_path("tiny-llama", seed=0, _steps=TINY_STEPS)


def test_loads_with_auto_classes(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.model_type == "llama"
    assert model.config.hidden_size % 128 == 0 and model.config.intermediate_size % 128 == 0
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert tok.model_max_length == model.config.max_position_embeddings
    cfg = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    ids = tok("def f(x):\n    return x", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id and (ids == tok.bos_token_id).sum() == 1
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_tokenizer_round_trips(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    for text in builtin_texts("pydoc", "test")[:3] + ["  ünïcode → 𝔘\ttabs\n\nand   spaces "]:
        ids = tok(text).input_ids
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_cached_and_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    weights = []
    for run in ("a", "b"):
        monkeypatch.setenv("ACCBENCH_CACHE", str(tmp_path / run))
        path = builtin_model_path("tiny-llama", seed=1, _steps=TINY_STEPS)
        assert path == tmp_path / run / "models" / f"tiny-llama-{builtin._VERSION}-seed1-steps{TINY_STEPS}"
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dir left behind
        mtime = (path / "model.safetensors").stat().st_mtime_ns
        assert builtin_model_path("tiny-llama", seed=1, _steps=TINY_STEPS) == path  # cache hit
        assert (path / "model.safetensors").stat().st_mtime_ns == mtime
        weights.append(load_file(path / "model.safetensors"))
        assert (path / "tokenizer.json").read_bytes() == (tmp_path / "a" / path.relative_to(tmp_path / run)
                                                          / "tokenizer.json").read_bytes()
    a, b = weights
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)


def test_embeddings_stay_at_their_random_init(tiny_model: Path) -> None:
    """The input embedding is frozen, so the decoder blocks (what quantizers change) carry the model."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = BUILTIN_MODELS["tiny-llama"]
    assert spec["freeze_embeddings"]
    saved = load_file(tiny_model / "model.safetensors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = LlamaForCausalLM(LlamaConfig.from_pretrained(tiny_model))
    init = fresh.model.embed_tokens.weight.detach()
    assert saved["model.embed_tokens.weight"].equal(init)
    assert not saved["lm_head.weight"].equal(fresh.lm_head.weight.detach())  # the head does train


def test_failed_build_leaves_no_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("crash mid-build")

    monkeypatch.setattr(builtin, "_build", boom)
    with pytest.raises(RuntimeError):
        builtin_model_path("tiny-llama", _steps=TINY_STEPS)
    assert list((cache / "models").iterdir()) == []


@pytest.mark.slow
def test_real_model_builds(cache: Path) -> None:
    path = builtin_model_path("tiny-llama")
    meta = json.loads((path / "accbench_builtin.json").read_text())
    assert meta["spec"]["steps"] == BUILTIN_MODELS["tiny-llama"]["steps"]
    assert 1_000_000 < meta["params"] < 20_000_000
    assert meta["final_train_loss"] < 5.0
    # the point of the model: 3-bit RTN of the decoder Linears must visibly raise held-out perplexity
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tok("\n\n".join(builtin_texts("pydoc", "test")), return_tensors="pt").input_ids
    x = ids[0, : (ids.shape[1] // 256) * 256].view(-1, 256)

    def ppl() -> float:
        with torch.no_grad():
            return math.exp(sum(model(input_ids=w[None], labels=w[None]).loss.item() for w in x) / len(x))

    base = ppl()
    with torch.no_grad():
        for name, mod in model.model.layers.named_modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight.view(mod.weight.shape[0], -1, 32)
                lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
                scale = ((hi - lo) / 7).clamp(min=1e-8)
                zero = torch.round(-lo / scale)
                q = torch.clamp(torch.round(w / scale) + zero, 0, 7)
                mod.weight.copy_(((q - zero) * scale).view_as(mod.weight))
    assert ppl() > 1.005 * base


def test_outlier_channels_preserve_the_function() -> None:
    """v4's outlier channels change the weights a quantizer sees, not what the model computes."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=4)).eval()
    changed = copy.deepcopy(model)
    builtin._add_outlier_channels(changed, 4, 8, 16.0, seed=0)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, changed(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    for a, b in zip(model.model.layers, changed.model.layers):
        ratio = b.input_layernorm.weight / a.input_layernorm.weight
        assert sorted(ratio.tolist()).count(16.0) == 4 and (ratio == 1).sum() == 28
        assert (b.mlp.up_proj.weight.abs().amax(1) / a.mlp.up_proj.weight.abs().amax(1)).round().eq(16).sum() == 8
        w_ratio = b.self_attn.q_proj.weight / a.self_attn.q_proj.weight
        assert torch.allclose(w_ratio, (1 / ratio).expand_as(w_ratio))


def test_remove_outlier_channels_undoes_them_bit_for_bit_and_names_the_columns_they_divided() -> None:
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = BUILTIN_MODELS["tiny-llama"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=4)).eval()
    changed = copy.deepcopy(model)
    builtin._add_outlier_channels(changed, spec["outlier_channels"], spec["outlier_mlp_channels"],
                                  spec["outlier_scale"], seed=3)
    cols = builtin.outlier_read_columns(changed, seed=3)
    assert len(cols) == 14  # 7 linears x 2 blocks
    before, after = dict(model.named_modules()), dict(changed.named_modules())
    for name, c in cols.items():
        ratio = after[name].weight / before[name].weight  # 1/16 on exactly the named columns (up to row scaling)
        ratio = ratio / ratio.amax(1, keepdim=True)
        divided = torch.nonzero((ratio[0] - 1 / 16).abs() < 1e-6).flatten()
        assert sorted(divided.tolist()) == sorted(c.tolist()), name
    builtin.remove_outlier_channels(changed, seed=3)
    for (n, a), b in zip(model.state_dict().items(), changed.state_dict().values()):
        assert torch.equal(a, b), n
