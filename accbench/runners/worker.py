"""One model replica in its own process: loads the model once, then answers request shards until told to stop.

Everything the process prints goes to its log file (logs/worker_<i>.log), whose path a failure reports.
The replica is pinned before torch is imported: CUDA_VISIBLE_DEVICES for its GPUs, a thread count on CPU, and
for a vLLM replica on CPU its own cores (VLLM_CPU_OMP_THREADS_BIND, one group per tensor-parallel rank). It
releases its engine (a vLLM replica's engine-core processes) when told to stop, on SIGTERM, or when it finds
its parent gone; it leads a process group of its own, which the parent kills when the replica dies (a vLLM
engine core would outlive it).
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Any

from accbench.evaluate.backends.base import BatchSize, ModelBackend
from accbench.evaluate.requests import GenerateRequest, Request, RollingRequest, ScoreRequest, WindowLossRequest

# test hooks: make a worker die while answering, once (marker file) or always
FAIL_ONCE_ENV = "ACCBENCH_TEST_WORKER_FAIL_ONCE"
FAIL_ALWAYS_ENV = "ACCBENCH_TEST_WORKER_FAIL_ALWAYS"


@dataclass(frozen=True)
class ReplicaSpec:
    """How to build one replica: the model on disk and where it runs."""

    model_path: str
    dtype: str = "auto"
    device: str = "cpu"  # "cpu" or "cuda" (the visible GPUs of this replica)
    gpus: tuple[int, ...] = ()
    threads: int | None = None
    placement: str = "single"
    trust_remote_code: bool = False
    tokenizer_path: str | None = None
    log_path: str = ""
    engine: str = "hf"  # the backend each replica runs (evaluate/backends)
    tensor_parallel: int = 1  # vllm: its tensor-parallel size (runner.num_gpus), on GPUs or CPU ranks
    cpu_bind: str = ""  # vllm on CPU: VLLM_CPU_OMP_THREADS_BIND, this replica's cores ("0|1": one per rank)


class ReplicaPool(ModelBackend):
    """A pool of replicas behind the ModelBackend contract: each request kind goes to `_run(kind, requests)`,
    which splits the requests into shards (`split_shards`) and puts each shard's answers back with `_gather`.
    What needs the model itself (perplexity windows, the tokenizer, truncation checks) goes to `local`, the
    parent's own backend over the same weights."""

    local: ModelBackend | None = None
    batch_size: BatchSize = "auto"
    engine: str = "hf"  # the replicas' backend: a vLLM pool answers perplexity windows on a replica too

    def _run(self, kind: str, requests: list) -> list:
        raise NotImplementedError

    def _local(self) -> ModelBackend:
        if self.local is None:
            raise RuntimeError("this worker pool was built without the parent's backend")
        return self.local

    @property
    def tokenizer(self) -> Any:
        return self._local().tokenizer

    def window_losses(self, request: WindowLossRequest) -> list[float]:
        if self.engine == "hf":
            return self._local().window_losses(request)
        return self._run("window_losses", [request])[0]  # the run's engine answers every task

    def truncates(self, kind: str, request: Request) -> bool:
        return self._local().truncates(kind, request)

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop the replicas."""

    def _gather(self, out: list, shard: list[int], answers: list, did: dict) -> None:
        """Place one shard's answers (shard: their positions in `out`) and fold in what its engine did."""
        for j, ans in zip(shard, answers):
            out[j] = ans
        self.last_truncated.extend(shard[j] for j in did["truncated_ids"])
        for k, v in did["batch_sizes"].items():  # the smallest batch size used wins
            self.stats.batch_sizes[k] = min(self.stats.batch_sizes.get(k, v), v)
        self.stats.truncated += len(did["truncated_ids"])

    def score(self, requests: list[ScoreRequest]) -> list[tuple[float, bool]]:
        return self._run("score", requests)

    def score_rolling(self, requests: list[RollingRequest]) -> list[float]:
        return self._run("score_rolling", requests)

    def generate(self, requests: list[GenerateRequest]) -> list[str]:
        return self._run("generate", requests)


