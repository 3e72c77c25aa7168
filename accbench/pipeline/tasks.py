"""Stage: the downstream tasks (the `tasks` section) on the model as it is at one position.

The tasks' requests are pooled (evaluate/pool.py): answered once per kind across all tasks, by a model
backend (evaluate/backends) or a pool of worker replicas, behind the per-sample store. Each task's result is
handed back as soon as it is complete; a task that fails does not stop the others, and its error is raised
once they have finished and been handed back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from accbench.config import JudgeCfg, ModelCfg, RunnerCfg, TaskCfg
from accbench.errors import AccbenchError
from accbench.evaluate.backends import BatchSize, ModelBackend, create_backend
from accbench.fingerprints import ResumeLog, check_entry
from accbench.pipeline.records import Record, TaskOrder, Timing, timed
from accbench.pipeline.resume import task_fingerprint
from accbench.results import TaskEntry

if TYPE_CHECKING:
    from rich.console import Console

    from accbench.evaluate.judge import HFJudge
    from accbench.evaluate.pool import PooledAnswerer
    from accbench.evaluate.requests import TaskResult
    from accbench.evaluate.tasks import TaskContext
    from accbench.models import LoadedModel
    from accbench.quant.kvcache import KVCacheQuantizer
    from accbench.runners.worker import ReplicaPool
    from accbench.store import SampleStore, StoredAnswerer

log = logging.getLogger("accbench")


def pending(cfgs: list[TaskCfg], earlier: list[TaskEntry], position: str, model_fp: str | None,
            resumed: ResumeLog) -> list[TaskCfg]:
    """The tasks not yet evaluated at `position` with these inputs (a stored entry whose fingerprint matches is
    kept, on --resume; `model_fp`: the fingerprint of the model there)."""
    todo = []
    for t in cfgs:
        stored = next((e for e in earlier if e.model == position and e.task == t.name), None)
        if stored is None or not check_entry(stored.fingerprint, task_fingerprint(model_fp, t),
                                             f"task {position}/{t.name}", resumed):
            todo.append(t)
    return todo


def in_config_order(entries: list[TaskEntry], position: str, names: tuple[str, ...]) -> list[TaskEntry]:
    """`entries` with those of `position` put in config order, the others where they were."""
    order = {n: i for i, n in enumerate(names)}
    mine = iter(sorted((e for e in entries if e.model == position), key=lambda e: order.get(e.task, 1 << 30)))
    return [next(mine) if e.model == position else e for e in entries]


Setting = tuple[str, BatchSize]  # (engine, batch size): the tasks that share one are answered in one pass


class _Backends:
    """What answers a pooled pass, by (engine, batch size) setting: the worker pool for the run's engine (when
    the runner has workers); else one in-process HF backend per batch size (the batch sizes it finds then serve
    every task with that setting), and one vLLM engine, on the position's weights on disk, for every batch size."""

    def __init__(self, loaded: "LoadedModel", workers: "ReplicaPool | None", runner: RunnerCfg,
                 weights: "Callable[[str], str]", kv: "KVCacheQuantizer | None" = None):
        self.loaded, self.workers, self.runner, self.weights = loaded, workers, runner, weights
        self.kv = kv  # quant.kvcache at fake_quant: every local backend's forwards apply it
        self.local: dict[str, ModelBackend] = {}

    def __call__(self, setting: Setting) -> ModelBackend:
        engine, batch_size = setting
        if self.workers is not None and engine == self.runner.engine:
            self.workers.batch_size = batch_size
            return self.workers
        key = repr(setting) if engine == "hf" else engine
        if key not in self.local:
            loaded = self.loaded
            if engine != "hf":  # it reads the weights from disk
                loaded = dataclasses.replace(loaded, path=self.weights(engine))
            self.local[key] = create_backend(loaded, batch_size, engine, self.runner.num_gpus, self.kv)
        return self.local[key]

    def release(self) -> None:
        if self.workers is not None:
            self.workers.release()
        for backend in self.local.values():
            backend.release()


def run_tasks(todo: list[TaskCfg], config_order: list[str], position: str, pairwise_baseline: str,
              loaded: "LoadedModel", model: ModelCfg, runner: RunnerCfg, store: "SampleStore",
              transform: dict[str, Any] | None, run_dir: Path, record: Record, console: "Console",
              model_fp: str | None = None, kv: "KVCacheQuantizer | None" = None) -> None:
    """Evaluate `todo` at `position` (with `kv`, the KV-cache quantization there, quant.kvcache at fake_quant); `model_fp` (the fingerprint of the model there; else one made of the
    weights and `transform`, the quant settings or None) is the model's identity in the per-sample store and
    in each entry's fingerprint; `pairwise_baseline` is the position MT-bench judges this one against ("": none)."""
    from accbench.evaluate.pool import RequestPool
    from accbench.evaluate.tasks import TaskContext
    from accbench.report.exports import write_task_exports
    from accbench.store import model_fingerprint

    fp = model_fp or model_fingerprint(loaded.path, position, model.torch_dtype, transform)
    store.set_model(position, fp)
    task_ctx = TaskContext(loaded.tokenizer, run_dir, position, lambda j: _load_hf_judge(j, loaded.device),
                           baseline=pairwise_baseline, model_fingerprint=fp)
    weights = PositionWeights(loaded, model, position, run_dir)
    if kv is not None and (runner.type != "local" or runner.max_num_workers > 1):  # config.py refuses it first
        raise AccbenchError("worker replicas cannot apply quant.kvcache", "set runner.max_num_workers: 1")
    backends = _Backends(loaded, _start_workers(runner, model, position, loaded, weights), runner, weights, kv)
    pool = RequestPool(backends)
    runs = {t.name: _TaskRun(t, store, fp, task_ctx) for t in todo}
    setting = {t.name: (t.engine or runner.engine, t.batch_size) for t in todo}
    errors: list[BaseException] = []
    for t in todo:
        pool.add(t.name, runs[t.name], setting[t.name], backends(setting[t.name]))

    def done(name: str, res: "TaskResult | None", error: BaseException | None) -> None:
        run = runs[name]
        record(run.timing(position))
        if error is not None:
            log.error("task %s %s failed: %s", position, name, error)
            errors.append(error)
            return
        assert res is not None
        write_task_exports(run_dir, position, run.cfg, res)
        entry = run.entry(position, res, backends(setting[name]).stats.batch_sizes)
        entry.fingerprint = task_fingerprint(model_fp, run.cfg)
        record(entry)
        shown = "  ".join(f"{k} = {v:.4f}" for k, v in res.metrics.items() if isinstance(v, (int, float)))
        console.print(f"[bold]{position}[/] {name}: {shown}  (n={res.n})")
        log.info("task %s %s: %s (n=%d)", position, name, res.metrics, res.n)

    try:
        with timed(record, f"tasks_{position}"):
            pool.run(done)
    finally:
        backends.release()
    log.info("tasks %s: %d pooled rounds, passes %s", position, pool.stats.rounds, pool.stats.passes)
    record(TaskOrder(position, tuple(config_order)))
    if errors:
        raise errors[0]


