"""Small Llama models with activation outliers, and the quantize-and-compare helpers the QuaRot and LLM.int8()
tests share."""

from __future__ import annotations

import copy
from typing import Any

import torch


def tiny_llama(tied: bool = False, outliers: bool = True, seed: int = 0) -> Any:
    """A random 2-layer Llama (hidden 64, GQA) whose norms are not all ones and, with `outliers`, whose
    input_layernorm and post_attention_layernorm amplify two channels 40x while the linears reading them divide
    those columns by 40 (the function is unchanged; the activations get the outlier channels of real LLMs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.dim() == 2 and "embed" not in name and "lm_head" not in name:
                p.mul_(3.0)  # decoder weights that matter, so quantization visibly moves the logits
        if outliers:
            for block in model.model.layers:
                for norm, readers in ((block.input_layernorm, (block.self_attn.q_proj, block.self_attn.k_proj,
                                                               block.self_attn.v_proj)),
                                      (block.post_attention_layernorm, (block.mlp.gate_proj, block.mlp.up_proj))):
                    norm.weight[[5, 17]] *= 40
                    for lin in readers:
                        lin.weight[:, [5, 17]] /= 40
    return model


def token_batch(seed: int = 1, n: int = 4, length: int = 48) -> torch.Tensor:
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def kl(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Mean KL(ref || out) over positions, from logits."""
    lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(out, -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def quantized(base: Any, spec: Any, batches: list | None = None) -> Any:
    """A copy of `base` through the runner's transform and fake quantization."""
    from accbench.quant.runner import fake_quantize_model, transform_model

    model = copy.deepcopy(base)
    state = transform_model(model, spec, batches, "cpu")
    fake_quantize_model(model, spec, batches, "cpu", state)
    return model


def spec(method: str, wbit: int, abit: int | None, symmetric: bool = False, **special: Any) -> Any:
    """Per-channel weights, per-token dynamic activations, the method's defaults with `special` on top."""
    from accbench.quant.methods import METHOD_SPECIAL_KEYS
    from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec
    from accbench.quant.spec import QuantSpec

    act = ActQuantSpec(abit, symmetric, "per_token") if abit else None
    return QuantSpec(method, WeightQuantSpec(wbit, symmetric, "per_channel"), act,
                     {**METHOD_SPECIAL_KEYS[method], **special})


def builtin_setup(n_windows: int = 48) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The built-in model, its first `n_windows` test windows of 256 tokens, and its log-probs on them."""
    from test_quant_builtin import _log_probs

    from accbench.data.text import load_texts, ppl_token_stream
    from accbench.models import load_model

    loaded = load_model("builtin:tiny-llama", "float32", device="cpu")
    stream = ppl_token_stream("builtin:pydoc", load_texts("builtin:pydoc"), loaded.tokenizer, 256)
    windows = stream[: n_windows * 256].view(n_windows, 256)
    return loaded.model, windows, _log_probs(loaded.model, windows)
