"""`runner.type: ray` with `engine: vllm`: two Ray actors on a local Ray instance, each holding its own vLLM
engine bound to its own core, answer a run's requests as the HF engine's single-process run does (float32):
identical generations and greedy flags, log-likelihoods within 1e-4.

Runs only inside the environment .ci/vllm_env.sh builds (`-m vllm`; .ci/run does it), which installs ray;
skipped, saying so, where ray is not importable. ~2 minutes on 2 cores.
"""

from __future__ import annotations

import pytest
from vllm_runs import compare, run_config

pytestmark = pytest.mark.vllm


def test_two_vllm_replicas_on_ray_answer_as_one_hf_engine(tmp_path, vllm_model_dir, eval_txt):
    pytest.importorskip("vllm", reason="the vLLM tests run inside the environment .ci/vllm_env.sh builds")
    ray = pytest.importorskip("ray", reason="runner.type: ray needs ray in the vLLM environment (.ci/vllm_env.sh)")
    hf = run_config(tmp_path, vllm_model_dir, eval_txt, "hf", {"engine": "hf"})
    try:
        on_ray = run_config(tmp_path, vllm_model_dir, eval_txt, "ray",
                            {"engine": "vllm", "type": "ray", "max_num_workers": 2})
    finally:
        ray.shutdown()
    compare(hf, on_ray)