class _TaskRun:
    """One task at one position: its answers go through the per-sample store; it knows how long it ran."""

    def __init__(self, cfg: TaskCfg, store: "SampleStore", fingerprint: str, task_ctx: "TaskContext"):
        self.cfg, self.store, self.fp, self.task_ctx = cfg, store, fingerprint, task_ctx
        self.answerer: "StoredAnswerer | None" = None
        self.started: float | None = None

    def __call__(self, client: "PooledAnswerer") -> "TaskResult":
        from accbench.evaluate.tasks import run_task
        from accbench.store import StoredAnswerer

        self.started = time.perf_counter()
        self.answerer = StoredAnswerer(self.store, self.fp, self.cfg.name, client)
        return run_task(self.cfg, self.answerer, self.task_ctx)

    def timing(self, position: str) -> Timing:
        now = time.perf_counter()
        return Timing(f"task_{position}_{self.cfg.name}", now - (self.started or now))

    def entry(self, position: str, res: "TaskResult", batch_sizes: dict[str, int]) -> TaskEntry:
        a = self.answerer
        assert a is not None
        extra = {"samples": res.samples, **res.extra, "batch_sizes": dict(batch_sizes), "truncated": a.truncated,
                 "requests": dict(a.computed), "reused_from_store": a.reused}
        return TaskEntry(model=position, task=self.cfg.name, type=res.type, metrics=res.metrics, n=res.n,
                         stderr=res.stderr, per_sample=res.per_sample, **extra)


def _load_hf_judge(judge_cfg: JudgeCfg, device: str) -> "HFJudge":
    """A local judge model for MT-bench, answering through our own backend."""
    from accbench.evaluate.judge import HFJudge
    from accbench.models import load_model

    judge = load_model(judge_cfg.path, device=device)
    return HFJudge(create_backend(judge).generate, judge.tokenizer, judge_cfg.path, judge_cfg.max_tokens)


class PositionWeights:
    """The directory holding this position's weights, for what loads them from disk (worker replicas, vLLM):
    the model's own directory before any change, else the in-memory model saved once under models/.workers/."""

    def __init__(self, loaded: "LoadedModel", model: ModelCfg, position: str, run_dir: Path):
        self.loaded, self.model, self.position, self.run_dir = loaded, model, position, run_dir
        self.path: str | None = None

    def __call__(self, engine: str = "hf") -> str:
        if self.position == "real_quant" and engine == "vllm":
            return self.loaded.path  # the exported compressed-tensors checkpoint, run by vLLM's own kernels
        if self.path is None:
            self.path = self.loaded.path
            if self.position != "pretrain" or self.model.peft:  # the weights in memory are not those on disk
                from accbench.models import save_model

                out = self.run_dir / "models" / ".workers" / self.position
                self.path = str(save_model(self.loaded.model, self.loaded.tokenizer, out))
        return self.path


def _start_workers(r: RunnerCfg, m: ModelCfg, position: str, loaded: "LoadedModel",
                   weights: PositionWeights) -> "ReplicaPool | None":
    """Model replicas for data-parallel evaluation (runner section), or None for in-process evaluation."""
    if r.type == "local" and r.max_num_workers == 1:
        return None
    from accbench.runners.worker import ReplicaSpec

    path = weights(r.engine)
    spec = ReplicaSpec(path, m.torch_dtype, "cuda" if str(loaded.device).startswith("cuda") else "cpu",
                       trust_remote_code=m.trust_remote_code,
                       tokenizer_path=m.tokenizer_path if path == loaded.path else None, engine=r.engine)
    local = create_backend(loaded)
    log.info("starting %d %s workers for %s", r.max_num_workers, r.type, position)
    if r.type == "ray":
        from accbench.runners.ray import RayWorkerPool

        return RayWorkerPool(spec, r.max_num_workers, r.num_gpus, r.address, weights.run_dir / "logs", local=local)
    from accbench.runners.local import LocalWorkerPool, plan_replicas

    replicas = plan_replicas(spec, r.max_num_workers, r.num_gpus, weights.run_dir / "logs")
    return LocalWorkerPool(replicas, r.max_num_workers, local=local)
