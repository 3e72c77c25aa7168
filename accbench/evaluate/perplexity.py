"""Perplexity by llmc's recipe, computed without materialising full-vocabulary float32 tensors.

Windows are `seq_len` non-overlapping slices of one token stream (tail dropped); each window's loss is
the mean next-token cross-entropy over its `seq_len - 1` predictions; ppl = exp(mean window loss).
The head is applied in token chunks to the backbone's hidden states, so peak memory is one chunk of
logits, not [bs, seq_len, vocab]. `on_logits` lets a caller (the fidelity recorder) see each chunk, as the
log-probabilities the loss was computed from (logits normalised: log_softmax of them is themselves).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("accbench")
HEAD_CHUNK_TOKENS = 2048
PROGRESS_LOG_S = 30.0  # without a terminal: one plain progress line in the log this often
LogitsHook = Callable[[int, Any, Any], None]  # (index of the first prediction across all windows, log-probs [n,V] float32, labels [n])


@dataclass
class PerplexityResult:
    ppl: float
    windows: int
    tokens: int
    seq_len: int
    window_losses: list[float] = field(default_factory=list)


def _can_split_head(model: Any) -> bool:
    cfg = getattr(model, "config", None)
    # logit soft-capping / scaling live in the CausalLM forward; fall back to it for those families
    return not any(getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))


def forward_logit_chunks(model: Any, input_ids: Any, chunk_tokens: int = HEAD_CHUNK_TOKENS,
                         new_cache: Callable[[], Any] | None = None):
    """Yield (start, logits[n, V]) over the flattened predicting positions of a batch, chunk by chunk.

    Position p of the flattened stream is row p // (T-1), offset p % (T-1); its label is token offset+1.
    `new_cache`: a fresh KV cache for the batch (KV-cache quantization: attention reads the keys and values
    the cache hands back, quant/kvcache.py); None runs without a cache.
    """
    kw: dict[str, Any] = {"use_cache": False}
    if new_cache is not None:
        from accbench.evaluate.backends.hf import cache_kwarg

        kw = {"use_cache": True, cache_kwarg(model): new_cache()}
    if _can_split_head(model):
        hidden = model.base_model(input_ids=input_ids, **kw).last_hidden_state
        head = model.get_output_embeddings()
        flat = hidden[:, :-1].to(head.weight.device).reshape(-1, hidden.shape[-1])
        for s in range(0, flat.shape[0], chunk_tokens):
            yield s, head(flat[s : s + chunk_tokens])
    else:
        logits = model(input_ids=input_ids, **kw).logits
        yield 0, logits[:, :-1].reshape(-1, logits.shape[-1])


def perplexity(model: Any, stream: Any, seq_len: int, bs: int = 1, device: str = "cpu",
               max_windows: int | None = None, on_logits: LogitsHook | None = None,
               progress: bool = True, desc: str = "perplexity",
               new_cache: Callable[[], Any] | None = None) -> PerplexityResult:
    """Evaluate perplexity of `model` on a 1-D token tensor `stream` (llmc's recipe); `new_cache` gives each
    batch a fresh (quantized) KV cache."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    n = stream.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the evaluation text has {stream.numel()} tokens, fewer than one window of seq_len={seq_len}")
    windows = stream[: n * seq_len].view(n, seq_len)
    losses: list[float] = []
    last = time.monotonic()
    with torch.inference_mode(), tqdm(total=n, desc=desc, unit="win", disable=None if progress else True, leave=False) as bar:
        for i in range(0, n, bs):
            batch = windows[i : i + bs].to(device)
            all_labels = batch[:, 1:].reshape(-1)
            token_losses = torch.empty(all_labels.numel(), dtype=torch.float32)
            for s, logits in forward_logit_chunks(model, batch, new_cache=new_cache):
                labels = all_labels[s : s + logits.shape[0]].to(logits.device)
                # cross_entropy is exactly nll_loss(log_softmax): computed once, shared with the hook
                logp = F.log_softmax(logits.float(), -1)
                token_losses[s : s + logits.shape[0]] = F.nll_loss(logp, labels, reduction="none").cpu()
                if on_logits is not None:
                    on_logits(i * (seq_len - 1) + s, logp, labels)
            losses.extend(token_losses.view(batch.shape[0], -1).double().mean(dim=1).tolist())
            bar.update(batch.shape[0])
            if progress and bar.disable and time.monotonic() - last >= PROGRESS_LOG_S:  # a log, not a terminal
                last = time.monotonic()
                log.info("%s: %d/%d windows", desc, len(losses), n)
    ppl = math.exp(sum(losses) / len(losses))
    return PerplexityResult(ppl=ppl, windows=n, tokens=n * seq_len, seq_len=seq_len, window_losses=losses)
