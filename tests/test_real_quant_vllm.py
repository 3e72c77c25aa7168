"""vLLM loads an exported compressed-tensors checkpoint and generates, with its own integer kernels; its prompt
log-probabilities stay close to the fake-quant model's in transformers (bf16 kernels: not equal).

Marker `vllm`: run with `-m vllm` where vLLM is importable, or with ACCBENCH_VLLM_PYTHON naming a Python that
has it (vLLM's CPU build lives in its own environment); skipped, saying why, otherwise."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("one_thread")]
PROMPTS = [[5, 17, 29, 41, 53, 65, 77, 89, 101, 113], [300, 7, 250, 9, 120, 64, 33, 400]]


def _vllm_python() -> str:
    env = os.environ.get("ACCBENCH_VLLM_PYTHON")
    if env:
        return env
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    pytest.skip("vLLM is not importable here and ACCBENCH_VLLM_PYTHON names no Python that has it")


def _hf_prompt_logprobs(model, ids: list[int]) -> list[float]:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return [float(logp[i - 1, t]) for i, t in enumerate(ids) if i > 0]


def test_vllm_loads_the_w4a16_export_and_generates(tmp_path, vllm_model_dir):
    model_dir = vllm_model_dir  # conftest's head-size-32 Llama (vLLM's CPU attention has no kernel for 16)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from accbench.export.compressed import export_checkpoint
    from accbench.quant.quantizer import WeightQuantSpec
    from accbench.quant.runner import fake_quantize_model
    from accbench.quant.spec import QuantSpec, QuantState

    python = _vllm_python()
    weight = WeightQuantSpec(4, True, "per_group", 32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    state = QuantState(codes={})
    fake_quantize_model(model, QuantSpec("RTN", weight), None, "cpu", state)
    export_checkpoint(model, AutoTokenizer.from_pretrained(model_dir), state.codes, weight, None, {},
                      tmp_path / "ct")
    script = Path(__file__).with_name("vllm_generate.py")
    proc = subprocess.run([python, str(script), str(tmp_path / "ct"), "bfloat16", json.dumps(PROMPTS)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    for ids, o in zip(PROMPTS, out):
        assert len(o["tokens"]) == 8
        vllm_lp = o["prompt_logprobs"][1:]
        hf_lp = _hf_prompt_logprobs(model, ids)
        diff = max(abs(a - b) for a, b in zip(vllm_lp, hf_lp))
        assert diff < 0.1, (vllm_lp, hf_lp)  # bf16 int4 kernel vs dequantized bf16 matmul
