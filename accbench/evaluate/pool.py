"""Requests of every task of a position, pooled and answered once per kind.

Each task runs in its own thread and asks its answerer exactly as it would alone; the answerer hands the
requests to the pool and waits. Once every unfinished task is waiting, the pool answers all of their
requests together, one pass per request kind (score, score_rolling, generate) and batch-size setting: one
length-sorted, context-grouped engine pass over every task, so short tasks fill the batches of long ones,
a context shared by two tasks runs once, and the batch-size probe runs once per kind. Then the tasks go on;
a task with several rounds (MT-bench's two turns, lm-eval's loglikelihood then generate_until, HumanEval's
generation then execution) simply asks again and joins the next pooled pass.

Only one thread runs at a time: the task threads take turns, in config order, and never run while the
engine does (the engine runs only in the thread that called `run`). Runs are therefore deterministic,
global state (random seeds set by lm-eval, the SQLite connection) is never touched by two threads at once,
and the per-sample store is written chunk by chunk as the engine answers, so an interrupt loses at most
the chunk in flight.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from accbench.evaluate.backends.base import BatchSize, ModelBackend
from accbench.evaluate.requests import GenerateRequest, Request, RollingRequest, ScoreRequest, WindowLossRequest

log = logging.getLogger("accbench.pool")

KINDS = ("call", "score", "score_rolling", "generate")  # the order of the passes within a round
CHUNK = 2048  # requests per engine call within one pass: the most an interrupt can lose


class TaskAborted(BaseException):
    """Raised inside a task thread when the run is interrupted while it waits for answers."""


@dataclass(eq=False)
class _Job:
    name: str
    fn: Callable[[], Any] | None = None
    thread: threading.Thread | None = None
    ask: "_Ask | None" = None
    result: Any = None
    error: BaseException | None = None
    finished: bool = False


@dataclass(eq=False)
class _Ask:
    job: _Job
    kind: str
    batch_size: BatchSize
    items: list
    # (indices into items, their answers, how many of them the engine truncated)
    on_part: Callable[[list[int], list, int], None] | None = None
    answers: list | None = None
    error: BaseException | None = None


def _length_key(kind: str, request: Any) -> tuple:
    """Longest first (an out-of-memory shows at once), equal contexts adjacent (shared-context grouping
    survives the chunking)."""
    if kind == "score":
        return (-len(request.context) - len(request.continuation), request.context)
    if kind == "score_rolling":
        return (-len(request.text),)
    return (-len(request.context),)


class PooledAnswerer:
    """One task's view of the pool: the Answerer interface (evaluate/tasks: score, score_rolling, generate,
    window_losses, tokenizer), plus `answer(kind, requests, on_part)` for the per-sample store, `call(fn)` for
    whole-model work that must run in the backend's thread, and `truncates` from the backend."""

    def __init__(self, pool: "RequestPool", job: _Job, batch_size: BatchSize, backend: ModelBackend | None):
        self.pool, self.job, self.batch_size, self.backend = pool, job, batch_size, backend

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer if self.backend is not None else None

    def score(self, requests: list[ScoreRequest]) -> list[tuple[float, bool]]:
        return self.answer("score", requests)

    def score_rolling(self, requests: list[RollingRequest]) -> list[float]:
        return self.answer("score_rolling", requests)

    def generate(self, requests: list[GenerateRequest]) -> list[str]:
        return self.answer("generate", requests)

    def window_losses(self, request: WindowLossRequest) -> list[float]:
        backend = self._backend()
        return self.call(lambda: backend.window_losses(request))

    def truncates(self, kind: str, request: Request) -> bool:
        return self.backend.truncates(kind, request) if self.backend is not None else False

    def _backend(self) -> ModelBackend:
        if self.backend is None:
            raise RuntimeError(f"task '{self.job.name}' needs the model itself, but its pool has no backend")
        return self.backend

    def answer(self, kind: str, requests: Sequence[Any],
               on_part: Callable[[list[int], list, int], None] | None = None) -> list:
        if not requests:
            return []
        return self.pool._ask(_Ask(self.job, kind, self.batch_size, list(requests), on_part))

    def call(self, fn: Callable[[], Any]) -> Any:
        return self.pool._ask(_Ask(self.job, "call", self.batch_size, [fn]))[0]


@dataclass
class PoolStats:
    rounds: int = 0
    passes: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, tasks, requests) per pooled pass
    calls: int = 0  # engine calls (a pass of more than CHUNK requests takes several)


