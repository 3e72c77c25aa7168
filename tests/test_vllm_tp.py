"""`runner.num_gpus: 2` with `engine: vllm` is vLLM's tensor parallel size 2. On CPU (vLLM's CPU build) that is
two ranks, processes bound to a core each by accbench (vLLM's automatic binding wants a NUMA node per rank,
which a 2-core machine lacks), talking over gloo: the run answers as the HF engine's does (float32):
identical generations and greedy flags, log-likelihoods within 1e-4 (measured here: 2.9e-6 against a single
rank), perplexity windows within 1e-5.

Runs only inside the environment .ci/vllm_env.sh builds (`-m vllm`; .ci/run does it): ~1.5 minutes on 2 cores.
"""

from __future__ import annotations

import pytest
from vllm_runs import compare, core_bindings, engine_pids, outliving, run_config

from accbench.evaluate.backends.vllm import cpu_binds
from accbench.runners.local import allowed_cores

pytestmark = pytest.mark.vllm


def test_tensor_parallel_2_answers_as_the_hf_engine(tmp_path, vllm_model_dir, eval_txt, capfd, monkeypatch):
    pytest.importorskip("vllm", reason="the vLLM tests run inside the environment .ci/vllm_env.sh builds")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)  # accbench binds the ranks itself
    hf = run_config(tmp_path, vllm_model_dir, eval_txt, "hf", {"engine": "hf"})
    capfd.readouterr()
    tp = run_config(tmp_path, vllm_model_dir, eval_txt, "tp2", {"engine": "vllm", "num_gpus": 2})
    log = "".join(capfd.readouterr())  # vLLM's engine processes write to the run's stdout/stderr
    assert "world_size=2 rank=1" in log  # two ranks really ran
    assert core_bindings(log) == cpu_binds(allowed_cores(), 1, 2)  # "0|1": a core per rank
    assert engine_pids(log) and not outliving(engine_pids(log))
    worst = compare(hf, tp)
    print("TP=2 vs HF, largest differences:", worst)
