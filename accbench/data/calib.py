"""Calibration samples by llmc's preprocessing names, seeded by `calib.seed`, then grouped by `calib.bs`.

- `wikitext2_gptq`: documents joined with blank lines, tokenized once, `n_samples` random windows of
  `seq_len` tokens (GPTQ's recipe).
- `random_truncate_txt`: the same after shuffling the documents.
- `c4_gptq`: for each sample, a random document longer than `seq_len` tokens and a random window of it.
- `pileval_awq`: shuffled documents, each stripped and tokenized; those longer than `seq_len` skipped;
  the first `n_samples` kept, concatenated and cut into consecutive `seq_len` windows (so the number
  of windows is usually smaller than `n_samples`, as in AWQ).
- `ptb_gptq`: as `wikitext2_gptq` with sentences joined by a space; `pileval_omni`: as `wikitext2_gptq` over
  the first 1000 documents (OmniQuant's recipe).
- `pileval_smooth`: shuffled documents (llmc's fixed order, below), the first `n_samples`, each truncated to `seq_len` tokens (SmoothQuant's
  recipe: samples of different lengths); `original_txt`: shuffled documents, the first `n_samples`, whole.
- `txt_general_preproc`: shuffled documents tokenized and truncated to `seq_len`; only documents with at
  least `seq_len` tokens are used, up to `n_samples` (fewer if the data runs out; a warning says so).

`pileval_awq`, `pileval_smooth` and `txt_general_preproc` read the documents in llmc's fixed order: llmc shuffles
them with `datasets`' `shuffle(seed=42)` whatever the seed, so the same data gives llmc's samples. The other
randomness comes from one `random.Random(calib.seed)` (llmc seeds Python's global `random` with base.seed). Batches: `bs: -1` one batch of all
samples, `bs: k` batches of k. Every failure is a DataError that names the dataset and the fix.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable

from accbench.errors import DataError

log = logging.getLogger("accbench.data")


def llmc_shuffled(texts: list[str]) -> list[str]:
    """The documents in the order llmc reads them after `datasets`' `shuffle(seed=42)` (a fixed 42, whatever the
    run's seed): numpy's `default_rng(42).permutation`, which is what that shuffle draws."""
    import numpy as np

    return [texts[int(i)] for i in np.random.default_rng(42).permutation(len(texts))]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text).input_ids)


def _random_windows(ids: list[int], n_samples: int, seq_len: int, rng: random.Random, where: str) -> list[list[int]]:
    if len(ids) <= seq_len:
        raise DataError(f"calibration data {where} has {len(ids)} tokens, not more than calib.seq_len={seq_len}",
                        "lower calib.seq_len or give more calibration text")
    out = []
    for _ in range(n_samples):
        i = rng.randint(0, len(ids) - seq_len - 1)
        out.append(ids[i : i + seq_len])
    return out


def wikitext2_gptq(texts: list[str], tokenizer: Any, n_samples: int, seq_len: int, rng: random.Random) -> list[list[int]]:
    return _random_windows(_encode(tokenizer, "\n\n".join(texts)), n_samples, seq_len, rng, "(joined)")


def random_truncate_txt(texts: list[str], tokenizer: Any, n_samples: int, seq_len: int,
                        rng: random.Random) -> list[list[int]]:
    texts = list(texts)
    rng.shuffle(texts)
    return _random_windows(_encode(tokenizer, "\n\n".join(texts)), n_samples, seq_len, rng, "(joined)")


def c4_gptq(texts: list[str], tokenizer: Any, n_samples: int, seq_len: int, rng: random.Random) -> list[list[int]]:
    encoded = [_encode(tokenizer, t) for t in texts]
    long = [e for e in encoded if len(e) > seq_len]
    if not long:
        raise DataError(f"no calibration document is longer than calib.seq_len={seq_len} tokens (c4_gptq needs one)",
                        "lower calib.seq_len, or use preproc: wikitext2_gptq / random_truncate_txt")
    out = []
    for _ in range(n_samples):
        doc = long[rng.randint(0, len(long) - 1)]
        i = rng.randint(0, len(doc) - seq_len - 1)
        out.append(doc[i : i + seq_len])
    return out


def pileval_awq(texts: list[str], tokenizer: Any, n_samples: int, seq_len: int, rng: random.Random) -> list[list[int]]:
    order = llmc_shuffled(texts)
    stream: list[int] = []
    kept = 0
    for t in order:
        ids = _encode(tokenizer, t.strip())
        if len(ids) > seq_len or not ids:
            continue
        stream += ids
        kept += 1
        if kept == n_samples:
            break
    windows = [stream[i * seq_len : (i + 1) * seq_len] for i in range(len(stream) // seq_len)]
    if not windows:
        raise DataError(f"pileval_awq found {kept} documents of at most calib.seq_len={seq_len} tokens, "
                        f"{len(stream)} tokens in all: not one window",
                        "pileval_awq wants many short documents; use preproc: random_truncate_txt for long ones")
    return windows


def txt_general_preproc(texts: list[str], tokenizer: Any, n_samples: int, seq_len: int,
                        rng: random.Random) -> list[list[int]]:
    order = llmc_shuffled(texts)
    out = []
    for t in order:
        ids = _encode(tokenizer, t)[:seq_len]
        if len(ids) < seq_len:
            continue
        out.append(ids)
        if len(out) == n_samples:
            break
    if not out:
        raise DataError(f"txt_general_preproc: no calibration document has calib.seq_len={seq_len} tokens",
                        "lower calib.seq_len, or use preproc: random_truncate_txt (windows across documents)")
    if len(out) < n_samples:
        log.warning("txt_general_preproc: only %d documents have %d tokens; calibrating on %d of %d samples",
                    len(out), seq_len, len(out), n_samples)
    return out


def ptb_gptq(texts: list[str], tokenizer: Any, n_samples: int, seq_len: int, rng: random.Random) -> list[list[int]]:
    return _random_windows(_encode(tokenizer, " ".join(texts)), n_samples, seq_len, rng, "(joined)")


def pileval_omni(texts: list[str], tokenizer: Any, n_samples: int, seq_len: int,
                 rng: random.Random) -> list[list[int]]:
    return _random_windows(_encode(tokenizer, "\n\n".join(texts[:1000])), n_samples, seq_len, rng,
                           "(first 1000 documents joined)")


def pileval_smooth(texts: list[str], tokenizer: Any, n_samples: int, seq_len: int,
                   rng: random.Random) -> list[list[int]]:
    out = [ids for ids in (_encode(tokenizer, t)[:seq_len] for t in llmc_shuffled(texts)[:n_samples]) if ids]
    if not out:
        raise DataError("pileval_smooth: the calibration documents encode to no tokens",
                        "point calib at a dataset with text in it")
    return out


def original_txt(texts: list[str], tokenizer: Any, n_samples: int, seq_len: int,
                 rng: random.Random) -> list[list[int]]:
    return _shuffled_documents(texts, tokenizer, n_samples, rng, None)


def _shuffled_documents(texts: list[str], tokenizer: Any, n_samples: int, rng: random.Random,
                        truncate: int | None) -> list[list[int]]:
    """The first `n_samples` documents in a shuffled order, one sample each (cut to `truncate` tokens when
    given), empty ones left out."""
    order = list(texts)
    rng.shuffle(order)
    return [ids for ids in (_encode(tokenizer, t)[:truncate] for t in order[:n_samples]) if ids]


PREPROC: dict[str, Callable[..., list[list[int]]]] = {
    "wikitext2_gptq": wikitext2_gptq,
    "random_truncate_txt": random_truncate_txt,
    "c4_gptq": c4_gptq,
    "pileval_awq": pileval_awq,
    "txt_general_preproc": txt_general_preproc,
    "ptb_gptq": ptb_gptq,
    "pileval_omni": pileval_omni,
    "pileval_smooth": pileval_smooth,
    "original_txt": original_txt,
}


def calib_samples(texts: list[str], tokenizer: Any, preproc: str, n_samples: int, seq_len: int,
                  seed: int) -> list[list[int]]:
    """Token-id samples of exactly `seq_len` tokens each, by llmc's preprocessing `preproc`."""
    if preproc not in PREPROC:
        raise DataError(f"unknown calib.preproc '{preproc}'", f"use one of: {', '.join(PREPROC)}")
    if not texts or not any(t.strip() for t in texts):
        raise DataError("the calibration dataset is empty", "point calib at a dataset with text in it")
    return PREPROC[preproc](texts, tokenizer, n_samples, seq_len, random.Random(seed))


def calib_batches(samples: list[list[int]], bs: int) -> list[Any]:
    """Stack samples into LongTensor batches: bs=-1 one batch, bs=k batches of k (llmc's grouping). Samples of
    different lengths (pileval_smooth, original_txt) are one batch each, with no padding to change them."""
    import torch

    if bs == 0 or bs < -1:
        raise DataError(f"calib.bs must be -1 (one batch) or a positive batch size, got {bs}", "set calib.bs: -1")
    if len({len(s) for s in samples}) > 1:
        return [torch.tensor([s], dtype=torch.long) for s in samples]
    t = torch.tensor(samples, dtype=torch.long)
    if bs == -1:
        return [t]
    return [t[i : i + bs] for i in range(0, len(t), bs)]
