"""Fingerprints: every stored result carries a hash of exactly the inputs that produced it.

A fingerprint is a short hash of (what produced the number): the model's identity at a position (its weight
files, dtype, and for a transformed model the quant and calibration sections that made it), the data (the
token stream itself, not its file name), the stage's own settings and `NUMERICS_VERSION`. `--resume` reuses a
stored entry only when its fingerprint equals the one the current config gives, and recomputes the rest;
`ResumeLog` says which was which and why. `--resume=strict` refuses a resume whose config changed
(`config_changes` lists the changed keys). Saved models carry their fingerprint in a file beside the weights,
so a resume loads a matching saved model instead of recomputing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("accbench")

# bump when a change in accbench alters a computed number: every stored result is then recomputed on resume
# 2: bf16 / fp16 weight scales held in the model's dtype (quant/scale_dtype.py) change those runs' fake_quant
NUMERICS_VERSION = 2
MODEL_FINGERPRINT_FILE = "accbench-fingerprint.json"
# keys that cannot change a stored number: a strict resume allows changing them
NOT_NUMERIC = ("base.output_dir", "base.run_name", "runner", "compare", "save.save_path")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (order matters)."""
    h = hashlib.sha256()
    for p in (NUMERICS_VERSION, *parts):
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def tokens_id(stream: Any) -> str:
    """Identity of a tokenized dataset: a hash of its token ids (what the model actually sees)."""
    import numpy as np

    arr = np.ascontiguousarray(stream.cpu().numpy() if hasattr(stream, "cpu") else np.asarray(stream))
    return hashlib.sha256(arr.tobytes() + str(arr.dtype).encode()).hexdigest()[:20]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        out = {}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): d}


def config_changes(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose value differs between two config dumps, as 'key: old -> new' lines."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if any(k == i or k.startswith(i + ".") for i in ignore):
            continue
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            out.append(f"{k}: {a.get(k, '<unset>')} -> {b.get(k, '<unset>')}")
    return out


@dataclass
class ResumeLog:
    """What a resumed run reused and what it recomputed, with the reason; printed and kept in results.json."""

    active: bool
    console: Any = None
    reused: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)

    def reuse(self, what: str) -> None:
        if self.active:
            self.reused.append(what)
            log.info("resume: reused %s (its fingerprint matches)", what)

    def recompute(self, what: str, why: str) -> None:
        if self.active:
            self.recomputed.append(f"{what}: {why}")
            log.info("resume: recomputing %s: %s", what, why)
            if self.console is not None:
                self.console.print(f"resume: recomputing {what}: {why}", markup=False)

    def summary(self) -> dict[str, list[str]]:
        return {"reused": list(self.reused), "recomputed": list(self.recomputed)}


def check_entry(stored_fp: str | None, current: str, what: str, resume: ResumeLog) -> bool:
    """True when a stored entry may be reused; otherwise notes why it is recomputed."""
    if stored_fp == current:
        resume.reuse(what)
        return True
    why = ("stored without a fingerprint (an older accbench)" if stored_fp is None
           else "its inputs changed (model, data, settings or accbench numerics)")
    resume.recompute(what, why)
    return False


def write_model_fingerprint(model_dir: Path, fp: str, position: str) -> None:
    """Mark a saved model with the fingerprint of what produced it (written last: a partial save has none)."""
    (Path(model_dir) / MODEL_FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": fp, "position": position}))


def saved_model_matches(model_dir: Path, fp: str) -> bool:
    """A saved model whose weights and fingerprint file say it was produced by exactly these inputs."""
    p = Path(model_dir) / MODEL_FINGERPRINT_FILE
    if not p.is_file() or not (Path(model_dir) / "config.json").is_file():
        return False
    try:
        return json.loads(p.read_text()).get("fingerprint") == fp
    except (OSError, ValueError):
        return False
