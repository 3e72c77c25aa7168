"""Judge models that grade answers, and the cache of their replies.

Two clients answer the same call, ``complete(conversations) -> replies``:

- ``OpenAIJudge``: any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, a local server) through the
  ``openai`` package, at temperature 0 with ``n=1``, as FastChat's judge calls are sent. Its own retry machinery
  handles 429/5xx/timeouts with exponential backoff (honouring ``Retry-After``); every HTTP request, retries
  included, is counted (``Reply.attempts``: what a paid judge bills). A thread pool bounds how many requests are
  in flight. The API key is read from the environment variable the config names and is never logged, cached or
  put in an error message.
- ``HFJudge``: a local judge model, through the engine's ``GenerateFn`` and the judge tokenizer's chat template.

``judge_ratings`` asks for every judgment and reads each reply with the parser it is given (FastChat's rule by
default, see fastchat_judge.py; ``parse_rating_strict`` is accbench's own). A reply with no value is a failed
judgment; it is asked again only when ``parse_retries`` > 0 (FastChat never asks again), by continuing the
conversation with a short reminder of the format. One ``Judgment`` per prompt: a value, or the reason there is
none. Nothing is silently dropped.

Every reply is stored in a ``ReplyCache`` (``get(key)`` / ``put(key, value)``) keyed by a hash of the judge's
identity and the exact request, so a rerun pays for nothing twice. ``JsonlCache`` is the default backing:
an append-only JSON-lines file, one ``{"key", "value"}`` object per line, read back on open (a torn last
line from a crash is skipped; the last line for a key wins). Failed requests are not stored, so a rerun
retries them. Keys are ``"judge:<sha256>"`` / ``"answer:<sha256>"``; any store with get/put can stand in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from accbench.errors import AccbenchError
from accbench.evaluate.requests import GenerateFn, GenerateRequest

log = logging.getLogger("accbench.judge")

Messages = list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": "..."}]

RATING_MIN, RATING_MAX = 1, 10
_RATING = re.compile(r"\[\[\s*([+-]?\d+(?:\.\d*)?)\s*\]\]")

# Sent after a reply that has no usable rating (only when parse_retries > 0); written for accbench.
FORMAT_REMINDER = ("I could not find your rating. Please reply with the rating alone, as a whole number from "
                   f"{RATING_MIN} to {RATING_MAX} inside double square brackets, for example: [[7]]")


# ----------------------------------------------------------------------------- cache


class ReplyCache(Protocol):
    """Where judge replies (and model answers) are kept between runs; values are JSON-able dicts."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


class JsonlCache:
    """A ReplyCache in one append-only JSON-lines file; safe to share between threads of one process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self._data[row["key"]] = row["value"]
                    except (ValueError, KeyError, TypeError):
                        log.warning("cache %s: skipping an unreadable line (an interrupted write?)", self.path)
            with self.path.open("rb+") as f:  # end a torn last line, so the next append starts clean
                f.seek(0, os.SEEK_END)
                if f.tell():
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        line = (json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self._data[key] = value
            with self.path.open("ab", buffering=0) as f:  # one unbuffered append: lines never interleave
                f.write(line)
                os.fsync(f.fileno())

    def __len__(self) -> int:
        return len(self._data)


def request_key(kind: str, identity: dict[str, Any], request: Any) -> str:
    """A stable hash of who is asked and exactly what; any change in either gives a new key."""
    blob = json.dumps({"kind": kind, "who": identity, "request": request}, sort_keys=True, ensure_ascii=False)
    return f"{kind}:{hashlib.sha256(blob.encode('utf-8')).hexdigest()}"


# ----------------------------------------------------------------------------- parsing


def parse_rating_strict(text: str | None) -> tuple[int | None, str]:
    """accbench's own rule: one whole number 1..10 in ``[[N]]`` form, or None and the reason it could not be read."""
    if not text:
        return None, "empty reply"
    found = _RATING.findall(text)
    if not found:
        return None, "no [[N]] rating in the reply"
    values = set()
    for raw in found:
        try:
            value = float(raw)
        except ValueError:
            return None, f"[[{raw}]] is not a number"
        if value != int(value):
            return None, f"[[{raw}]] is not a whole number"
        values.add(int(value))
    if len(values) > 1:
        return None, f"several different ratings {sorted(values)}"
    rating = values.pop()
    if not RATING_MIN <= rating <= RATING_MAX:
        return None, f"rating {rating} outside {RATING_MIN}..{RATING_MAX}"
    return rating, ""


