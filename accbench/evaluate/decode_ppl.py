"""Decode perplexity (llmc's `eval.type: decode_ppl`): perplexity by token-by-token decoding through the KV cache.

Each sample (a row of the dataset, tokenized alone with the tokenizer's special tokens, as llmc does) is fed
one token at a time, each step reading the keys and values of the earlier tokens from the cache; the loss of
a step is the cross-entropy of its next-token logits against the following token. ppl = exp(mean over every
decoded token of every sample), llmc's `DecodePerplexityEval`. This is the number that shows KV-cache
quantization: the cache a step reads is the quantized one. Without KV quantization it equals ordinary
(parallel) perplexity of the same samples, up to float rounding.

One deliberate difference from llmc: the cache is fresh for every sample. llmc resets it only after the last
sample, so its sample 2 attends to sample 1 (positions continuing), which makes the number depend on the
order of the samples; here each sample is scored on its own, as ordinary perplexity scores a window.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("accbench")
PROGRESS_LOG_S = 30.0


@dataclass
class DecodePerplexityResult:
    ppl: float
    samples: int  # samples that had at least one token to predict
    tokens: int  # decoded predictions
    token_losses: list[float] = field(default_factory=list)


def decode_perplexity(model: Any, samples: list[list[int]], device: str = "cpu",
                      new_cache: Callable[[], Any] | None = None, max_tokens: int | None = None,
                      progress: bool = True, desc: str = "decode_ppl") -> DecodePerplexityResult:
    """Decode perplexity of `model` over token-id `samples`; `new_cache` gives each sample its (quantized) cache
    (default: transformers' DynamicCache); `max_tokens` stops after that many predictions (llmc's
    num_eval_tokens)."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm
    from transformers import DynamicCache

    from accbench.evaluate.backends.hf import cache_kwarg

    losses: list[float] = []
    used = 0
    total = sum(max(len(s) - 1, 0) for s in samples)
    if max_tokens is not None:
        total = min(total, max_tokens)
    if total == 0:
        raise ValueError("decode_ppl has no token to predict: every sample is shorter than two tokens "
                         "(raise eval.num_samples or check the dataset)")
    last = time.monotonic()
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="tok", disable=None if progress else True,
                                      leave=False) as bar:
        for ids in samples:
            if len(ids) < 2 or len(losses) >= total:
                continue
            used += 1
            cache = {cache_kwarg(model): new_cache() if new_cache is not None else DynamicCache(config=model.config)}
            ids_t = torch.tensor(ids, dtype=torch.long, device=device)
            for i in range(min(len(ids) - 1, total - len(losses))):
                out = model(input_ids=ids_t[i: i + 1].view(1, 1), use_cache=True, **cache)
                losses.append(float(F.cross_entropy(out.logits[0, -1].float(), ids_t[i + 1])))
                bar.update(1)
                if progress and bar.disable and time.monotonic() - last >= PROGRESS_LOG_S:
                    last = time.monotonic()
                    log.info("%s: %d/%d tokens", desc, len(losses), total)
    ppl = math.exp(sum(losses) / len(losses))
    return DecodePerplexityResult(ppl=ppl, samples=used, tokens=len(losses), token_losses=losses)


def decode_samples(texts: list[str], tokenizer: Any, num_samples: int | None) -> list[list[int]]:
    """llmc's decode_ppl data: the first `num_samples` rows (1 when unset), each tokenized on its own."""
    n = 1 if num_samples is None else num_samples
    return [list(tokenizer(t)["input_ids"]) for t in texts[:n]]
