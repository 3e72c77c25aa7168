"""QuaRot (Ashkboos et al. 2024): rotate the residual stream so that weights and activations quantize well.

The rotated model computes the same function (the `transformed` position), llmc's `Quarot` step by step:
1. RMSNorm weights are folded into the linears that read the norm's output (q/k/v, gate/up, the LM head) and
   set to 1; an RMSNorm commutes with an orthogonal rotation, so the residual stream can be rotated.
2. The residual stream is rotated by an orthogonal Q (`rotate_mode: hadamard`, a randomized Hadamard D H;
   `random`, a random orthogonal matrix): embeddings E Q; every linear reading the stream W Q (q/k/v,
   gate/up, head); every linear writing to it Q^T W (o_proj, down_proj). Tied embeddings are untied first.
3. With `online_rotate` (llmc's special option), down_proj's input is rotated at run time by a Hadamard of
   the MLP width (its weight takes W H), and o_proj's input across heads (v_proj's output is rotated per head
   offline, o_proj's weight takes W (H_heads kron H_head_dim)). `fp32_had` computes the run-time rotation in
   float32 instead of the activations' dtype.
Weights are then rounded with RTN (GPTQ through llmc's `quarot_comb_gptq`: step 1 saves the rotated model, step 2
quantizes it with GPTQ and `online_rotate`), activations per token as the quant section says.

Unlike llmc (and QuaRot's reference code), the embeddings' mean is not subtracted: that is only equivalent
for LayerNorm models, and for an RMSNorm model it changes the function. The run-time rotations are forward
pre-hooks, not part of a saved checkpoint: a saved transformed model is equivalent only with them (llmc's
step 2 installs them again with `online_rotate`).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn as nn

from accbench.quant.hadamard import Rotation, hadamard_factors, hadamard_right, random_hadamard, random_orthogonal
from accbench.quant.options import MethodOptions
from accbench.quant.spec import QuantSpec, QuantState

log = logging.getLogger("accbench.quant")

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")  # pre-RMSNorm blocks with llama's module names
ATTN_IN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_IN = ("mlp.gate_proj", "mlp.up_proj")
O_PROJ, V_PROJ, DOWN = "self_attn.o_proj", "self_attn.v_proj", "mlp.down_proj"
NORMS = ("input_layernorm", "post_attention_layernorm")


class QuarotOptions(MethodOptions):
    """QuaRot's `quant.special` options (llmc's names; see the module docstring)."""

    rotate_mode: Literal["hadamard", "random"] = "hadamard"
    online_rotate: bool = False
    fp32_had: bool = False


def _heads(model: Any) -> tuple[int, int, int]:
    """(num_attention_heads, num_key_value_heads, head_dim) from the model's config."""
    c = model.config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return heads, getattr(c, "num_key_value_heads", None) or heads, head_dim


def layout_problems(model: Any, online: bool, hadamard_stream: bool) -> list[str]:
    """What keeps this model from being rotated (QuaRot) or rotated online (GPTQ with online_rotate)."""
    from accbench.models import find_parts

    kind = getattr(model.config, "model_type", None)
    if kind not in ARCHITECTURES:
        return [f"QuaRot / online_rotate need a Llama-style model ({', '.join(ARCHITECTURES)}); "
                f"this one is {kind!r}"]
    parts = find_parts(model)
    needed = ATTN_IN + MLP_IN + (O_PROJ, DOWN) + NORMS
    block = dict(parts.blocks[0].named_modules())
    missing = [n for n in needed if n not in block]
    if missing or parts.norm is None:
        return [f"the decoder blocks lack {', '.join(missing) or 'a final norm'}: QuaRot rotates Llama-style blocks"]
    sizes = {"hidden_size": model.config.hidden_size} if hadamard_stream else {}
    if online:
        heads, _, head_dim = _heads(model)
        sizes.update(intermediate_size=block[DOWN].in_features, num_attention_heads=heads, head_dim=head_dim)
    return [f"no Hadamard matrix of size {n} ({what}) is built here (sizes m * 2^k with m from Paley's "
            "constructions); use rotate_mode: random" + (" and online_rotate: False" if online else "")
            for what, n in sizes.items() if hadamard_factors(n) is None]


def check(model: Any, spec: QuantSpec) -> list[str]:
    opts = QuarotOptions.of(spec)
    return layout_problems(model, opts.online_rotate, opts.rotate_mode == "hadamard")


# ----------------------------------------------------------------------------- offline rotation of weights


def _set(lin: nn.Module, w: torch.Tensor) -> None:
    lin.weight.data = w.to(lin.weight.dtype)


@torch.no_grad()
def rotate_input(lin: nn.Linear, right: Any) -> None:
    """The linear now reads x M instead of x: W <- W M."""
    _set(lin, right(lin.weight.data.double()))


