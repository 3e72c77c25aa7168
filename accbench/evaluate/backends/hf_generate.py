"""Batched decoding for the HF backend's `generate`: left padding, explicit masks and positions, stop strings.

Prompts are tokenized as lm-eval does (left-truncated to max_length - max_new_tokens), sorted by length
and decoded in batches. Each row's position ids count only its real tokens, so a prompt's tokens see
the same positions whatever it is batched with; finished rows leave the batch (and the KV cache).
Sampling draws from a per-request generator seeded with the request's seed, so a sample does not
depend on the batch it ran in; temperature 0 is greedy; top_k then top_p narrow the distribution as Hugging
Face generate's warpers do.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from accbench.evaluate.backends.base import BackendStats
from accbench.evaluate.backends.batching import run_in_batches
from accbench.evaluate.requests import GenerateRequest, cut_at_stop

log = logging.getLogger("accbench.engine")


class Decoder(Protocol):
    """What decoding needs of the HF backend (hf.py implements it; this module does not import it)."""

    model: Any
    device: str
    max_length: int
    prefix_token_id: int | None
    stats: BackendStats
    last_truncated: list[int]

    @property
    def tokenizer(self) -> Any: ...

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]: ...

    def generation_prompt(self, context: str, max_new_tokens: int) -> tuple[list[int], bool]: ...

    def choose_batch_size(self, kind: str, longest: int) -> int: ...

    def logits_last(self, ids: Any, mask: Any, pos: Any, cache: Any) -> tuple[Any, Any]: ...


def _eos_ids(engine: Decoder) -> set[int]:
    ids = {engine.tokenizer.eos_token_id}
    gen_eos = getattr(getattr(engine.model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return {i for i in ids if i is not None}


def _next_token(logits: Any, req: GenerateRequest, gen: Any) -> int:
    import torch

    if req.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.double().cpu() / req.temperature, dim=-1)
    if 0 < req.top_k < probs.numel():  # Hugging Face's order: temperature, top_k, then top_p; ties at the k-th kept
        probs = torch.where(probs >= probs.topk(req.top_k).values[-1], probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    if req.top_p < 1.0:
        p, idx = probs.sort(descending=True)
        drop = p.cumsum(-1) - p > req.top_p  # keep the smallest prefix whose mass reaches top_p
        p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, idx, p)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def generate_batched(engine: Decoder, requests: list[GenerateRequest]) -> list[str]:
    """Generate for every request; returns texts in request order."""
    encoded: list[list[int]] = []
    for i, r in enumerate(requests):
        ids, cut = engine.generation_prompt(r.context, r.max_new_tokens)
        if cut:
            engine.stats.truncated += 1
            engine.last_truncated.append(i)
        encoded.append(ids)
    order = sorted(range(len(requests)), key=lambda i: -len(encoded[i]))
    out: list[str | None] = [None] * len(requests)
    bs = engine.choose_batch_size("generate", max((len(e) + r.max_new_tokens for e, r in zip(encoded, requests)),
                                                   default=1))
    def generate_chunk(idx: list[int], _bs: int) -> None:
        texts = _generate_batch(engine, [requests[i] for i in idx], [encoded[i] for i in idx])
        for i, t in zip(idx, texts):
            out[i] = t

    bs = run_in_batches(order, bs, generate_chunk, "generating")
    engine.stats.batch_sizes["generate"] = min(engine.stats.batch_sizes.get("generate", bs), bs)
    return out  # type: ignore[return-value]


def _generate_batch(engine: Decoder, reqs: list[GenerateRequest], encoded: list[list[int]]) -> list[str]:
    import torch

    dev, tok = engine.device, engine.tokenizer
    B, L = len(reqs), max(len(e) for e in encoded)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((B, L), pad, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, e in enumerate(encoded):
        ids[b, L - len(e):] = torch.tensor(e)
        mask[b, L - len(e):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    eos = _eos_ids(engine)
    gens = [torch.Generator().manual_seed(r.seed) if r.temperature > 0 else None for r in reqs]
    tokens: list[list[int]] = [[] for _ in reqs]
    texts = [""] * B
    active = list(range(B))  # request row of each batch row
    with torch.inference_mode():
        mask, pos = mask.to(dev), pos.to(dev)
        logits, cache = engine.logits_last(ids.to(dev), mask, pos, None)
        last_pos = pos[:, -1]
        while True:
            nxt, keep = [], []
            for j, b in enumerate(active):
                t = _next_token(logits[j], reqs[b], gens[b])
                done = t in eos
                if not done:
                    tokens[b].append(t)
                    texts[b], done = cut_at_stop(tok.decode(tokens[b], skip_special_tokens=True), reqs[b].stop)
                done = done or len(tokens[b]) >= reqs[b].max_new_tokens
                if not done:
                    keep.append(j)
                    nxt.append(t)
            if not keep:
                break
            if len(keep) < len(active):
                rows = torch.tensor(keep, device=dev)
                cache.batch_select_indices(rows)
                mask, last_pos = mask[rows], last_pos[rows]
                active = [active[j] for j in keep]
            mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype, device=dev)], dim=1)
            last_pos = last_pos + 1
            step = torch.tensor(nxt, device=dev)[:, None]
            logits, cache = engine.logits_last(step, mask, last_pos[:, None], cache)
            engine.stats.forward_tokens += len(active)
    return texts
