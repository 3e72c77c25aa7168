"""Data-parallel workers: shards, replica planning, identical per-sample results, restart-once, Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accbench.evaluate.backends.base import BackendStats as EngineStats
from accbench.results import Results
from accbench.runners.local import plan_replicas, split_shards
from accbench.runners.worker import FAIL_ALWAYS_ENV, FAIL_ONCE_ENV, ReplicaPool, ReplicaSpec

DOCS = [{"id": f"q{i}", "context": f"value = {i} *", "choices": [f" {i}", " 2", f" ({i} + 1)"], "label": i % 3}
        for i in range(10)]


def test_split_shards():
    # runs of consecutive requests dealt round-robin: long and short requests spread over every shard
    assert split_shards(10, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert split_shards(2, 4) == [[0], [1]]
    shards = split_shards(200, 2, block=32)
    assert shards[0][:33] == list(range(32)) + [64] and shards[1][:2] == [32, 33]
    assert sorted(shards[0] + shards[1]) == list(range(200))
    assert abs(sum(shards[0]) - sum(shards[1])) < 200 * 32  # neither shard holds all the early (long) ones


def test_gather_puts_shard_answers_and_truncations_back_in_request_positions():
    pool = ReplicaPool()
    pool.stats, pool.last_truncated = EngineStats(), []
    out = [None] * 6
    pool._gather(out, [0, 1, 4], ["a", "b", "e"], {"batch_sizes": {"score": 8}, "truncated_ids": [2]})
    pool._gather(out, [2, 3, 5], ["c", "d", "f"], {"batch_sizes": {"score": 4}, "truncated_ids": [0, 1]})
    assert out == list("abcdef")
    assert sorted(pool.last_truncated) == [2, 3, 4] and pool.stats.truncated == 3
    assert pool.stats.batch_sizes == {"score": 4}  # the smallest batch size a shard used


def test_plan_replicas(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    gpu = ReplicaSpec("m", device="cuda")
    assert [r.gpus for r in plan_replicas(gpu, 3, 1, tmp_path)] == [(0,), (1,), (2,)]
    assert [r.gpus for r in plan_replicas(gpu, 2, 2, tmp_path)] == [(0, 1)]  # the second shard queues
    cpu = plan_replicas(ReplicaSpec("m"), 2, 0, tmp_path)
    assert len(cpu) == 2 and cpu[1].log_path.endswith("worker_1.log") and cpu[0].threads >= 1
    assert [r.cpu_bind for r in cpu] == ["", ""] and cpu[0].tensor_parallel == 1  # HF replicas: threads only
    # vLLM replicas: num_gpus is each one's tensor-parallel size, on GPUs or (CPU) ranks bound to their own cores
    assert [(r.gpus, r.tensor_parallel) for r in plan_replicas(ReplicaSpec("m", device="cuda", engine="vllm"),
                                                               2, 1, tmp_path)] == [((0,), 1), ((1,), 1)]
    monkeypatch.setattr("accbench.runners.local.allowed_cores", lambda: [0, 1, 2, 3])
    vl = plan_replicas(ReplicaSpec("m", engine="vllm"), 2, 2, tmp_path)
    assert [(r.cpu_bind, r.tensor_parallel, r.threads) for r in vl] == [("0|1", 2, 2), ("2|3", 2, 2)]
    assert [r.cpu_bind for r in plan_replicas(ReplicaSpec("m", engine="vllm"), 2, 0, tmp_path)] == ["0,1", "2,3"]


def test_cpu_binds_split_the_cores_between_engines_and_ranks():
    from accbench.evaluate.backends.vllm import cpu_binds

    assert cpu_binds([0, 1], 2, 1) == ["0", "1"]
    assert cpu_binds([0, 1], 1, 2) == ["0|1"]
    assert cpu_binds([3, 2, 1, 0, 4], 1, 2) == ["0,1|2,3"]  # an odd core left over
    assert cpu_binds(range(8), 2, 2) == ["0,1|2,3", "4,5|6,7"]
    assert cpu_binds([0, 1], 2, 2) == ["0|1", "0|1"]  # more ranks than cores: shared round-robin


def test_a_replica_that_cannot_start_names_the_first_error_in_its_log(tmp_path):
    from accbench.errors import AccbenchError
    from accbench.runners.local import LocalWorkerPool

    log = tmp_path / "worker_1.log"
    log.write_text("INFO loading\n(Worker pid=7) ERROR [x.py:1] ValueError: Available memory on node 0 (3 GiB) is "
                   "less than requested memory for kv (9 GiB)\nRuntimeError: Engine core initialization failed\n")
    pool = LocalWorkerPool.__new__(LocalWorkerPool)  # no processes: only the failure path
    pool.replicas, pool.procs, pool.jobs = [ReplicaSpec("m", log_path=str(log))], [None], [None]
    with pytest.raises(AccbenchError) as err:
        pool._fail(0, "worker 1 could not load the model: RuntimeError: Engine core initialization failed",
                   "or set engine: hf")
    assert "first error in the worker's log: ValueError: Available memory on node 0" in err.value.message
    assert err.value.hint == f"the worker's log is {log}; or set engine: hf"


def test_a_replica_reports_why_it_cannot_start_and_how_to_fix_it():
    from accbench.errors import ModelLoadError
    from accbench.runners.worker import failure

    assert failure(ModelLoadError("vLLM could not start", "set engine: hf")) == ("vLLM could not start",
                                                                                "set engine: hf")
    assert failure(OSError("no such file")) == ("OSError: no such file", None)


@pytest.fixture
def task_yaml(tmp_path) -> Path:
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"prompt": f"x = {i}", "target": str(i)}) + "\n" for i in range(5)))
    cfg = tmp_path / "tasks.yaml"
    cfg.write_text(f"tasks:\n  - {{name: mc, type: multiple_choice, path: {data}, batch_size: 4}}\n"
                   f"  - {{name: gen, type: generate, path: {gen}, max_new_tokens: 4, batch_size: 2}}\n")
    return cfg


def _tasks(run_dir) -> dict:
    return {t.task: (t.metrics, t.per_sample) for t in Results.load(run_dir).tasks}


# ~25 s idle (three spawned model-loading processes); runs by default: it is the proof that data-parallel
# workers give per-sample results identical to one worker
def test_two_workers_match_one_and_a_dead_worker_restarts_once(tiny_model_dir, task_yaml, tmp_path, monkeypatch,
                                                                accbench_eval):
    assert accbench_eval(tiny_model_dir, task_yaml, tmp_path / "one") == 0
    monkeypatch.setenv(FAIL_ONCE_ENV, str(tmp_path / "died_once"))  # the first shard kills its worker
    assert accbench_eval(tiny_model_dir, task_yaml, tmp_path / "two", "runner.max_num_workers=2") == 0
    assert (tmp_path / "died_once").exists()
    assert _tasks(tmp_path / "two") == _tasks(tmp_path / "one")
    assert (tmp_path / "two" / "logs" / "worker_1.log").is_file()


@pytest.mark.slow  # ~30 s on 2 shared cores: two model-loading processes that both die
def test_worker_dying_twice_stops_with_its_log(tiny_model_dir, task_yaml, tmp_path, monkeypatch, capsys,
                                               accbench_eval):
    monkeypatch.setenv(FAIL_ALWAYS_ENV, "1")
    assert accbench_eval(tiny_model_dir, task_yaml, tmp_path / "run", "runner.max_num_workers=2") == 2
    err = capsys.readouterr().err
    assert "died twice" in err and "worker_" in err and ".log" in err


@pytest.mark.slow  # starts a local Ray instance (~30-60 s on 2 shared cores)
def test_ray_workers_match_one(tiny_model_dir, task_yaml, tmp_path, accbench_eval):
    pytest.importorskip("ray", reason="runner.type ray needs the optional extra `ray`")
    assert accbench_eval(tiny_model_dir, task_yaml, tmp_path / "one") == 0
    assert accbench_eval(tiny_model_dir, task_yaml, tmp_path / "ray", "runner.type=ray",
                         "runner.max_num_workers=2") == 0
    assert _tasks(tmp_path / "ray") == _tasks(tmp_path / "one")


def test_ray_runner_without_ray_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    import importlib.util

    from accbench.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    cfg = tmp_path / "ray.yaml"
    cfg.write_text("model: {path: 'builtin:tiny-llama'}\nrunner: {type: ray, max_num_workers: 2}\n"
                   "tasks:\n  - {name: cloze, type: multiple_choice, path: 'builtin:pydoc-cloze', limit: 4}\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "runner.type: ray needs the ray package, which is not installed" in err and "pip install" in err
