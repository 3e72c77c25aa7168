"""llmc's shipped configs (../shared/data/llmc_configs, read-only) and the path substitution a user makes."""

from __future__ import annotations

from pathlib import Path

LLMC = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "data" / "llmc_configs",
                         Path("/work/shared/data/llmc_configs")) if p.is_dir()), None)


def with_paths(cfg: dict, model: str, data: Path, save: Path) -> dict:
    """The config with only its paths changed (model.path, calib/eval path, save_path), as a user would."""
    cfg["model"]["path"] = model
    for section in ("calib", "eval"):
        entries = cfg.get(section)
        for e in entries if isinstance(entries, list) else [entries] if isinstance(entries, dict) else []:
            if "path" in e:
                e["path"] = str(data)
    if isinstance(cfg.get("save"), dict) and "save_path" in cfg["save"]:
        cfg["save"]["save_path"] = str(save)
    return cfg
