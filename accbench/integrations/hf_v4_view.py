"""A view of a transformers-5 model folder that transformers 4 reads as 5 meant it (for peer tools pinned to 4.x).

OpenCompass (and llmc's own stack) pin transformers<5, while accbench saves models with 5.x. Symlinks keep
the weights shared; only the two small json files 4.x misreads are rewritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def v4_compatible_model_dir(model_dir: Path, out_dir: Path) -> tuple[Path, list[str]]:
    """A view of a model folder that transformers 4 reads as transformers 5 meant it.

    transformers 5 writes two things 4.x gets wrong: `rope_parameters` (4.x ignores it and silently falls
    back to rope_theta=10000, wrong for e.g. Llama 3's 500000) and tokenizer_class `TokenizersBackend` (4.x
    cannot load it; it is 4.x's PreTrainedTokenizerFast, told to return no token_type_ids). When either is
    present, out_dir gets symlinks to every file of model_dir plus rewritten config.json /
    tokenizer_config.json; otherwise model_dir is used as is. Returns the folder to use and what changed.
    """
    changes: list[str] = []
    config = _read_json(model_dir / "config.json")
    rope = config.get("rope_parameters") if config else None
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in config:
        rope = dict(rope)
        config["rope_theta"] = rope.pop("rope_theta")
        if rope.get("rope_type", "default") != "default":
            config["rope_scaling"] = rope
        del config["rope_parameters"]
        changes.append(f"config.json: rope_parameters -> rope_theta={config['rope_theta']}"
                       + (f", rope_scaling={config['rope_scaling']}" if "rope_scaling" in config else ""))
    tok = _read_json(model_dir / "tokenizer_config.json")
    if tok and tok.get("tokenizer_class") == "TokenizersBackend":
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
        # 4.x's PreTrainedTokenizerFast also returns token_type_ids, which generate() of a causal LM rejects
        tok.setdefault("model_input_names", ["input_ids", "attention_mask"])
        changes.append("tokenizer_config.json: tokenizer_class TokenizersBackend -> PreTrainedTokenizerFast")
    if not changes:
        return model_dir, []
    if out_dir.is_symlink() or out_dir.is_file():
        out_dir.unlink()
    elif out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    rewritten = {"config.json": config if any(c.startswith("config.json") for c in changes) else None,
                 "tokenizer_config.json": tok if any(c.startswith("tokenizer_config") for c in changes) else None}
    for item in model_dir.iterdir():
        if rewritten.get(item.name) is not None:
            (out_dir / item.name).write_text(json.dumps(rewritten[item.name], indent=2))
        else:
            (out_dir / item.name).symlink_to(item.resolve())
    return out_dir, changes


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
