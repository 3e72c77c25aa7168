"""Causal-LM fine-tuning with the Hugging Face `Trainer`, with the semantics of transformers' `run_clm.py`.

Data: every document is tokenized on its own (with the tokenizer's special tokens), the token lists are
concatenated in groups of 1000 documents (run_clm's `datasets.map(batched=True)` batch), each group is cut
into `block_size` blocks and its tail dropped; labels are the inputs (the model shifts them). The blocks
are built once by the parent process and saved, so every variant trains on the very same tensor; the
Trainer's seeded sampler then gives every variant the same data order.

`train_clm` is what one variant's worker process runs: load the model, train, save the model, the
tokenizer, `all_results.json` and `trainer_state.json` exactly as run_clm does — the files accbench reads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accbench.errors import DataError

MAP_BATCH_DOCS = 1000  # run_clm groups texts per datasets.map batch (its default batch_size)


def group_texts(token_lists: list[list[int]], block_size: int, batch_docs: int = MAP_BATCH_DOCS) -> list[list[int]]:
    """run_clm's group_texts: concatenate each batch of documents, cut into blocks, drop each batch's tail."""
    blocks: list[list[int]] = []
    for start in range(0, len(token_lists), batch_docs):
        flat = [t for ids in token_lists[start:start + batch_docs] for t in ids]
        usable = (len(flat) // block_size) * block_size
        blocks.extend(flat[i:i + block_size] for i in range(0, usable, block_size))
    return blocks


def build_train_blocks(texts: list[str], tokenizer: Any, block_size: int) -> Any:
    """Tokenize each document, group into `block_size` blocks: a LongTensor [n_blocks, block_size]."""
    import torch

    token_lists = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]  # long docs are fine: they get cut
    blocks = group_texts(token_lists, block_size)
    n_tokens = sum(len(t) for t in token_lists)
    if not blocks:
        raise DataError(f"the training data has {n_tokens} tokens, fewer than one block of block_size={block_size}",
                        "lower train.block_size or give more training text")
    return torch.tensor(blocks, dtype=torch.long)


class BlockDataset:
    """A map-style dataset over pre-built blocks: {input_ids, labels} per item, as run_clm feeds the Trainer."""

    def __init__(self, blocks: Any):
        self.blocks = blocks

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids.clone()}


@dataclass
class TrainSpec:
    """Everything one worker needs, as plain JSON-able values (written to a file, read by the worker)."""

    model_path: str
    data_path: str  # torch.save'd LongTensor [n_blocks, block_size]
    output_dir: str
    training_args: dict[str, Any] = field(default_factory=dict)  # TrainingArguments kwargs, output_dir excluded
    torch_dtype: str = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    tokenizer_path: str | None = None

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(asdict(self), indent=2))
        return p

    @classmethod
    def load(cls, path: str | Path) -> "TrainSpec":
        return cls(**json.loads(Path(path).read_text()))


TIMING_FILE = "accbench_worker_timing.json"  # wall-clock marks of the worker's phases (for bench_train.py)


def train_clm(spec: TrainSpec, started_at: float | None = None) -> dict[str, float]:
    """Train with the Hugging Face Trainer; save model, tokenizer, all_results.json, trainer_state.json."""
    import time

    marks = {"process_start": started_at or time.time()}
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    from accbench.models import load_tokenizer

    targs = dict(spec.training_args)
    if "use_cpu" not in targs and not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        targs["use_cpu"] = True  # the Trainer refuses bf16 on a machine without an accelerator unless told
    args = TrainingArguments(output_dir=spec.output_dir, **targs)
    marks["imported"] = time.time()
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code,
                              "dtype": "auto" if spec.torch_dtype == "auto" else getattr(torch, spec.torch_dtype)}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(spec.model_path, **kwargs)
    tokenizer = load_tokenizer(spec.tokenizer_path or spec.model_path, spec.trust_remote_code)
    blocks = torch.load(spec.data_path)
    train_dataset = BlockDataset(blocks)

    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                      data_collator=default_data_collator)
    marks["train_start"] = time.time()
    result = trainer.train()
    marks["train_end"] = time.time()
    trainer.save_model()  # model + tokenizer into output_dir, as run_clm
    metrics = dict(result.metrics)
    metrics["train_samples"] = len(train_dataset)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)  # train_results.json and all_results.json
    trainer.save_state()  # trainer_state.json with log_history (the loss curve)
    marks["saved"] = time.time()
    if trainer.is_world_process_zero():
        (Path(spec.output_dir) / TIMING_FILE).write_text(json.dumps(marks, indent=2))
    return metrics