def build_engine(spec: ReplicaSpec) -> ModelBackend:
    from accbench.evaluate.backends import create_backend
    from accbench.models import load_model

    placement = "device_map" if len(spec.gpus) > 1 and spec.placement == "single" else spec.placement
    # vLLM loads the weights itself: the HF model (tokenizer, window, dtype) then stays on the CPU
    device = "cpu" if spec.engine != "hf" else spec.device
    if spec.engine != "hf":
        placement = "single"
    loaded = load_model(spec.model_path, spec.dtype, spec.trust_remote_code, spec.tokenizer_path, device,
                        placement, max(1, len(spec.gpus)))
    gpus = max(1, len(spec.gpus)) if spec.engine == "hf" else spec.tensor_parallel
    return create_backend(loaded, name=spec.engine, gpus=gpus)


def answer(engine: ModelBackend, kind: str, requests: list, batch_size: BatchSize) -> tuple[list, dict]:
    """Run one shard; returns the answers and what the engine did (batch sizes, truncations)."""
    if os.environ.get(FAIL_ALWAYS_ENV):
        os._exit(17)
    marker = os.environ.get(FAIL_ONCE_ENV)
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(17)
    engine.batch_size = batch_size
    engine.stats.batch_sizes.clear()
    engine.last_truncated = []
    if kind == "window_losses":
        out: list = [engine.window_losses(r) for r in requests]
    else:
        out = engine.answer(kind, requests)
    return out, {"batch_sizes": dict(engine.stats.batch_sizes), "truncated_ids": list(engine.last_truncated)}


def failure(exc: BaseException) -> tuple[str, str | None]:
    """What a replica that cannot start reports: (what went wrong, how to fix it: an AccbenchError's hint)."""
    from accbench.errors import AccbenchError

    if isinstance(exc, AccbenchError):
        return exc.message, exc.hint
    return f"{type(exc).__name__}: {exc}", None


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through worker_main's `finally`, which releases the engine


def worker_main(worker_id: int, spec: ReplicaSpec, jobs: Any, results: Any) -> None:
    """Process entry point (spawned): build the replica, then loop over (job id, kind, requests, batch size)."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()  # a group of its own: the parent kills what it leaves behind (LocalWorkerPool.close)
    if spec.log_path:
        log = open(spec.log_path, "a", buffering=1)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
    if spec.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.gpus))
    if spec.cpu_bind:
        from accbench.evaluate.backends.vllm import OMP_BIND_ENV

        os.environ[OMP_BIND_ENV] = spec.cpu_bind
    signal.signal(signal.SIGTERM, _stop)
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        engine = build_engine(spec)
    except BaseException as exc:  # report why this replica cannot start; the parent decides what to do
        traceback.print_exc()
        results.put(("failed", worker_id, None, failure(exc)))
        return
    where = f"cores {spec.cpu_bind}" if spec.cpu_bind else f"{spec.device} {spec.gpus or ''}"
    print(f"worker {worker_id}: model loaded ({spec.engine}, {where})", flush=True)
    results.put(("ready", worker_id, None, None))
    try:
        _serve(worker_id, engine, jobs, results)
    finally:
        engine.release()
        print(f"worker {worker_id}: stopped", flush=True)


def _serve(worker_id: int, engine: ModelBackend, jobs: Any, results: Any) -> None:
    parent = os.getppid()
    while True:
        try:
            job = jobs.get(timeout=5.0)
        except queue.Empty:
            if os.getppid() != parent:  # the run died without stopping its replicas
                return
            continue
        if job is None:
            return
        job_id, kind, requests, batch_size = job
        print(f"worker {worker_id}: shard {job_id}, {len(requests)} {kind} request(s)", flush=True)
        try:
            out, sizes = answer(engine, kind, requests, batch_size)
            results.put(("done", worker_id, job_id, (out, sizes)))
        except BaseException as exc:
            traceback.print_exc()
            results.put(("error", worker_id, job_id, f"{type(exc).__name__}: {exc}"))
