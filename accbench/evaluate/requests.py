"""The request and result types shared by the engine and every task.

Tasks turn documents into requests; the engine answers them; tasks turn answers into a `TaskResult`.
Keeping these plain dataclasses lets tasks be tested with a fake engine and lets the engine batch
requests from many tasks at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Union


@dataclass(frozen=True)
class ScoreRequest:
    """log P(continuation | context), and whether the continuation is the greedy one."""

    context: str
    continuation: str
    sample_id: str = field(default="", compare=False)  # the document it belongs to; not part of its identity


@dataclass(frozen=True)
class RollingRequest:
    """Log-likelihood of a whole text, in max-length windows (lm-eval's loglikelihood_rolling)."""

    text: str
    sample_id: str = field(default="", compare=False)


@dataclass(frozen=True)
class GenerateRequest:
    """Generate from `context` (already chat-templated when the task wants that) until a stop string."""

    context: str
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    top_k: int = 0  # sample among the k most likely tokens (before top_p), as Hugging Face generate; 0: all
    sample_id: str = field(default="", compare=False)


def request_fields(request: Any) -> dict[str, Any]:
    """What identifies a request (its store key, a judge-cache key): every field but the sample id, which only
    says which document asked it (identical requests of two documents share one answer)."""
    d = asdict(request)
    d.pop("sample_id", None)
    return d


def cut_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


Request = Union[ScoreRequest, RollingRequest, GenerateRequest]  # what a backend answers, one kind per call
GenerateFn = Callable[[list[GenerateRequest]], list[str]]
ScoreFn = Callable[[list[ScoreRequest]], list[tuple[float, bool]]]


@dataclass
class TaskResult:
    """A task's metrics on one model. `per_sample` maps a stable sample id to its score (1/0 for accuracy,
    a number for scores), so two models can be compared pairwise on the same samples."""

    task: str
    type: str
    metrics: dict[str, float | None]
    stderr: dict[str, float | None]
    n: int
    per_sample: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {sample_id: value}
    # sample_id -> {prompt, reference, response, answers} (results.SampleText's fields), for reading flips
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    # files other tools read, written beside results.json (e.g. lm-eval's own logged samples); not in results.json
    exports: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WindowLossRequest:
    """Perplexity windows of a text file by llmc's recipe (whole-model work, not a per-request kind): the text
    is joined, tokenized once, cut into `seq_len` windows (at most `limit`); the answer is each window's mean
    loss. `bs` windows run per forward; it does not change the answer, so it is not part of `key()`."""

    name: str
    path: str
    seq_len: int
    bs: int = 1
    limit: int | None = None

    def key(self) -> dict[str, Any]:
        """What identifies the answer in the per-sample store."""
        return {"path": self.path, "seq_len": self.seq_len, "limit": self.limit}


class Answerer(Protocol):
    """What a task may ask; every model backend (evaluate/backends/base.py) is one, and so are the request
    pool's client and the per-sample store that wrap it."""

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, or None when answers come only from the store (rescoring)."""

    def score(self, requests: list[ScoreRequest]) -> list[tuple[float, bool]]: ...

    def score_rolling(self, requests: list[RollingRequest]) -> list[float]: ...

    def generate(self, requests: list[GenerateRequest]) -> list[str]: ...

    def window_losses(self, request: WindowLossRequest) -> list[float]: ...