# ----------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class Reply:
    """One judge reply: its text, or why the request failed (after the client's own retries)."""

    text: str | None
    error: str | None = None
    attempts: int = 1  # HTTP requests this reply cost, the client's own retries included


OnReply = Callable[[int, Reply], None]


class JudgeClient(Protocol):
    """`complete` answers every conversation; `on_reply(index, reply)` is called as each reply arrives (from
    worker threads), so a run that dies half-way has already stored what it paid for."""

    identity: dict[str, Any]  # what makes replies comparable (type, model, endpoint); never a secret

    def complete(self, conversations: list[Messages], on_reply: OnReply | None = None) -> list[Reply]: ...


class OpenAIJudge:
    """An OpenAI-compatible chat-completions endpoint, at temperature 0, with bounded concurrency."""

    def __init__(self, model: str, api_key_env: str = "OPENAI_API_KEY", base_url: str | None = None,
                 timeout: float = 60.0, max_retries: int = 3, concurrency: int = 8, max_tokens: int = 2048):
        try:
            import openai
        except ImportError:
            raise AccbenchError("the openai judge needs the `openai` package",
                                "pip install 'accbench[judge]' (or pip install openai)") from None
        key = os.environ.get(api_key_env, "")
        if not key.strip():
            raise AccbenchError(f"judge.api_key_env: the environment variable {api_key_env} is not set or empty",
                                f"export {api_key_env}=<your key> (the key is read only from the environment; "
                                "for a local server without auth any non-empty value works)")
        self._secret = key
        self._openai = openai
        self._sent = threading.local()  # requests of the current thread's call, retries included

        def count(_request: Any) -> None:
            self._sent.n = getattr(self._sent, "n", 0) + 1

        http = openai.DefaultHttpxClient(event_hooks={"request": [count]})
        self._client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries,
                                     http_client=http)
        self.model, self.max_tokens, self.concurrency = model, max_tokens, concurrency
        self.identity = {"type": "openai", "model": model, "base_url": base_url or "", "max_tokens": max_tokens,
                         "temperature": 0.0}

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.model!r}, base_url={self.identity['base_url']!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def complete(self, conversations: list[Messages], on_reply: OnReply | None = None) -> list[Reply]:
        fatal: list[BaseException] = []
        stop = threading.Event()

        def one(i: int) -> Reply:
            reply = ask(conversations[i])
            if on_reply is not None:
                on_reply(i, reply)
            return reply

        def ask(messages: Messages) -> Reply:
            if stop.is_set():
                return Reply(None, "not sent: an earlier request failed fatally", attempts=0)
            self._sent.n = 0
            try:
                resp = self._client.chat.completions.create(model=self.model, messages=messages, n=1,
                                                            temperature=0, max_tokens=self.max_tokens)
            except (self._openai.AuthenticationError, self._openai.PermissionDeniedError,
                    self._openai.NotFoundError) as exc:
                stop.set()
                fatal.append(exc)
                return Reply(None, "not sent: fatal error", attempts=self._sent.n)
            except self._openai.OpenAIError as exc:  # timeouts, connection, 429/5xx after retries, 400
                return Reply(None, self._redact(f"{type(exc).__name__}: {exc}"), attempts=self._sent.n)
            except ValueError as exc:  # HTTP 200 whose body is not JSON (a proxy's error page, a wrong base_url)
                return Reply(None, self._redact(f"the endpoint answered with a body that is not JSON ({exc}); "
                                                "check judge.base_url points to an OpenAI-compatible /v1"),
                             attempts=self._sent.n)
            choices = getattr(resp, "choices", None) or [] if not isinstance(resp, str) else []
            if not choices:
                return Reply(None, "the endpoint returned no choices (not a chat completion: check judge.base_url)",
                             attempts=self._sent.n)
            # a reply may quote the key (an echoing proxy, a prompt injection): it is never written as it came
            return Reply(self._redact(choices[0].message.content or ""), attempts=self._sent.n)

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge") as pool:
            replies = list(pool.map(one, range(len(conversations))))
        if fatal:
            exc = fatal[0]
            what = {"AuthenticationError": "rejected the API key", "PermissionDeniedError": "refused access",
                    "NotFoundError": "does not know this model or path"}.get(type(exc).__name__, "failed")
            raise AccbenchError(
                self._redact(f"judge endpoint {self.identity['base_url'] or 'api.openai.com'} {what} "
                             f"(judge.model={self.model}): {type(exc).__name__}: {exc}"),
                "check judge.model, judge.base_url and the key in the variable named by judge.api_key_env")
        return replies


class HFJudge:
    """A local judge model: conversations rendered by its chat template, answered greedily by `generate`."""

    def __init__(self, generate: GenerateFn, tokenizer: Any, path: str, max_tokens: int = 2048):
        if not getattr(tokenizer, "chat_template", None):
            raise AccbenchError(f"judge.path={path}: the judge's tokenizer has no chat template",
                                "use an instruction-tuned judge model whose tokenizer_config.json has a chat_template")
        self._generate, self._tokenizer, self.max_tokens = generate, tokenizer, max_tokens
        self.identity = {"type": "hf", "path": str(path), "max_tokens": max_tokens, "temperature": 0.0}

    def complete(self, conversations: list[Messages], on_reply: OnReply | None = None) -> list[Reply]:
        contexts = [self._tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                    for m in conversations]
        texts = self._generate([GenerateRequest(context=c, max_new_tokens=self.max_tokens, temperature=0.0)
                                for c in contexts])
        if len(texts) != len(contexts):
            raise AccbenchError(f"hf judge: generate returned {len(texts)} texts for {len(contexts)} requests",
                                "this is a bug in the engine; please report it")
        replies = [Reply(t) for t in texts]
        for i, reply in enumerate(replies):
            if on_reply is not None:
                on_reply(i, reply)
        return replies


# ----------------------------------------------------------------------------- rating loop


Parser = Callable[[str | None], tuple[Any, str]]  # reply -> (value or None, why there is none)


@dataclass
class Judgment:
    """The outcome of one judgment: a value (a rating, or a pairwise verdict), or why there is none.
    `replies` holds every reply seen; `sent` counts the HTTP requests paid for in this run, retries included."""

    rating: Any
    error: str | None
    replies: list[str]
    sent: int = 0


def judge_ratings(prompts: list[Messages], client: JudgeClient, cache: ReplyCache, parse_retries: int = 0,
                  parse: Parser | None = None) -> list[Judgment]:
    """Judge every prompt, reading replies with `parse` (FastChat's rating rule by default). A reply `parse`
    cannot read is asked again only `parse_retries` times (0: never, as FastChat), then kept as a failure."""
    if parse is None:
        from accbench.evaluate.fastchat_judge import parse_rating as parse
    convs = [list(p) for p in prompts]
    out = [Judgment(None, "not judged", []) for _ in prompts]
    pending = list(range(len(prompts)))
    for attempt in range(parse_retries + 1):
        if not pending:
            break
        keys = {i: request_key("judge", client.identity, convs[i]) for i in pending}
        hits = {i: cache.get(keys[i]) for i in pending}
        misses = [i for i in pending if hits[i] is None]
        if misses:
            log.info("judge: %d requests (attempt %d), %d from cache", len(misses), attempt + 1,
                     len(pending) - len(misses))

            def store(k: int, reply: Reply) -> None:  # called as each reply arrives
                i = misses[k]
                out[i].sent += reply.attempts
                if reply.error is None:
                    hits[i] = {"messages": convs[i], "reply": reply.text}
                    cache.put(keys[i], hits[i])
                else:
                    hits[i] = {"error": reply.error}

            client.complete([convs[i] for i in misses], store)
        retry = []
        for i in pending:
            if "error" in hits[i]:
                out[i].rating, out[i].error = None, f"request failed: {hits[i]['error']}"
                continue
            text = hits[i]["reply"]
            out[i].replies.append(text)
            value, why = parse(text)
            out[i].rating, out[i].error = value, (None if value is not None else f"unparsable reply: {why}")
            if value is None:
                convs[i] = convs[i] + [{"role": "assistant", "content": text},
                                       {"role": "user", "content": FORMAT_REMINDER}]
                retry.append(i)
        pending = retry
    return out
