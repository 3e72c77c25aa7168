"""Helpers of the vLLM replica / tensor-parallel / Ray tests (tests/test_vllm_{replicas,tp,ray}.py): one small
`accbench run` config over the vLLM test model, and the comparison of two runs' raw answers (the per-sample
store: every log-likelihood, greedy flag, generation and perplexity window)."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import yaml

from accbench.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_config(tmp_path: Path, model_dir: Path, data: Path, name: str, runner: dict[str, Any]) -> Path:
    """`accbench run` of three small tasks (multiple choice, greedy generation, perplexity) at pretrain with
    this runner section; returns the run directory (exit code 0 asserted)."""
    cfg = {
        "base": {"seed": 0},
        "model": {"path": str(model_dir), "torch_dtype": "float32", "device": "cpu"},
        "runner": runner,
        "tasks": [
            {"name": "mc", "type": "multiple_choice", "path": str(EXAMPLES / "data" / "mc_python.jsonl"),
             "limit": 10},
            {"name": "gen", "type": "generate", "path": str(EXAMPLES / "data" / "gen_python.jsonl"),
             "max_new_tokens": 16, "stop": ["\n"]},
            {"name": "ppl", "type": "perplexity", "path": str(data), "seq_len": 64, "limit": 4},
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / name
    assert main(["run", str(path), "-o", str(out)]) == 0
    return out


def answers(run: Path) -> dict[str, tuple[str, Any]]:
    """Every stored answer of a run: request key -> (kind, response)."""
    with sqlite3.connect(run / "samples.sqlite") as c:
        return {k: (kind, json.loads(r)) for k, kind, r in c.execute("select key, kind, response from samples")}


def compare(a: Path, b: Path) -> dict[str, float]:
    """Asserts run b answers as run a does (float32): identical generations and greedy flags, log-likelihoods
    within 1e-4, perplexity windows within 1e-5, equal task metrics; returns the largest differences."""
    x, y = answers(a), answers(b)
    assert set(x) == set(y) and x
    worst = {"score": 0.0, "perplexity": 0.0}
    for key, (kind, ans) in x.items():
        other = y[key][1]
        if kind == "generate":
            assert ans == other, (ans, other)
        elif kind == "score":
            assert ans[1] == other[1]
            worst["score"] = max(worst["score"], abs(ans[0] - other[0]))
        else:
            worst[kind] = max([worst.get(kind, 0.0)] + [abs(u - v) for u, v in zip(ans, other)])
    assert worst["score"] < 1e-4 and worst["perplexity"] < 1e-5, worst
    ta, tb = tasks(a), tasks(b)
    assert set(ta) == set(tb) == {"mc", "gen", "ppl"}
    for name in ("mc", "gen"):
        assert ta[name]["per_sample"] == tb[name]["per_sample"] and ta[name]["metrics"] == tb[name]["metrics"]
    return worst


def tasks(run: Path) -> dict[str, dict]:
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete"
    return {t["task"]: t for t in res["tasks"]}


def engine_pids(text: str) -> set[int]:
    """The pids of vLLM's engine-core and worker processes named in its log lines."""
    return {int(p) for p in re.findall(r"\((?:EngineCore|Worker)[^ ]* pid=(\d+)\)", text)}


def alive(pid: int) -> bool:
    """Whether `pid` is a running vLLM process (its title VLLM::...; a zombie, or a pid since reused by
    another program, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(" (", 1)[-1].startswith("VLLM::") and stat.split(") ")[-1][:1] != "Z"


def outliving(pids: set[int], grace_s: float = 30.0) -> list[int]:
    """The processes of `pids` still running after `grace_s` (vLLM's worker processes exit on their own,
    shortly after their engine core is stopped)."""
    deadline = time.monotonic() + grace_s
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.5)
    return [p for p in pids if alive(p)]


def core_bindings(text: str) -> list[str]:
    """The thread bindings vLLM's engines report (VLLM_CPU_OMP_THREADS_BIND) in a log."""
    return re.findall(r"VLLM_CPU_OMP_THREADS_BIND='([^']*)'", text)
