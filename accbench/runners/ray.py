"""The same replicas as Ray actors, for a Ray cluster (`runner.address`) or a local Ray instance.

Ray is the optional extra `ray`, imported only here. Each actor holds one model replica (`num_gpus`
GPUs, which Ray assigns through CUDA_VISIBLE_DEVICES); as many actors start as the cluster's GPUs allow
and the `max_num_workers` shards queue onto them. Ray restarts a dead actor once (max_restarts=1) and
retries its call; a second death stops the run with Ray's log directory in the message. On CPU with a local
Ray instance, vLLM actors are bound to cores of their own, as local replicas are (runners/local.py); on a
remote cluster vLLM binds them itself.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from accbench.errors import AccbenchError
from accbench.evaluate.backends.base import BackendStats, BatchSize, ModelBackend
from accbench.runners.local import split_shards
from accbench.runners.worker import ReplicaPool, ReplicaSpec

log = logging.getLogger("accbench.runners")


RAY_HINT = ("pip install 'accbench[ray]' (or: pip install ray) into the Python that runs accbench (for engine: vllm "
            "on CPU, the vLLM environment: bash .ci/vllm_env.sh adds ray to it), or use runner.type: local")


def check_ray_installed() -> None:
    """Preflight: the ray package is there (without importing it); AccbenchError (exit 2) if not."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise AccbenchError(f"runner.type: ray needs the ray package, which is not installed in this Python "
                            f"environment ({sys.executable})", RAY_HINT)


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise AccbenchError(f"runner.type: ray needs the ray package, which cannot be imported here ({exc})",
                            RAY_HINT) from None
    return ray


class _Replica:
    def __init__(self, spec: ReplicaSpec):
        import torch

        from accbench.runners.worker import build_engine

        if spec.cpu_bind:
            from accbench.evaluate.backends.vllm import OMP_BIND_ENV

            os.environ[OMP_BIND_ENV] = spec.cpu_bind
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.engine = build_engine(spec)

    def answer(self, kind: str, requests: list, batch_size: BatchSize) -> tuple[list, dict]:
        from accbench.runners.worker import answer

        return answer(self.engine, kind, requests, batch_size)

    def shutdown(self) -> None:
        self.engine.release()  # a vLLM replica's engine-core processes stop with it


class RayWorkerPool(ReplicaPool):
    """Answers score / score_rolling / generate by sharding the requests over Ray actors."""

    def __init__(self, spec: ReplicaSpec, workers: int, num_gpus: int, address: str | None, log_dir: Path,
                 batch_size: BatchSize = "auto",
                 local: ModelBackend | None = None):
        ray = self.ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                     runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
        self.shards, self.batch_size, self.local, self.engine = workers, batch_size, local, spec.engine
        self.stats = BackendStats()
        self.log_dir = "the Ray session's logs (default /tmp/ray/session_latest/logs)"
        gpu = spec.device.startswith("cuda")
        spec = replace(spec, tensor_parallel=max(1, num_gpus) if spec.engine == "vllm" else 1)
        binds = [""] * workers
        if gpu:
            have = int(ray.cluster_resources().get("GPU", 0))
            if have < max(1, num_gpus):
                raise AccbenchError(f"runner.num_gpus={num_gpus} but the Ray cluster has {have} GPU(s)",
                                    "lower runner.num_gpus or add GPU nodes")
            n = min(workers, have // max(1, num_gpus))
            opts = {"num_gpus": max(1, num_gpus), "num_cpus": 1}
        else:
            n = workers
            cpus = int(ray.cluster_resources().get("CPU", 1))
            spec = replace(spec, threads=max(1, cpus // workers))
            opts = {"num_cpus": 0 if cpus < workers else max(1, cpus // workers)}
            if spec.engine == "vllm" and address is None:  # a local instance: this machine's cores
                from accbench.evaluate.backends.vllm import cpu_binds
                from accbench.runners.local import allowed_cores

                binds = cpu_binds(allowed_cores(), n, spec.tensor_parallel)
        actor = ray.remote(max_restarts=1, max_task_retries=1, **opts)(_Replica)
        self.actors = [actor.remote(replace(spec, cpu_bind=binds[i])) for i in range(n)]

    def _run(self, kind: str, requests: list) -> list:
        self.last_truncated = []
        if not requests:
            return []
        shards = split_shards(len(requests), self.shards)
        futures = [self.actors[s % len(self.actors)].answer.remote(kind, [requests[j] for j in shard], self.batch_size)
                   for s, shard in enumerate(shards)]
        try:
            parts = self.ray.get(futures)
        except self.ray.exceptions.RayActorError as exc:
            raise AccbenchError(f"a Ray worker died twice while answering {kind} requests: {exc}",
                                f"see {self.log_dir}") from None
        except self.ray.exceptions.RayTaskError as exc:
            raise AccbenchError(f"a Ray worker failed on {kind} requests: {exc.cause if hasattr(exc, 'cause') else exc}",
                                f"see {self.log_dir}") from None
        out: list[Any] = [None] * len(requests)
        for shard, (answers, did) in zip(shards, parts):
            self._gather(out, shard, answers, did)
        self.stats.requests[kind] = self.stats.requests.get(kind, 0) + len(requests)
        return out

    def close(self) -> None:
        """Each actor releases its engine (up to 60 s), then is killed."""
        try:
            self.ray.get([a.shutdown.remote() for a in self.actors], timeout=60)
        except Exception as exc:  # noqa: BLE001 - a dead or stuck actor is killed below all the same
            log.warning("a Ray worker did not shut its engine down cleanly: %s", exc)
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
