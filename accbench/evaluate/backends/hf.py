"""The Hugging Face backend (`ModelBackend`, backends/base.py): answers score, score_rolling and generate
requests on an in-memory transformers model.

Tokenization follows lm-eval's HFLM exactly (trailing context whitespace moved to the continuation,
context encoded alone and the continuation taken from the whole text's tokens, empty context -> the
BOS/prefix token, left truncation to the model window), so log-likelihoods agree with lm-eval's.

Speed comes from three things lm-eval's HF model does not do:
- shared contexts run once: requests are grouped by their context tokens; the context is run once
  (phase 1, keeping its KV cache) and every continuation of the group is run from that cache (phase 2);
  one-token continuations (" A", " B", ...) need no phase 2 at all;
- the output head and log-softmax are applied only at the positions that predict continuation tokens;
- batches are length-sorted, so padding stays small.
With a KV-cache quantizer (quant.kvcache at fake_quant, quant/kvcache.py) every forward gets a fresh quantized
cache instead of a plain one, so keys and values go through it as in llmc's evaluation; scoring then runs each
context and continuation as one forward (no shared contexts: a continuation run from a stored, quantized
context cache would attend to itself in full precision), and a dynamic per_tensor KV range (one range over the
whole batch) is kept batch independent by batch size 1.
Generation is a plain batched decoding loop (left padding, explicit attention mask and position ids),
so stop strings, per-request seeds and batch-size independence are under our control.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from accbench.errors import AccbenchError, DataError
from accbench.evaluate.backends.base import BackendStats, BatchSize, ModelBackend
from accbench.evaluate.backends.batching import initial_batch_size, probe_batch_size, run_in_batches
from accbench.evaluate.backends.hf_generate import generate_batched
from accbench.evaluate.backends.tokens import LmEvalTokens, Tokens
from accbench.evaluate.perplexity import _can_split_head
from accbench.evaluate.requests import GenerateRequest, Request, RollingRequest, ScoreRequest, WindowLossRequest

if TYPE_CHECKING:
    from accbench.models import LoadedModel
    from accbench.quant.kvcache import KVCacheQuantizer

log = logging.getLogger("accbench.engine")

DEFAULT_MAX_LENGTH = 2048
TOKENIZER_INFINITY = 1000000000000000019884624838656


def resolve_max_length(model: Any, tokenizer: Any) -> int:
    """The model window, found the way lm-eval finds it (config attributes, then the tokenizer)."""
    cfg = getattr(model, "config", None)
    for c in (getattr(cfg, "text_config", None), cfg):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            if c is not None and isinstance(getattr(c, attr, None), int):
                return getattr(c, attr)
    mml = getattr(tokenizer, "model_max_length", None)
    if isinstance(mml, int) and mml != TOKENIZER_INFINITY:
        return mml
    return DEFAULT_MAX_LENGTH


class HFBackend(LmEvalTokens, ModelBackend):
    """Batched scoring and generation on one in-memory causal LM (the `ModelBackend` contract)."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu", batch_size: BatchSize = "auto",
                 max_length: int | None = None, add_bos_token: bool | None = None, max_batch_size: int = 64,
                 kv: "KVCacheQuantizer | None" = None):
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise AccbenchError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.model, self._tokenizer, self.device = model, tokenizer, str(device)
        self.batch_size, self.max_batch_size = batch_size, max_batch_size
        self.max_length = max_length or resolve_max_length(model, tokenizer)
        self.add_bos_token = add_bos_token
        self.split_head = _can_split_head(model)
        self.kv = kv  # every forward's cache comes from it (quant.kvcache); None: plain caches
        self.stats = BackendStats()
        self.last_truncated: list[int] = []  # positions, in the last call's requests, whose context was cut
        self.init_prefix(tokenizer)

    @classmethod
    def create(cls, loaded: "LoadedModel", batch_size: BatchSize = "auto", gpus: int = 1,
               kv: "KVCacheQuantizer | None" = None) -> "HFBackend":
        return cls(loaded.model, loaded.tokenizer, loaded.device, batch_size, kv=kv)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # ------------------------------------------------------------------ public API

    def score(self, requests: Sequence[ScoreRequest]) -> list[tuple[float, bool]]:
        """(log P(continuation | context), continuation is the greedy one) for each request."""
        pairs = [self.encode_pair(r.context, r.continuation) for r in requests]
        self._count("score", len(requests))
        return self.score_tokens(pairs, kind="score")

    def score_rolling(self, requests: Sequence[RollingRequest]) -> list[float]:
        """Total log-likelihood of each text, in disjoint max_length windows."""
        self._count("score_rolling", len(requests))
        return self.rolling_totals([r.text for r in requests], lambda w: self.score_tokens(w, kind="score_rolling"))

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """Continuations of each context, cut at the first stop string (EOS also stops)."""
        self._count("generate", len(requests))
        return generate_batched(self, list(requests))

    def window_losses(self, request: WindowLossRequest) -> list[float]:
        from accbench.data.text import load_texts, ppl_token_stream
        from accbench.evaluate.perplexity import perplexity

        texts = load_texts("custom", request.path)
        stream = ppl_token_stream("custom", texts, self.tokenizer, request.seq_len)
        try:
            res = perplexity(self.model, stream, request.seq_len, request.bs, self.device, max_windows=request.limit,
                             desc=f"ppl {request.name}", new_cache=self.kv.new_cache if self.kv is not None else None)
        except ValueError as exc:
            raise DataError(f"task '{request.name}': {exc}", "use a longer text or a smaller seq_len") from None
        return res.window_losses

    def truncates(self, kind: str, request: Request) -> bool:
        # requests it answers are reported in `last_truncated` without tokenizing twice
        return self.truncates_request(kind, request)

    # ------------------------------------------------------------------ scoring core

    def score_tokens(self, pairs: Sequence[tuple[Tokens, Tokens]], kind: str = "score") -> list[tuple[float, bool]]:
        """Score token-level (context, continuation) pairs; the context of equal pairs runs once."""
        L = self.max_length
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        groups: dict[tuple[int, ...], list[tuple[int, Tokens]]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                results[i] = (0.0, True)  # nothing to predict: log 1, trivially greedy
                continue
            if len(cont) > L:
                raise AccbenchError(f"a continuation of {len(cont)} tokens is longer than the model window ({L})",
                                    "shorten the choices/targets or use a model with a longer context")
            if len(ctx) + len(cont) > L + 1:  # lm-eval keeps the last L+1 tokens: the window plus the target
                ctx = (ctx + cont)[-(L + 1):][: -len(cont)]
                self.stats.truncated += 1
                self.last_truncated.append(i)
            groups.setdefault(tuple(ctx), []).append((i, cont))
        # longest first: an out-of-memory shows up at once, and similar lengths share a batch
        order = sorted(groups.items(), key=lambda kv: -(len(kv[0]) + max(len(c) for _, c in kv[1])))
        def score_chunk(chunk: list, bs: int) -> None:
            scored = self._score_whole(chunk) if self.kv is not None else self._score_groups(chunk, bs)
            for i, res in scored:
                results[i] = res

        if self.kv is not None:  # one forward per (context, continuation): no shared context caches
            order = [((*ctx, *cont[:-1]), [(i, cont)]) for ctx, members in order for i, cont in members]
            order.sort(key=lambda g: -len(g[0]))

        longest = len(order[0][0]) + max(len(c) for _, c in order[0][1]) if order else 0
        bs = run_in_batches(order, self.choose_batch_size(kind, longest), score_chunk, "scoring")
        self.stats.batch_sizes[kind] = min(self.stats.batch_sizes.get(kind, bs), bs)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _score_groups(self, groups: list[tuple[tuple[int, ...], list[tuple[int, Tokens]]]], bs: int
                      ) -> Iterator[tuple[int, tuple[float, bool]]]:
        import torch

        dev = self.device
        ctx_lens = [len(c) for c, _ in groups]
        Lc = max(ctx_lens)
        ids = torch.zeros(len(groups), Lc, dtype=torch.long)
        for r, (c, _) in enumerate(groups):
            ids[r, : len(c)] = torch.tensor(c)
        with torch.inference_mode():
            # phase 1: contexts, right padded, no mask (causal attention never sees the padding on the right)
            states, cache = self._forward(ids.to(dev), None, None, None)
            self.stats.forward_tokens += sum(ctx_lens)
            last = states[torch.arange(len(groups)), torch.tensor(ctx_lens) - 1]
            first_lp = self._log_softmax(last)  # [G, V]: predicts every continuation's first token
            first_lp_cpu = first_lp.float().cpu()
            first_greedy = first_lp_cpu.argmax(-1)
            rows: list[tuple[int, int, Tokens]] = []  # (group row, request index, continuation)
            for r, (_, members) in enumerate(groups):
                for i, cont in members:
                    if len(cont) == 1:
                        yield i, (float(first_lp_cpu[r, cont[0]]), bool(first_greedy[r] == cont[0]))
                    else:
                        rows.append((r, i, cont))
            # phase 2: the rest of each continuation, from its context's cache
            rows.sort(key=lambda x: -len(x[2]))
            for s in range(0, len(rows), bs):
                part = rows[s : s + bs]
                yield from self._score_rest(part, cache, ctx_lens, Lc, first_lp_cpu, first_greedy)

    def _score_whole(self, rows: list[tuple[tuple[int, ...], list[tuple[int, Tokens]]]]
                     ) -> Iterator[tuple[int, tuple[float, bool]]]:
        """Score rows of (context + continuation[:-1], [(request, continuation)]), each one forward with a fresh
        (quantized) cache: the last len(continuation) positions predict the continuation."""
        import torch

        dev = self.device
        lens = [len(seq) for seq, _ in rows]
        ids = torch.zeros(len(rows), max(lens), dtype=torch.long)
        for r, (seq, _) in enumerate(rows):
            ids[r, : len(seq)] = torch.tensor(seq)
        with torch.inference_mode():  # right padded, no mask: causal attention never sees the padding
            states, _ = self._forward(ids.to(dev), None, None, None)
            self.stats.forward_tokens += sum(lens)
            for r, (seq, members) in enumerate(rows):
                (i, cont), k = members[0], len(members[0][1])
                lp = self._log_softmax(states[r, len(seq) - k : len(seq)]).float().cpu()  # [k, V]
                target = torch.tensor(cont)
                ll = float(lp.gather(1, target[:, None]).sum())
                yield i, (ll, bool((lp.argmax(-1) == target).all()))

    def _score_rest(self, part: list[tuple[int, int, Tokens]], cache: Any, ctx_lens: list[int], Lc: int,
                    first_lp: Any, first_greedy: Any) -> Iterator[tuple[int, tuple[float, bool]]]:
        import torch

        dev = self.device
        Tc = max(len(c) - 1 for _, _, c in part)
        n = len(part)
        ids = torch.zeros(n, Tc, dtype=torch.long)
        mask = torch.zeros(n, Lc + Tc, dtype=torch.long)
        pos = torch.zeros(n, Tc, dtype=torch.long)
        for j, (r, _, cont) in enumerate(part):
            k = len(cont) - 1
            ids[j, :k] = torch.tensor(cont[:-1])
            mask[j, : ctx_lens[r]] = 1
            mask[j, Lc : Lc + k] = 1
            pos[j] = ctx_lens[r] + torch.arange(Tc)
        sub = _select_cache_rows(cache, torch.tensor([r for r, _, _ in part], device=dev))
        states, _ = self._forward(ids.to(dev), mask.to(dev), pos.to(dev), sub)
        self.stats.forward_tokens += sum(len(c) - 1 for _, _, c in part)
        sel_r = torch.cat([torch.full((len(c) - 1,), j) for j, (_, _, c) in enumerate(part)])
        sel_t = torch.cat([torch.arange(len(c) - 1) for _, _, c in part])
        lp = self._log_softmax(states[sel_r.to(dev), sel_t.to(dev)]).float().cpu()  # [sum(k), V]
        targets = torch.cat([torch.tensor(c[1:]) for _, _, c in part])
        tok_lp = lp.gather(1, targets[:, None])[:, 0]
        greedy = lp.argmax(-1) == targets
        off = 0
        for r, i, cont in part:
            k = len(cont) - 1
            ll = float(first_lp[r, cont[0]]) + float(tok_lp[off : off + k].sum())
            g = bool(first_greedy[r] == cont[0]) and bool(greedy[off : off + k].all())
            off += k
            yield i, (ll, g)

    # ------------------------------------------------------------------ model calls

    def _forward(self, ids: Any, mask: Any, pos: Any, cache: Any) -> tuple[Any, Any]:
        """Hidden states (or logits when the head cannot be split off) and the KV cache."""
        from transformers import DynamicCache

        if cache is None:
            cache = self.kv.new_cache() if self.kv is not None else DynamicCache(config=self.model.config)
        kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        kw[cache_kwarg(self.model)] = cache
        if self.split_head:
            out = self.model.base_model(**kw)
            return out.last_hidden_state, cache
        out = self.model(**kw)
        return out.logits, cache  # the cache object is updated in place

    def _log_softmax(self, states: Any) -> Any:
        import torch.nn.functional as F

        if self.split_head:
            head = self.model.get_output_embeddings()
            states = head(states.to(head.weight.device))
        return F.log_softmax(states.float(), dim=-1)

    def logits_last(self, ids: Any, mask: Any, pos: Any, cache: Any) -> tuple[Any, Any]:
        """Float32 logits of the last position of each row, and the updated cache (for generation)."""
        states, cache = self._forward(ids, mask, pos, cache)
        last = states[:, -1]
        if self.split_head:
            head = self.model.get_output_embeddings()
            last = head(last.to(head.weight.device))
        return last.float(), cache

    # ------------------------------------------------------------------ batch sizes

    def choose_batch_size(self, kind: str, longest: int) -> int:
        """The batch size to start a pass of `kind` whose longest row has `longest` tokens (batching.py)."""
        if self.kv is not None and self.kv.spec.granularity == "per_tensor" and not self.kv.spec.static:
            return 1  # one dynamic KV range per batch: other rows would change each row's quantization
        return initial_batch_size(self.batch_size, self.stats.batch_sizes.get(kind), self.device, longest,
                                  self.max_batch_size, self.probe_batch_size)

    def probe_batch_size(self, length: int) -> int:
        """Largest batch (from max_batch_size, halving) whose forward at `length` tokens fits in memory."""
        import torch

        length = min(length, self.max_length)

        def try_forward(bs: int) -> None:
            with torch.inference_mode():
                ids = torch.zeros(bs, length, dtype=torch.long, device=self.device)
                states, _ = self._forward(ids, None, None, None)
                self._log_softmax(states[:, -1])

        return probe_batch_size(try_forward, self.max_batch_size)

    def _count(self, kind: str, n: int) -> None:
        """Book a public call of `n` requests (and start its list of truncated requests)."""
        self.stats.requests[kind] = self.stats.requests.get(kind, 0) + n
        self.last_truncated = []


def _select_cache_rows(cache: Any, rows: Any) -> Any:
    """A cache holding `rows` (with repeats) of `cache`; the original is left untouched for the next chunk."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    new.batch_select_indices(rows)  # indexing makes new tensors on the copied layers
    return new


def cache_kwarg(model: Any) -> str:
    """The forward keyword of the KV cache: `cache` since transformers 5.x deprecated `past_key_values`
    (removed in 5.40); `past_key_values` on the versions before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