@torch.no_grad()
def rotate_output(lin: nn.Linear, right: Any) -> None:
    """The linear now writes y M instead of y: W <- M^T W, b <- b M."""
    _set(lin, right(lin.weight.data.double().t()).t())
    if lin.bias is not None:
        lin.bias.data = right(lin.bias.data.double()).to(lin.bias.dtype)


@torch.no_grad()
def fuse_norm(norm: nn.Module, linears: list[nn.Linear]) -> None:
    """Fold the RMSNorm's weight into the linears reading its output (W diag(w)); the norm's weight becomes 1."""
    w = norm.weight.data.double()
    for lin in linears:
        _set(lin, lin.weight.data.double() * w.to(lin.weight.device))
    norm.weight.data.fill_(1.0)


def per_head(fn: Any, n_heads: int, head_dim: int) -> Any:
    """Apply `fn` (a rotation of size head_dim) to each head's slice of the last dimension."""
    return lambda x: fn(x.reshape(*x.shape[:-1], n_heads, head_dim)).reshape(x.shape)


def across_heads(x: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """x (H_heads kron I) over the last dimension: a Hadamard across the heads, per position in a head."""
    y = x.reshape(*x.shape[:-1], n_heads, head_dim).transpose(-1, -2)
    return hadamard_right(y).transpose(-1, -2).reshape(x.shape)


def _untie(model: Any, parts: Any) -> None:
    if parts.head.weight is parts.embed.weight or parts.head.weight.data_ptr() == parts.embed.weight.data_ptr():
        log.info("quarot: tied embeddings: the LM head gets its own copy of the embedding matrix")
        parts.head.weight = nn.Parameter(parts.embed.weight.detach().clone())
        model.config.tie_word_embeddings = False


@torch.no_grad()
def rotate_model(model: Any, opts: QuarotOptions, Q: Rotation) -> None:
    """Fold the norms and rotate every weight by Q (and, with online_rotate, the offline halves of the online
    Hadamards); the model computes the same function once `install_online_rotation` has run."""
    from accbench.models import find_parts

    parts = find_parts(model)
    _untie(model, parts)
    fuse_norm(parts.norm, [parts.head])
    rotate_input(parts.head, Q.right)
    parts.embed.weight.data = Q.right(parts.embed.weight.data.double()).to(parts.embed.weight.dtype)
    heads, kv_heads, head_dim = _heads(model)
    for block in parts.blocks:
        mods = dict(block.named_modules())
        fuse_norm(mods[NORMS[0]], [mods[n] for n in ATTN_IN])
        fuse_norm(mods[NORMS[1]], [mods[n] for n in MLP_IN])
        for n in ATTN_IN + MLP_IN:
            rotate_input(mods[n], Q.right)
        for n in (O_PROJ, DOWN):
            rotate_output(mods[n], Q.right)
        if opts.online_rotate:
            rotate_output(mods[V_PROJ], per_head(hadamard_right, kv_heads, head_dim))
            rotate_input(mods[O_PROJ], lambda x: across_heads(per_head(hadamard_right, heads, head_dim)(x),
                                                              heads, head_dim))
            rotate_input(mods[DOWN], hadamard_right)


# ----------------------------------------------------------------------------- run-time (online) rotation


def install_online_rotation(model: Any, fp32_had: bool) -> list:
    """Rotate the inputs of every o_proj (across heads) and down_proj (full Hadamard) at run time (pre-hooks,
    registered before any activation quantization so that the rotated input is what gets quantized)."""
    from accbench.models import find_parts

    heads, _, head_dim = _heads(model)

    def make(full: bool) -> Any:
        def hook(mod: Any, args: tuple) -> tuple:
            x = args[0]
            y = x.float() if fp32_had else x
            y = hadamard_right(y) if full else across_heads(y, heads, head_dim)
            return (y.to(x.dtype),) + tuple(args[1:])
        return hook

    handles = []
    for block in find_parts(model).blocks:
        mods = dict(block.named_modules())
        handles.append(mods[O_PROJ].register_forward_pre_hook(make(False)))
        handles.append(mods[DOWN].register_forward_pre_hook(make(True)))
    model._accbench_online_rotation_handles = handles
    return handles


def prepare(model: Any, spec: QuantSpec, state: QuantState) -> None:
    """QuaRot's whole-model transform: rotate (seeded from base.seed) and install the online rotations."""
    opts = QuarotOptions.of(spec)
    gen = torch.Generator().manual_seed(torch.initial_seed())
    n = model.config.hidden_size
    Q = random_hadamard(n, gen) if opts.rotate_mode == "hadamard" else random_orthogonal(n, gen)
    rotate_model(model, opts, Q)
    if opts.online_rotate:
        install_online_rotation(model, opts.fp32_had)
