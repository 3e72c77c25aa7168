"""The contract every model backend meets: what the tasks, the request pool, the per-sample store and the
worker pool may ask of a model, and nothing else.

A backend answers three request kinds over one model (as lm-eval's `LM` does: `loglikelihood`,
`loglikelihood_rolling`, `generate_until`), plus perplexity windows, and reports back what it did (batch
sizes it settled on, requests whose context it cut). A backend for a position is made by `create` from the
loaded model and released by `release` when the position is done. `hf.py` (Hugging Face, in-process) is the
reference implementation; the worker pools (runners/) wrap one backend per replica behind this same contract.
A new backend (vLLM, ...) is one file in this folder implementing `ModelBackend`, plus one line in
`backends/__init__.py`'s table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from accbench.evaluate.requests import GenerateRequest, Request, RollingRequest, ScoreRequest, WindowLossRequest

if TYPE_CHECKING:
    from accbench.models import LoadedModel

BatchSize = int | str  # a positive int, or "auto": the backend chooses (and remembers) the largest that fits
REQUEST_KINDS = ("score", "score_rolling", "generate")


@dataclass
class BackendStats:
    """What a backend did, for results.json: the batch size it used per request kind (the smallest one, when
    out-of-memory halved it), how many requests had their context cut, request counts, forward tokens."""

    batch_sizes: dict[str, int] = field(default_factory=dict)
    truncated: int = 0  # requests whose context was cut from the left to fit the model window
    requests: dict[str, int] = field(default_factory=dict)
    forward_tokens: int = 0  # tokens actually run through the model (after context sharing)


class ModelBackend(ABC):
    """A model that answers requests. Every member below is the whole contract; callers use nothing else.

    Attributes a backend keeps up to date:
      stats          BackendStats, accumulated over the backend's life.
      last_truncated positions, in the requests of the most recent score/score_rolling/generate call, whose
                     context was cut from the left to fit the model window (empty when none was).
      batch_size     the batch-size setting for the next calls (an int, or "auto"); settable.
    """

    stats: BackendStats
    last_truncated: list[int]
    batch_size: BatchSize

    @classmethod
    def create(cls, loaded: "LoadedModel", batch_size: BatchSize = "auto", gpus: int = 1) -> "ModelBackend":
        """A backend over `loaded` (the model as it is at one position; a backend that reads weights from disk,
        such as vLLM, reads them from `loaded.path`, which the caller makes hold this position's weights).
        `gpus`: the GPUs one replica spans (vLLM's tensor-parallel size; the HF model is placed when loaded).
        Model backends implement this; wrappers such as the worker pools are built around one backend by their
        runner instead."""
        raise NotImplementedError(f"{cls.__name__} is not created from a loaded model")

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (chat templates, lm-eval's model name)."""

    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest]) -> list[tuple[float, bool]]:
        """For each request: (log P(continuation | context), whether the continuation is the greedy one),
        tokenized as lm-eval's HFLM does, context cut from the left to the model window when too long."""

    @abstractmethod
    def score_rolling(self, requests: Sequence[RollingRequest]) -> list[float]:
        """For each request: the total log-likelihood of its text, in disjoint model-window windows, as
        lm-eval's loglikelihood_rolling computes it."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """For each request: its continuation, cut at the first stop string (EOS also stops); the same
        answer whatever the batch it runs in (per-request sampling seed, temperature 0 is greedy)."""

    @abstractmethod
    def window_losses(self, request: WindowLossRequest) -> list[float]:
        """The mean loss of each perplexity window of `request`'s text (llmc's recipe): whole-model work
        that a worker pool runs on the parent's model."""

    @abstractmethod
    def truncates(self, kind: str, request: Request) -> bool:
        """Whether answering `request` of `kind` would cut its context (so that answers reused from the
        per-sample store count their truncations as a fresh run would)."""

    def answer(self, kind: str, requests: Sequence[Any]) -> list:
        """Answer `requests` of one kind ("score", "score_rolling" or "generate")."""
        if kind == "score":
            return self.score(requests)
        if kind == "score_rolling":
            return self.score_rolling(requests)
        if kind == "generate":
            return self.generate(requests)
        raise ValueError(f"unknown request kind {kind!r}; kinds: {', '.join(REQUEST_KINDS)}")

    def release(self) -> None:
        """Free what the backend holds (processes, accelerator memory); it answers nothing afterwards."""
