"""llmc's shipped configs (../shared/data/llmc_configs, read-only) and the path substitution a user makes."""

from __future__ import annotations

import json
from pathlib import Path

LLMC = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "data" / "llmc_configs",
                         Path("/work/shared/data/llmc_configs")) if p.is_dir()), None)
CUSTOM_DATA = ("custom_txt", "custom_mm", "custom_gen", "custom_ppl")  # llmc's samples.json folders


def with_paths(cfg: dict, model: str, data: Path, save: Path, chat: Path | None = None) -> dict:
    """The config with only its paths changed (model.path, calib/eval path, save_path), as a user would; with
    `chat` (write_chat_data's folder), llmc's custom data (calib custom_txt, eval custom_gen / custom_ppl) reads
    chat/custom and ultrachat chat/ultrachat.jsonl."""
    cfg["model"]["path"] = model
    for section in ("calib", "eval"):
        entries = cfg.get(section)
        for e in entries if isinstance(entries, list) else [entries] if isinstance(entries, dict) else []:
            if "path" in e:
                e["path"] = str(data)
            if chat is not None and e.get("name") in CUSTOM_DATA:
                e["path"] = str(chat / "custom")
            if section == "calib" and chat is not None and e.get("name") == "ultrachat":
                e["path"] = str(chat / "ultrachat.jsonl")
    if isinstance(cfg.get("save"), dict) and "save_path" in cfg["save"]:
        cfg["save"]["save_path"] = str(save)
    return cfg


def write_chat_data(root: Path, n_conversations: int = 128) -> Path:
    """llmc's chat calibration data, made from Python's help topics: root/custom/samples.json (8 question /
    answer samples of different lengths) and root/ultrachat.jsonl (conversations as ultrachat_200k's messages)."""
    import pydoc_data.topics as t

    docs = [t.topics[k] for k in sorted(t.topics)]
    (root / "custom").mkdir(parents=True, exist_ok=True)
    samples = [{"question": f"What does this say? {d[:300 + 60 * i]}", "answer": d[400:460 + 30 * i]}
               for i, d in enumerate(docs[:8])]
    (root / "custom" / "samples.json").write_text(json.dumps(samples))
    with open(root / "ultrachat.jsonl", "w") as f:
        for i in range(n_conversations):
            d = docs[i % len(docs)]
            msgs = [{"role": "user", "content": d[:100 + i % 50]}, {"role": "assistant", "content": d[100:900]}]
            f.write(json.dumps({"prompt": msgs[0]["content"], "messages": msgs}) + "\n")
    return root
