"""Local data-parallel workers: `max_num_workers` shards of every request list, answered by model replicas
in spawned processes, gathered back in request order.

On GPU each replica gets `num_gpus` devices of its own (CUDA_VISIBLE_DEVICES); when there are fewer than
num_gpus x max_num_workers, fewer replicas run and the remaining shards wait for a free one. On CPU every
replica is a process with its share of the cores (a vLLM replica: its own cores, split between its
tensor-parallel ranks). A replica that dies is restarted once and its shard re-run; a second death stops the
run with the worker's log path. Replicas are not daemonic (a vLLM replica starts its own engine processes):
`close` stops them, and runs at interpreter exit too.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from accbench.errors import AccbenchError
from accbench.evaluate.backends.base import BackendStats, BatchSize, ModelBackend
from accbench.runners.worker import ReplicaPool, ReplicaSpec, worker_main

log = logging.getLogger("accbench.runners")
START_TIMEOUT_S = 1800.0
STOP_TIMEOUT_S = 60.0  # a vLLM replica shuts its engine core down in a few seconds


SHARD_BLOCK = 32  # consecutive requests kept together on one replica


def split_shards(n_items: int, n_shards: int, block: int = SHARD_BLOCK) -> list[list[int]]:
    """Request indices per shard: runs of `block` consecutive requests dealt round-robin, none empty.

    Requests arrive length-sorted (the request pool sorts each pass, longest first) with the choices of a
    question next to each other: contiguous halves would give one replica all the long requests, single
    requests dealt round-robin would run each shared context on every replica. Runs of `block` do neither."""
    n_shards = max(1, min(n_shards, n_items))
    block = max(1, min(block, -(-n_items // n_shards)))  # small inputs: every shard still gets some
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    for k, start in enumerate(range(0, n_items, block)):
        shards[k % n_shards].extend(range(start, min(start + block, n_items)))
    return [s for s in shards if s]


def visible_gpus() -> list[int]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().lstrip("-").isdigit() and int(x) >= 0]
    import torch

    return list(range(torch.cuda.device_count()))


ERROR_LINE = re.compile(r"\b([A-Z]\w*(?:Error|Exception): .+)")


def first_error(log_path: str) -> str | None:
    """The first exception message (`SomeError: ...`) a worker's log holds: the root cause of a failure that
    surfaced later, wrapped (vLLM's engine core reports a worker's error as 'initialization failed')."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return None
    m = ERROR_LINE.search(text)
    return m.group(1).strip()[:500] if m else None


