"""`runner.max_num_workers: 2` with `engine: vllm`: two local replicas, each its own vLLM engine in its own
process bound to its own core, answer a run's requests (perplexity windows included) with the numbers of the
HF engine's single-process run (float32): identical generations and greedy flags, log-likelihoods within 1e-4.
Each replica logs to logs/worker_<i>.log; a replica that dies is restarted once (its engine processes killed
with it), and every engine process is gone when the run ends.

Runs only inside the environment .ci/vllm_env.sh builds (`-m vllm`; .ci/run does it): ~2 minutes on 2 cores.
"""

from __future__ import annotations

import pytest

from accbench.evaluate.backends.vllm import cpu_binds
from accbench.runners.local import allowed_cores
from accbench.runners.worker import FAIL_ONCE_ENV
from vllm_runs import compare, core_bindings, engine_pids, outliving, run_config

pytestmark = pytest.mark.vllm


def test_two_vllm_replicas_answer_as_one_hf_engine(tmp_path, vllm_model_dir, eval_txt, monkeypatch):
    pytest.importorskip("vllm", reason="the vLLM tests run inside the environment .ci/vllm_env.sh builds")
    hf = run_config(tmp_path, vllm_model_dir, eval_txt, "hf", {"engine": "hf"})
    monkeypatch.setenv(FAIL_ONCE_ENV, str(tmp_path / "died_once"))  # the first shard kills its replica
    dp = run_config(tmp_path, vllm_model_dir, eval_txt, "dp2", {"engine": "vllm", "max_num_workers": 2})
    assert (tmp_path / "died_once").exists() and "died (exit code 17)" in (dp / "logs" / "run.log").read_text()
    compare(hf, dp)
    logs = [(dp / "logs" / f"worker_{i}.log").read_text() for i in range(2)]
    for i, text in enumerate(logs):
        assert f"worker {i}: model loaded (vllm" in text and f"worker {i}: stopped" in text
        pids = engine_pids(text)  # the dead replica's engine too: its log holds both of its lives
        assert pids and not outliving(pids), f"worker {i}'s engine processes outlived the run"
        assert "score request(s)" in text and "generate request(s)" in text  # both replicas answered shards
    # a core of its own per replica (here: core 0 and core 1), in both lives of the one restarted
    assert [sorted(set(core_bindings(t))) for t in logs] == [[b] for b in cpu_binds(allowed_cores(), 2, 1)]
    # the perplexity windows were answered by a replica's vLLM engine, not by the parent's HF model
    assert sum("1 window_losses request(s)" in t for t in logs) == 1