class RequestPool:
    """Runs task functions in turn-taking threads and answers their requests pooled.

    backend(batch_size) is what answers a pass: a ModelBackend (evaluate/backends), in-process or a worker pool;
    its `last_truncated` tells which requests of its last call had their context cut."""

    def __init__(self, backend: Callable[[BatchSize], ModelBackend], chunk: int | None = None):
        self._backend, self.chunk = backend, chunk or CHUNK
        self._cond = threading.Condition()
        self._turn: _Job | None = None
        self._aborted = False
        self._jobs: list[_Job] = []
        self.stats = PoolStats()

    def add(self, name: str, fn: Callable[[PooledAnswerer], Any], batch_size: BatchSize,
            backend: ModelBackend | None) -> PooledAnswerer:
        """Register a task: fn(answerer) runs in its own thread when `run` is called; `backend` serves what is
        not pooled (the tokenizer, perplexity windows, truncation checks)."""
        job = _Job(name)
        client = PooledAnswerer(self, job, batch_size, backend)
        job.fn = lambda: fn(client)
        self._jobs.append(job)
        return client

    def run(self, on_done: Callable[[str, Any, BaseException | None], None]) -> None:
        """Run every registered task to its end. on_done(name, result, error) is called in this thread as each
        finishes, in a deterministic order; a task's error is handed to on_done, not raised."""
        for job in self._jobs:
            job.thread = threading.Thread(target=self._main, args=(job,), daemon=True, name=f"task-{job.name}")
            job.thread.start()
        try:
            runnable = list(self._jobs)
            while runnable:
                waiting: list[_Ask] = []
                for job in runnable:
                    self._resume(job)
                    if job.finished:
                        on_done(job.name, job.result, job.error)
                    else:
                        assert job.ask is not None
                        waiting.append(job.ask)
                if waiting:
                    self._serve(waiting)
                runnable = [a.job for a in waiting]
        except BaseException:
            self._abort()
            raise
        for job in self._jobs:
            job.thread.join(timeout=5)

    # ------------------------------------------------------------------ turn taking

    def _main(self, job: _Job) -> None:
        with self._cond:
            while self._turn is not job and not self._aborted:
                self._cond.wait()
        try:
            if self._aborted:
                raise TaskAborted()
            assert job.fn is not None
            job.result = job.fn()
        except BaseException as exc:  # handed to on_done by the pool's thread
            job.error = exc
        with self._cond:
            job.finished, job.ask = True, None
            self._turn = None
            self._cond.notify_all()

    def _resume(self, job: _Job) -> None:
        """Let `job` run until it asks for answers or finishes."""
        with self._cond:
            self._turn = job
            self._cond.notify_all()
            while self._turn is not None:
                self._cond.wait()

    def _ask(self, ask: _Ask) -> list:
        job = ask.job
        with self._cond:
            if self._aborted:
                raise TaskAborted()
            if self._turn is not job:
                raise RuntimeError(f"task '{job.name}' asked for answers outside its turn (from another thread?)")
            job.ask = ask
            self._turn = None
            self._cond.notify_all()
            while self._turn is not job and not self._aborted:
                self._cond.wait()
            job.ask = None
        if ask.error is not None:
            raise ask.error
        if ask.answers is None:
            raise TaskAborted()
        return ask.answers

    def _abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ answering

    def _serve(self, asks: list[_Ask]) -> None:
        self.stats.rounds += 1
        groups: dict[tuple[str, str], list[_Ask]] = {}
        for a in asks:
            groups.setdefault((a.kind, repr(a.batch_size)), []).append(a)
        for (kind, _), group in sorted(groups.items(), key=lambda kv: KINDS.index(kv[0][0])):
            if kind == "call":
                for a in group:
                    try:
                        a.answers = [a.items[0]()]
                    except Exception as exc:
                        a.error = exc
                continue
            try:
                self._pass(kind, group)
            except Exception as exc:  # the tasks that asked fail; the others go on
                for a in group:
                    a.error, a.answers = exc, None

    def _pass(self, kind: str, group: list[_Ask]) -> None:
        """One pooled pass: every distinct request of `group` once (two tasks asking the same question share its
        answer; requests are frozen dataclasses, answered deterministically), longest first, in engine calls
        of at most `chunk`; each asker's answers are handed to its on_part as soon as their call returns."""
        askers: dict[Any, list[tuple[_Ask, int]]] = {}
        for a in group:
            a.answers = [None] * len(a.items)
            for j, r in enumerate(a.items):
                askers.setdefault(r, []).append((a, j))
        unique = sorted(askers, key=lambda r: _length_key(kind, r))
        self.stats.passes.append((kind, len(group), len(unique)))
        log.debug("pooled %s pass: %d distinct requests from %d tasks", kind, len(unique), len(group))
        backend = self._backend(group[0].batch_size)
        for s in range(0, len(unique), self.chunk):
            part = unique[s : s + self.chunk]
            out = backend.answer(kind, part)
            cut = {part[p] for p in backend.last_truncated}
            self.stats.calls += 1
            done: dict[int, tuple[_Ask, list[int], list]] = {}
            for r, ans in zip(part, out):
                for a, j in askers[r]:
                    a.answers[j] = ans
                    entry = done.setdefault(id(a), (a, [], []))
                    entry[1].append(j)
                    entry[2].append(ans)
            for a, idx, answers in done.values():
                if a.on_part is not None:
                    a.on_part(idx, answers, sum(a.items[j] in cut for j in idx))
