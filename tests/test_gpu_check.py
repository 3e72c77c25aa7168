"""bench/gpu_check.py runs on CPU with the built-in model, so the script the GPU session needs cannot rot.

The script runs as a user runs it (a subprocess); the test checks the JSON document's fields and that its
figures are sane: the CLI's perplexity covered the windows the raw forward ran, the engine picked a batch
size, the out-of-memory path halved twice and matched a fitting run exactly, GPTQ/AWQ ran on the blocks
asked for and moved the output a little (not zero, not everything). About 25 s, plus the built-in model's
one-time build when it is not cached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--size", "tiny", "--device", "cpu", "--out", str(out),
                           "--work", str(tmp_path / "work"), *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert out.is_file(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_tiny_cpu_run_gives_every_figure(tmp_path: Path) -> None:
    import torch
    import transformers

    import accbench

    proc, doc = _run(tmp_path, "--quant-blocks", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == doc  # the printed document is the written one
    assert doc["schema"] == "accbench.gpu_check/1" and doc["status"] == "complete" and not doc["isolated"]
    ph = doc["phases"]
    assert {k: v["status"] for k, v in ph.items()} == {k: "ok" for k in
                                                        ("env", "build", "ppl", "engine", "oom", "gptq", "awq")}
    env = ph["env"]
    assert (env["torch"], env["transformers"], env["accbench"]) == (torch.__version__, transformers.__version__,
                                                                     accbench.__version__)
    assert env["gpu"] is None and env["cpu_count"] >= 1

    p = ph["ppl"]
    assert p["seq_len"] == 2048 and p["windows"] == 8 and p["tokens"] == 8 * 2048  # the built-in model's window (v5)
    assert 10 < p["ppl"] < 200  # the trained built-in model on Python's help topics (~45)
    assert p["tokens_per_s"] > 0 and p["raw_tokens_per_s"] > 0
    assert p["ratio_to_raw"] == pytest.approx(p["tokens_per_s"] / p["raw_tokens_per_s"], rel=1e-2)
    # no bound on the ratio itself: on a shared CPU either side can be slowed many times by other work
    assert p["peak_gpu_allocated_gb"] is None

    mc, gen, cli = ph["engine"]["mc"], ph["engine"]["gen"], ph["engine"]["cli"]
    assert mc["requests"] == 160 and 0 < mc["forward_tokens"] <= mc["request_tokens"]  # shared contexts run once
    assert mc["batch_size_picked"] >= 1 and mc["tokens_per_s"] > 0
    assert cli["mc"]["n"] == 40 and cli["mc"]["metrics"]["acc"] == pytest.approx(mc["acc"], abs=1e-9)
    assert 8 <= gen["generated_tokens"] <= 8 * 16 and gen["tokens_per_s"] > 0 and gen["batch_size_picked"] >= 1
    assert cli["gen"]["n"] == 8 and cli["gen"]["batch_size_picked"]["generate"] >= 1 and cli["wall_s"] > 0

    o, g = ph["oom"]["score"], ph["oom"]["generate"]
    assert (o["requested_bs"], o["final_bs"], o["halvings"]) == (16, 4, 2) and "simulated" in o["mode"]
    assert o["identical"] is True and o["max_abs_ll_diff"] == 0.0 and o["requests"] == 32
    assert (g["requested_bs"], g["final_bs"], g["halvings"]) == (16, 4, 2)
    assert g["identical"] is True and g["texts_equal"] == g["requests"] == 16

    for name in ("gptq", "awq"):
        q = ph[name]
        assert (q["bits"], q["group_size"], q["blocks_run"], q["blocks_total"]) == (4, 128, 2, 4)
        assert q["est_note"] == "extrapolated from 2 of 4 blocks"
        assert q["est_all_blocks_s"] == pytest.approx(q["per_block_s"] * 4, abs=0.1)
        assert q["wall_s"] > 0 and 0 < q["output_rel_err"] < 0.5, q
        assert q["peak_host_rss_gb"] >= q["host_rss_after_load_gb"] > 0
    assert ph["gptq"]["gptq_error_sum"] > 0 and ph["awq"]["special"]["weight_clip"] is True
    progress = json.loads((tmp_path / "work" / "phase_gptq.progress.json").read_text())
    assert progress["blocks_started"] == 2  # what a timed-out quantization would still report


def test_timed_out_phase_leaves_the_others(tmp_path: Path) -> None:
    proc, doc = _run(tmp_path, "--isolate", "--phases", "env,build,ppl", "--budget", "ppl=1")
    assert proc.returncode == 1
    assert doc["status"] == "partial" and doc["isolated"] is True
    assert doc["phases"]["env"]["status"] == "ok" and doc["phases"]["env"]["torch"]
    assert doc["phases"]["build"]["status"] == "ok"
    assert doc["phases"]["ppl"]["status"] == "timeout" and doc["phases"]["ppl"]["budget_s"] == 1


@pytest.mark.slow
def test_mini_runs_the_8b_code_path(tmp_path: Path) -> None:
    """The 8b size's own build (tokenizer, bf16 weights from a Llama-3 config, 128k vocabulary, GQA) at a CPU
    size: ~2 minutes on 2 cores, so it is a slow test; the GPU session runs the real one."""
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--size", "mini", "--device", "cpu", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, env=env, timeout=900)
    doc = json.loads(out.read_text())
    assert proc.returncode == 0 and doc["status"] == "complete", proc.stderr[-3000:]
    b = doc["phases"]["build"]
    assert b["config"]["vocab_size"] == 128256 and b["config"]["num_key_value_heads"] == 1 and b["dtype"] == "bfloat16"
    cfg = json.loads((Path(b["model_path"]) / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["vocab_size"] == 128256
    assert doc["phases"]["ppl"]["seq_len"] == 512 and doc["phases"]["oom"]["score"]["identical"] is True
    assert doc["phases"]["gptq"]["blocks_run"] == 2 and doc["phases"]["gptq"]["blocks_total"] == 4
