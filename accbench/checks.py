"""Input checks that need no weights: the device, the model folder's tokenizer and safetensors files.

Called by `accbench validate` and at the start of a run, before anything large loads, so a wrong device, a
model folder without a tokenizer or a truncated weights file is an exit 2 that names the key or file and the
fix, not an internal error half-way through loading.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from accbench.errors import AccbenchError, ModelLoadError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json",
                   "vocab.txt")


def check_device(device: str | None, key: str = "model.device") -> None:
    """A device string torch understands and this machine has."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise AccbenchError(f"{key}: '{device}' is not a device", f"use cpu, cuda or cuda:N (or remove {key} "
                            "to use cuda when available, else cpu)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AccbenchError(f"{key}: '{device}', but this torch has no usable CUDA device "
                                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})",
                                f"set {key}: cpu, or install a CUDA build of torch on a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AccbenchError(f"{key}: '{device}', but this machine has {torch.cuda.device_count()} CUDA device(s)",
                                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise AccbenchError(f"{key}: 'mps' is not available here", f"set {key}: cpu")


def check_model_dir(path: str, tokenizer_path: str | None = None, key: str = "model.path") -> None:
    """A local model folder: a tokenizer to load (or model.tokenizer_path) and complete safetensors files.
    Hub ids and builtin models are not looked at (nothing to read without downloading or building)."""
    if path.startswith("builtin:"):
        return
    p = Path(path).expanduser()
    if not p.is_dir():
        return  # resolve_model_path reports missing paths and hub ids in the usual way
    tok = Path(tokenizer_path).expanduser() if tokenizer_path else p
    if tok.is_dir() and not any((tok / f).is_file() for f in TOKENIZER_FILES):
        where = "model.tokenizer_path" if tokenizer_path else key
        raise ModelLoadError(f"{where}: {tok} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...)",
                             "save the tokenizer into the model folder (tokenizer.save_pretrained), or set "
                             "model.tokenizer_path to a folder that has it")
    for f in sorted(p.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            raise ModelLoadError(f"{key}: {f} is damaged: {problem}",
                                 "copy or download the model again (an interrupted copy leaves a truncated file)")


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be complete (None if its header and sizes agree), reading only the header."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"the header says {n} bytes of metadata, the file has {size - 8} after the length"
            meta = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"unreadable header ({exc})"
    ends = [int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]
    need = 8 + n + (max(ends) if ends else 0)
    if need > size:
        return f"truncated: {size} bytes, its header describes {need}"
    return None


def max_positions(model_dir: str, trust_remote_code: bool = False) -> int | None:
    """The model's position limit from its config.json (no weights), or None when it declares none."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None  # loading the model reports an unreadable config with its own message
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_window_lengths(model_dir: str, windows: list[tuple[str, int, bool]], trust_remote_code: bool = False) -> None:
    """Every perplexity window fits the model's positions, unless its block opts in (allow_beyond_max_positions):
    past them a model computes numbers for positions it never learned, a silently different perplexity."""
    if any(not allowed for _, _, allowed in windows):
        _check_limit(windows, max_positions(model_dir, trust_remote_code),
                     f"max_position_embeddings in {model_dir}/config.json")


def check_builtin_window_lengths(path: str, windows: list[tuple[str, int, bool]]) -> None:
    """As `check_window_lengths` for a `builtin:NAME` model, from its definition (BUILTIN_MODELS), so that
    `validate` (which never builds it) and `run` (which does) give the same answer."""
    from accbench.builtin import BUILTIN_MODELS

    spec = BUILTIN_MODELS.get(path.removeprefix("builtin:"))
    if spec is not None:  # an unknown name is reported when the model loads
        _check_limit(windows, spec["max_position_embeddings"], f"max_position_embeddings of the built-in {path}")


def _check_limit(windows: list[tuple[str, int, bool]], limit: int | None, where: str) -> None:
    bad = [(k, n) for k, n, allowed in windows if not allowed and limit is not None and n > limit]
    if bad:
        keys = ", ".join(f"{k}: {n}" for k, n in bad)
        raise AccbenchError(f"{keys} exceeds the model's {limit} positions ({where})", f"set seq_len to at most "
                            f"{limit}, or set allow_beyond_max_positions: true in that block if you mean it")
