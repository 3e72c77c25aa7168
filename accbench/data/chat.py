"""llmc's chat calibration data for text models: custom question/answer samples and ultrachat conversations.

- `custom_txt` (and `custom_mm` without images or audio): `path` is a folder holding llmc's `samples.json`, a
  list of `{"question": ..., "answer": ...}`. Each sample's text is its question, wrapped by the model's chat
  template with llmc's system prompt when `apply_chat_template` (llmc's `apply_chat_template(prompt)`: a system
  and a user turn, the generation prompt added), followed by its answer when `add_answer` (as llmc's VLM models
  do; llmc's base text model drops the answer even then, accbench does what the key asks). Without `padding`
  these texts go through `calib.preproc` like any text; with it, see `padded_batches`.
- `ultrachat` with `preproc: ultrachat_general`: conversations (`messages` column of a save_to_disk folder,
  split `train_sft` when it has splits, or a .jsonl with a `messages` field); llmc's recipe: shuffled as
  `datasets.Dataset.shuffle(seed=42)` shuffles (a fixed 42, whatever the run's seed), the first `n_samples`,
  each rendered by the chat template and tokenized without special tokens, truncated to `seq_len`.
- `padding: true` (llmc's `get_batch_process`): the samples of a batch (`bs`, -1 one batch) tokenized together
  and padded to the longest, with the attention mask; llmc uses every sample of samples.json then (n_samples
  and seq_len are not applied); the pad token is the tokenizer's, else its eos token, as llmc sets it.
  ultrachat samples (llmc asserts on those with padding) and any other preprocessing's samples are padded the
  same way, after their preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accbench.errors import DataError

CUSTOM_NAMES = ("custom_txt", "custom_mm")
CHAT_NAMES = ("ultrachat",)
# llmc's apply_chat_template(prompt): the system turn per model type (llmc/models/*.py); the base one otherwise
LLMC_SYSTEM_PROMPTS = {
    "Qwen2": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "InternLM2": "You are an AI assistant whose name is InternLM (书生·浦语).\n",
}
LLMC_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class CustomSample:
    """One entry of llmc's samples.json (text part)."""

    question: str
    answer: str


@dataclass
class PaddedBatch:
    """Calibration rows padded to one length (llmc's `padding: true`): token ids and the attention mask
    (1 a real token, 0 padding)."""

    input_ids: Any
    attention_mask: Any

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def load_custom_samples(path: str | None) -> list[CustomSample]:
    """llmc's custom data: `path`/samples.json (or the .json file itself); samples with an image or audio are
    refused (multimodal calibration is out of scope for text models)."""
    if not path:
        raise DataError("llmc's custom calibration data needs calib.path", "set calib.path to the folder holding "
                        "samples.json")
    p = Path(path).expanduser()
    f = p / "samples.json" if p.is_dir() else p
    if not f.is_file():
        raise DataError(f"llmc's custom calibration data: {f} not found",
                        "calib.path is the folder holding samples.json: [{\"question\": ..., \"answer\": ...}, ...]")
    try:
        rows = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{f} is not UTF-8 JSON: {exc}", "write samples.json as a JSON list of objects") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{f} holds no list of samples", "write samples.json as [{\"question\": ...}, ...]")
    out = []
    for i, r in enumerate(rows):
        media = [k for k in ("image", "audio") if r.get(k)]
        if media:
            raise DataError(f"{f}: sample {i} has {' and '.join(media)}: multimodal calibration data is not "
                            "supported (text models only)", "give text samples (question, answer) only")
        out.append(CustomSample(str(r.get("question", "")), str(r.get("answer", ""))))
    return out


def needs_chat_template(name: str, apply_chat_template: bool) -> bool:
    return apply_chat_template or name in CHAT_NAMES


