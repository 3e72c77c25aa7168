"""What stages hand back to the spine: typed facts (a perplexity, a task result, a saved model, a timing...).

A stage never writes into the run's results; it passes each fact, as soon as it exists, to a `Record`
callback the spine gives it, and the spine files it into results.json and saves (so an interruption keeps
every fact handed back so far). A stage that has a model ready to evaluate hands it to an `Evaluate`
callback instead; the spine decides what to evaluate on it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Union

from accbench.results import FidelityEntry, PplEntry, QuantInfo, SparseInfo, TaskEntry, TrainEntry

if TYPE_CHECKING:
    from accbench.models import LoadedModel


@dataclass(frozen=True)
class Timing:
    """Seconds spent in one named step; repeated steps add up (results.json `timings`)."""

    name: str
    seconds: float


@dataclass(frozen=True)
class ModelPath:
    """Where the model of a position (or training variant) lives; None: it was removed."""

    position: str
    path: str | None


@dataclass(frozen=True)
class TaskOrder:
    """The task entries of `position` are complete: put them in config order (`names`)."""

    position: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class OpenCompassResult:
    """OpenCompass's scores (one dict per model x dataset) and where its outputs are."""

    scores: list[dict]
    output: dict[str, str]


@dataclass(frozen=True)
class StaleFidelity:
    """A stored fidelity entry no longer matches what produced it and cannot be recomputed (no matching
    baseline recording): it leaves results.json, so no number there outlives the config that made it."""

    position: str
    dataset: str
    seq_len: int


Fact = Union[PplEntry, FidelityEntry, TaskEntry, TrainEntry, QuantInfo, SparseInfo, Timing, ModelPath, TaskOrder,
             OpenCompassResult, StaleFidelity]
Record = Callable[[Fact], None]
Evaluate = Callable[[str, "LoadedModel"], None]  # (position, the model as it is there)


@contextmanager
def timed(record: Record, name: str) -> Iterator[None]:
    """Hand back the wall time of the block as Timing(name), also when it fails."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record(Timing(name, time.perf_counter() - t0))
