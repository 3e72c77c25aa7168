"""lm-eval's tokenization rules, shared by every backend that tokenizes for itself (hf.py, vllm.py), so that
every engine scores and generates from exactly the same token ids.

The rules are lm-eval HFLM's: trailing context whitespace moved to the continuation; the context encoded alone
and the continuation taken from the whole text's tokens; an empty context becomes the BOS (or EOS) prefix
token; rolling log-likelihood in disjoint model-window windows, the first conditioned on the prefix token.
"""

from __future__ import annotations

from typing import Any, Callable

Tokens = list[int]


class LmEvalTokens:
    """Tokenization of score, rolling and generate requests (mixed into a backend).

    A backend using it sets, before tokenizing: `max_length` (the model window), `add_bos_token` (None: the
    tokenizer's default) and calls `init_prefix(tokenizer)`; its `tokenizer` property gives the tokenizer."""

    max_length: int
    add_bos_token: bool | None
    prefix_token_id: int | None
    _prefix_str: str | None

    @property
    def tokenizer(self) -> Any:  # the backend's own property overrides this
        raise NotImplementedError

    def init_prefix(self, tokenizer: Any) -> None:
        """The prefix token (BOS, else EOS) that conditions an empty context and the first rolling window."""
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id
        self._prefix_str = tokenizer.decode(self.prefix_token_id) if self.prefix_token_id is not None else None

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> Tokens:
        kwargs: dict[str, bool] = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kwargs["add_special_tokens"] = self.add_bos_token
        if add_special_tokens is None and self._prefix_str and text.startswith(self._prefix_str):
            kwargs["add_special_tokens"] = False  # the text already carries its BOS
        return self.tokenizer.encode(text, **kwargs)

    def encode_pair(self, context: str, continuation: str) -> tuple[Tokens, Tokens]:
        """(context tokens, continuation tokens) exactly as lm-eval's HFLM builds them."""
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont  # type: ignore[list-item]
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    def rolling_windows(self, text: str) -> list[tuple[Tokens, Tokens]]:
        """Disjoint (context, prediction) windows covering every token of `text` once, as lm-eval's rolling
        loglikelihood makes them: the first window is conditioned on the prefix token; each later window
        predicts up to max_length tokens conditioned on the tokens before them that still fit the window."""
        tokens = self.tok_encode(text)
        L = self.max_length
        out: list[tuple[Tokens, Tokens]] = []
        if not tokens:
            return out
        first = min(L, len(tokens))
        out.append(([self.prefix_token_id], tokens[:first]))  # type: ignore[list-item]
        done = first
        while done < len(tokens):
            n = min(len(tokens) - done, L)
            out.append((tokens[done + n - L - 1 : done], tokens[done : done + n]))
            done += n
        return out

    def rolling_totals(self, texts: list[str],
                       score: Callable[[list[tuple[Tokens, Tokens]]], list[tuple[float, bool]]]) -> list[float]:
        """The total log-likelihood of each text: its rolling windows scored by `score` (one call for all)."""
        windows, owner = [], []
        for i, text in enumerate(texts):
            for w in self.rolling_windows(text):
                windows.append(w)
                owner.append(i)
        totals = [0.0] * len(texts)
        for i, (ll, _) in zip(owner, score(windows)):
            totals[i] += ll
        return totals

    def generation_prompt(self, context: str, max_new_tokens: int) -> tuple[Tokens, bool]:
        """The prompt tokens of a generate request, cut from the left to leave room for `max_new_tokens` in the
        model window, and whether they were cut."""
        from accbench.errors import AccbenchError

        room = self.max_length - max_new_tokens
        if room <= 0:
            raise AccbenchError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the model "
                                f"window ({self.max_length} tokens)", "lower max_new_tokens for this task")
        ids = self.tok_encode(context) or [self.prefix_token_id]
        return (ids[-room:], True) if len(ids) > room else (ids, False)  # type: ignore[return-value]

    def truncates_request(self, kind: str, request: Any) -> bool:
        """Whether answering `request` of `kind` cuts its context (ModelBackend.truncates)."""
        if kind == "score":
            ctx, cont = self.encode_pair(request.context, request.continuation)
            return len(ctx) + len(cont) > self.max_length + 1
        if kind == "generate":
            return len(self.tok_encode(request.context)) > self.max_length - request.max_new_tokens
        return False