def kill_group(pgid: int) -> None:
    """SIGKILL the process group a replica leads (worker_main makes each replica one): the engine processes it
    started, which a replica that died leaves running (a vLLM engine core keeps polling)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):  # none left (or not POSIX)
        pass


def allowed_cores() -> list[int]:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def plan_replicas(base: ReplicaSpec, workers: int, num_gpus: int, log_dir: Path) -> list[ReplicaSpec]:
    """One spec per replica that can run at once: GPU groups of num_gpus, or CPU cores split evenly (a vLLM
    replica on CPU: num_gpus tensor-parallel ranks, each bound to its own cores)."""
    tp = max(1, num_gpus) if base.engine == "vllm" else 1
    base = replace(base, tensor_parallel=tp)
    if base.device.startswith("cuda"):
        gpus = visible_gpus()
        per = max(1, num_gpus)
        if len(gpus) < per:
            raise AccbenchError(f"runner.num_gpus={num_gpus} but only {len(gpus)} GPU(s) are visible",
                                "lower runner.num_gpus or make more GPUs visible (CUDA_VISIBLE_DEVICES)")
        n = min(workers, len(gpus) // per)
        if n < workers:
            log.warning("%d workers x %d GPUs requested, %d GPUs visible: %d replicas, the other shards queue",
                        workers, per, len(gpus), n)
        return [replace(base, device="cuda", gpus=tuple(gpus[i * per : (i + 1) * per]),
                        log_path=str(log_dir / f"worker_{i}.log")) for i in range(n)]
    cores = allowed_cores()
    threads = max(1, len(cores) // workers)
    binds = [""] * workers
    if base.engine == "vllm":
        from accbench.evaluate.backends.vllm import cpu_binds

        binds = cpu_binds(cores, workers, tp)
    return [replace(base, device="cpu", threads=threads, cpu_bind=binds[i], log_path=str(log_dir / f"worker_{i}.log"))
            for i in range(workers)]


class LocalWorkerPool(ReplicaPool):
    """Answers score / score_rolling / generate by sharding the requests over replica processes."""

    def __init__(self, replicas: list[ReplicaSpec], shards: int, batch_size: BatchSize = "auto",
                 local: ModelBackend | None = None):
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")  # a clean interpreter per replica: no forked torch/CUDA state
        self.replicas, self.shards, self.batch_size = replicas, shards, batch_size
        self.engine = replicas[0].engine
        self.local = local  # the parent's backend, for what needs the model itself (perplexity windows)
        self.stats = BackendStats()
        self.results = self.ctx.Queue()
        self.procs: list[Any] = [None] * len(replicas)
        self.jobs: list[Any] = [None] * len(replicas)
        self.restarts = [0] * len(replicas)
        self.busy: dict[int, int] = {}
        atexit.register(self.close)  # before multiprocessing's own exit hook, which would wait for them forever
        try:
            for i in range(len(replicas)):
                self._start(i)
            self._wait_ready(range(len(replicas)))
        except BaseException:  # interrupted, or a replica failed: stop the others
            self.close()
            raise

    # ------------------------------------------------------------------ processes

    def _start(self, i: int) -> None:
        self.jobs[i] = self.ctx.Queue()
        p = self.ctx.Process(target=worker_main, args=(i, self.replicas[i], self.jobs[i], self.results), daemon=False)
        p.start()
        self.procs[i] = p

    def _wait_ready(self, ids: Any) -> None:
        waiting, deadline = set(ids), time.monotonic() + START_TIMEOUT_S
        while waiting:
            try:
                status, wid, _, info = self.results.get(timeout=1.0)
            except queue.Empty:
                for i in list(waiting):
                    if not self.procs[i].is_alive():
                        self._fail(i, f"worker {i} exited with code {self.procs[i].exitcode} while loading the model")
                if time.monotonic() > deadline:
                    raise AccbenchError(f"workers {sorted(waiting)} did not load the model in {START_TIMEOUT_S:.0f} s",
                                        f"see {self.replicas[min(waiting)].log_path}")
                continue
            if status == "failed":
                why, hint = info
                self._fail(wid, f"worker {wid} could not load the model: {why}", hint)
            waiting.discard(wid)

    def _fail(self, i: int, why: str, hint: str | None = None) -> None:
        """Stop every replica and raise AccbenchError with replica i's log (and the first error in it)."""
        self.close()
        log_path = self.replicas[i].log_path
        cause = first_error(log_path)
        if cause and cause not in why:  # a vLLM replica's root cause sits in its engine core's output
            why += f"\n  first error in the worker's log: {cause}"
        raise AccbenchError(why, f"the worker's log is {log_path}" + (f"; {hint}" if hint else ""))

    def _run(self, kind: str, requests: list) -> list:
        self.last_truncated = []
        if not requests:
            return []
        shards = split_shards(len(requests), self.shards)
        todo = list(range(len(shards)))
        busy = self.busy = {}  # replica -> the shard it is answering
        out: list[Any] = [None] * len(requests)
        left = len(shards)
        while left:
            for i in range(len(self.replicas)):
                if i not in busy and todo:
                    s = todo.pop(0)
                    self.jobs[i].put((s, kind, [requests[j] for j in shards[s]], self.batch_size))
                    busy[i] = s
            try:
                status, wid, s, info = self.results.get(timeout=1.0)
            except queue.Empty:
                for i, s in list(busy.items()):
                    if not self.procs[i].is_alive():
                        self._restart(i, s, kind)
                        del busy[i]
                        todo.insert(0, s)
                continue
            if status == "error":
                self._fail(wid, f"worker {wid} failed on a {kind} shard: {info}")
            if status == "done":
                answers, did = info
                self._gather(out, shards[s], answers, did)
                busy.pop(wid, None)
                left -= 1
        self.stats.requests[kind] = self.stats.requests.get(kind, 0) + len(requests)
        return out

    def _restart(self, i: int, shard: int, kind: str) -> None:
        code = self.procs[i].exitcode
        if self.restarts[i] >= 1:
            self._fail(i, f"worker {i} died twice (exit code {code}) while answering {kind} requests")
        self.restarts[i] += 1
        log.warning("worker %d died (exit code %s) on shard %d; restarting it once", i, code, shard)
        kill_group(self.procs[i].pid)  # what it started (a vLLM engine core) would outlive it
        self._start(i)
        self._wait_ready([i])

    def close(self) -> None:
        """Stop every replica: an idle one is asked to (it releases its engine), one still answering gets SIGTERM
        (which releases it too), SIGKILL after STOP_TIMEOUT_S; then whatever a replica started and left behind
        (its process group) is killed."""
        atexit.unregister(self.close)
        for i, p in enumerate(self.procs):
            if p is not None and p.is_alive():
                if i in self.busy:
                    p.terminate()
                else:
                    self.jobs[i].put(None)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in self.procs:
            if p is not None:
                p.join(timeout=max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            if p is not None and p.is_alive():
                p.terminate()  # worker_main turns SIGTERM into an exit that still releases its engine
                p.join(timeout=15)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5)
        for p in self.procs:
            if p is not None:
                kill_group(p.pid)
        self.procs = [None] * len(self.replicas)
        self.busy = {}

    def __enter__(self) -> "LocalWorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