def has_chat_template(tokenizer_dir: str) -> bool | None:
    """Whether a tokenizer folder holds a chat template, read from its files (no tokenizer loaded); None when
    that cannot be told without loading (a hub id) or for a built-in model (which has one)."""
    if tokenizer_dir.startswith("builtin:"):
        return True
    p = Path(tokenizer_dir).expanduser()
    if not p.is_dir():
        return None
    if (p / "chat_template.jinja").is_file() or (p / "chat_template.json").is_file():
        return True
    try:
        cfg = json.loads((p / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return bool(cfg.get("chat_template"))


def _require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("calib.apply_chat_template: true (or preproc ultrachat_general), but the tokenizer has no "
                        "chat template", "use a chat model's tokenizer (model.tokenizer_path), or set "
                        "apply_chat_template: false")


def custom_texts(samples: list[CustomSample], tokenizer: Any, apply_chat_template: bool, add_answer: bool,
                 model_type: str | None) -> list[str]:
    """The calibration text of each sample, as llmc's batch_process builds it (see the module docstring)."""
    if apply_chat_template:
        _require_template(tokenizer)
    system = LLMC_SYSTEM_PROMPTS.get(model_type or "", LLMC_SYSTEM_PROMPT)
    out = []
    for s in samples:
        text = s.question
        if apply_chat_template:
            text = tokenizer.apply_chat_template([{"role": "system", "content": system},
                                                  {"role": "user", "content": s.question}],
                                                 tokenize=False, add_generation_prompt=True)
        out.append(text + s.answer if add_answer else text)
    return out


def load_conversations(path: str | None, split: str | None) -> list[list[dict[str, Any]]]:
    """Chat conversations (lists of {role, content}) from a save_to_disk folder or a .jsonl file."""
    if not path:
        raise DataError("ultrachat calibration data needs calib.path (download: true is not supported for it)",
                        "save HuggingFaceH4/ultrachat_200k with save_to_disk and set calib.path to it")
    p = Path(path).expanduser()
    if p.suffix == ".jsonl" and p.is_file():
        from accbench.data.jsonl import iter_jsonl

        rows = [(i, r) for i, r in iter_jsonl(p)]
    elif p.is_dir():
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(p))
        if isinstance(ds, DatasetDict):
            ds = ds[split or "train_sft"] if (split or "train_sft") in ds else next(iter(ds.values()))
        rows = list(enumerate(ds))
    else:
        raise DataError(f"ultrachat calibration data: {p} is neither a save_to_disk folder nor a .jsonl file",
                        "point calib.path at ultrachat_200k saved with save_to_disk, or a .jsonl with 'messages'")
    convs = []
    for i, r in rows:
        msgs = r.get("messages") if isinstance(r, dict) else None
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise DataError(f"{p}: conversation {i} has no 'messages' list of {{role, content}}",
                            "each row needs messages: [{role: user, content: ...}, {role: assistant, ...}]")
        convs.append(msgs)
    return convs


def ultrachat_general(convs: list[list[dict[str, Any]]], tokenizer: Any, n_samples: int,
                      seq_len: int) -> list[list[int]]:
    """llmc's ultrachat_general (see the module docstring): samples of up to `seq_len` tokens."""
    import numpy as np

    _require_template(tokenizer)
    if n_samples > len(convs):
        raise DataError(f"ultrachat_general: calib.n_samples={n_samples}, but the data has {len(convs)} "
                        "conversations", f"lower calib.n_samples to at most {len(convs)}")
    order = np.random.default_rng(42).permutation(len(convs))[:n_samples]
    texts = [tokenizer.apply_chat_template(convs[int(i)], tokenize=False) for i in order]
    return [list(tokenizer(t, add_special_tokens=False, truncation=True, max_length=seq_len).input_ids)
            for t in texts]


def padded_batches(rows: list[str] | list[list[int]], tokenizer: Any, bs: int) -> list[PaddedBatch]:
    """Texts (tokenized with special tokens, as llmc's batch_process) or token lists, `bs` a batch (-1: one
    batch), each batch padded to its longest row on the tokenizer's padding side."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("calib.padding: true, but the tokenizer has neither a pad nor an eos token",
                        "set padding: false, or use a tokenizer with a pad token")
    encoded = [r if isinstance(r, list) else list(tokenizer(r).input_ids) for r in rows]
    size = len(encoded) if bs == -1 else bs
    left = getattr(tokenizer, "padding_side", "right") == "left"
    out = []
    for i in range(0, len(encoded), size):
        chunk = encoded[i : i + size]
        width = max(len(r) for r in chunk)
        ids, mask = [], []
        for r in chunk:
            fill = [pad] * (width - len(r))
            ones, zeros = [1] * len(r), [0] * (width - len(r))
            ids.append(fill + r if left else r + fill)
            mask.append(zeros + ones if left else ones + zeros)
        out.append(PaddedBatch(torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)))
    return out
