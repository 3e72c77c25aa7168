"""Load, place, inspect and save Hugging Face causal LMs.

`load_model` resolves `builtin:` names, picks a dtype and a placement (one device, a device_map across
GPUs, or per-block offload), and `find_parts` locates the decoder blocks, embeddings, final norm and head
of any common architecture generically, so quantizers and evaluators never special-case a model family.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accbench.errors import ModelLoadError

BUILTIN_PREFIX = "builtin:"
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class LoadedModel:
    """A model ready for evaluation, with the tokenizer and where it came from."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    path: str  # resolved local directory
    device: str  # device of the inputs (embeddings)
    placement: str


@dataclass
class ModelParts:
    """The pieces of a decoder-only LM that blockwise algorithms need."""

    blocks: Any  # torch.nn.ModuleList of decoder blocks
    embed: Any  # input embedding module
    norm: Any | None  # final norm before the head
    head: Any  # output projection (lm_head)
    backbone: Any  # the module that owns `blocks` (e.g. model.model)
    extra_pre: list  # other modules run before the blocks (positional embeddings, rotary)


def resolve_model_path(path: str) -> str:
    """Turn `builtin:NAME` into its cached directory; check that local paths exist."""
    if path.startswith(BUILTIN_PREFIX):
        from accbench.builtin import builtin_model_path

        try:
            return str(builtin_model_path(path[len(BUILTIN_PREFIX):]))
        except ValueError as exc:
            raise ModelLoadError(str(exc), "use builtin:tiny-llama or a local model directory") from None
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"model path {p} has no config.json; it is not a Hugging Face model directory",
                                 "point model.path at the folder holding config.json and the weights")
        return str(p)
    if "/" in path and not path.startswith((".", "/", "~")) and path.count("/") == 1:
        return path  # a hub id; transformers resolves (and downloads) it
    raise ModelLoadError(f"model path not found: {path}", "set model.path to a local directory or builtin:tiny-llama")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_tokenizer(path: str, trust_remote_code: bool = False, use_fast: bool = True) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, use_fast=use_fast)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def load_model(
    path: str,
    torch_dtype: str = "auto",
    trust_remote_code: bool = False,
    tokenizer_path: str | None = None,
    device: str | None = None,
    placement: str = "single",
    num_gpus: int = 1,
    attn_implementation: str | None = None,
    use_fast_tokenizer: bool = True,
    revision: str | None = None,
    peft: str | None = None,
    from_pretrained: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer and place it: 'single', 'device_map' or 'offload'. `revision`,
    `from_pretrained` (extra keyword arguments, as lm-eval's --model_args) go to from_pretrained; `peft` is an
    adapter loaded on top (the `peft` package)."""
    import torch
    from transformers import AutoModelForCausalLM

    local = resolve_model_path(path)
    device = device or default_device()
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(torch_dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if revision:
        kwargs["revision"] = revision
    kwargs.update(from_pretrained or {})
    if placement == "device_map":
        if device.startswith("cuda"):
            n = min(num_gpus, torch.cuda.device_count())
            kwargs["device_map"] = "auto"  # layers spread over the replica's GPUs
            kwargs["max_memory"] = {i: torch.cuda.mem_get_info(i)[0] for i in range(n)}
        else:
            kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(local, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load model from {local}: {exc}",
                             "check model.path, and set model.trust_remote_code: true for custom architectures"
                             ) from None
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"model {local} does not fit in memory",
                             "use model.placement: offload (blocks moved to the GPU one at a time), "
                             "device_map with runner.num_gpus > 1, or a smaller torch_dtype") from None
    if peft:
        model = _with_adapter(model, peft)
    model.eval()
    tokenizer = load_tokenizer(tokenizer_path or local, trust_remote_code, use_fast_tokenizer)
    input_device = place_model(model, device, placement)
    return LoadedModel(model, tokenizer, local, input_device, placement)


def _with_adapter(model: Any, adapter: str) -> Any:
    """A PEFT adapter merged into the model, so every backend and transform sees plain weights."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError(f"model.peft {adapter!r} needs the peft package", "pip install peft") from None
    try:
        return PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the PEFT adapter {adapter}: {exc}", "check model.peft") from None


def place_model(model: Any, device: str, placement: str) -> str:
    """Put the model where it runs; return the device its inputs must be on."""
    import torch

    if placement == "device_map" and getattr(model, "hf_device_map", None):
        return str(next(iter(model.parameters())).device)
    if placement == "offload":
        enable_block_offload(model, device)
        return device
    try:
        model.to(device)
    except torch.OutOfMemoryError:
        model.to("cpu")
        raise ModelLoadError(f"the model does not fit on {device}",
                             "set model.placement: offload, or device_map with runner.num_gpus > 1") from None
    return device


def enable_block_offload(model: Any, device: str) -> list:
    """Keep decoder blocks on CPU and move each to `device` only while it runs (llmc's inference_per_block)."""
    parts = find_parts(model)
    for m in [parts.embed, parts.norm, parts.head, *parts.extra_pre]:
        if m is not None:
            m.to(device)
    def to_device(module: Any, args: Any) -> None:  # hooks must return None, or they replace args/outputs
        module.to(device)

    def to_cpu(module: Any, args: Any, out: Any) -> None:
        module.to("cpu")

    handles = []
    for block in parts.blocks:
        block.to("cpu")
        handles.append(block.register_forward_pre_hook(to_device))
        handles.append(block.register_forward_hook(to_cpu))
    model._accbench_offload_handles = handles
    return handles


def disable_block_offload(model: Any) -> None:
    for h in getattr(model, "_accbench_offload_handles", []):
        h.remove()
    model._accbench_offload_handles = []


def find_parts(model: Any) -> ModelParts:
    """Find blocks, embeddings, final norm and head of a decoder-only LM without per-family code."""
    import torch.nn as nn

    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            kinds = {type(m) for m in mod}
            if len(kinds) == 1 and (best is None or len(mod) > len(best[1])):
                best = (name, mod)
    if best is None:
        raise ModelLoadError(f"could not find the decoder blocks of {type(model).__name__}",
                             "accbench supports decoder-only models whose blocks are one nn.ModuleList")
    blocks_name, blocks = best
    owner_name = blocks_name.rsplit(".", 1)[0] if "." in blocks_name else ""
    backbone = model.get_submodule(owner_name) if owner_name else model
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if embed is None or head is None:
        raise ModelLoadError(f"{type(model).__name__} exposes no input/output embeddings",
                             "accbench needs a causal LM with get_input_embeddings/get_output_embeddings")
    norm = None
    extra = []
    for child_name, child in backbone.named_children():
        if child is blocks or child is embed:
            continue
        lname = child_name.lower()
        if "norm" in lname and norm is None:
            norm = child
        elif isinstance(child, nn.Module) and ("rotary" in lname or "pos" in lname or "project" in lname):
            extra.append(child)
    return ModelParts(blocks, embed, norm, head, backbone, extra)


def linear_layers(block: Any) -> dict[str, Any]:
    """All nn.Linear layers of a block by qualified name, in definition order."""
    import torch.nn as nn

    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}


def save_model(model: Any, tokenizer: Any, out_dir: str | Path, state_dict: dict[str, Any] | None = None) -> Path:
    """Save in Hugging Face format (safetensors) with a tokenizer that transformers 4.x can also load; `state_dict`
    replaces the model's own tensors (a real-quant export)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    disable_block_offload(model)
    if state_dict is None:
        model.save_pretrained(out, safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    _make_tokenizer_config_portable(out)
    return out


def _make_tokenizer_config_portable(out: Path) -> None:
    # transformers 5 writes tokenizer_class "TokenizersBackend", which 4.x does not know
    cfg_path = out / "tokenizer_config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend") and (out / "tokenizer.json").is_file():
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg, indent=2))


def model_fingerprint(path: str, dtype: str, extra: str = "") -> str:
    """A short stable id for a model's weights: path + weight files' size and mtime + dtype + transform."""
    h = hashlib.sha256()
    h.update(f"{os.path.abspath(path)}|{dtype}|{extra}".encode())
    p = Path(path)
    if p.is_dir():
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
