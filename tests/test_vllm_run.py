"""`accbench run` with `engine: vllm` evaluates every position of a quantization run (pretrain, transformed,
fake_quant) through vLLM, with the HF engine's numbers (float32): the same per-sample accuracies, the same
generated answers, the same perplexity; a task's own `engine: hf` overrides the run's.

Runs only inside the environment .ci/vllm_env.sh builds (`-m vllm`; .ci/run does it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from accbench.cli import main

pytestmark = pytest.mark.vllm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
POSITIONS = ["pretrain", "transformed", "fake_quant"]


def _config(tmp_path: Path, model_dir: Path, data: Path, engine: str) -> Path:
    cfg = {
        "base": {"seed": 0},
        "model": {"path": str(model_dir), "torch_dtype": "float32", "device": "cpu"},
        "calib": {"name": "custom", "path": str(data), "n_samples": 4, "bs": -1, "seq_len": 64,
                  "preproc": "wikitext2_gptq", "seed": 0},
        "eval": {"name": "custom", "path": str(data), "seq_len": 64, "bs": 4, "eval_pos": POSITIONS},
        "quant": {"method": "Awq", "weight": {"bit": 3, "symmetric": False, "granularity": "per_group",
                                              "group_size": 32},
                  "special": {"trans": True, "trans_version": "v2", "weight_clip": True, "clip_version": "v2"}},
        "runner": {"engine": engine},
        "tasks": [
            {"name": "mc", "type": "multiple_choice", "path": str(EXAMPLES / "data" / "mc_python.jsonl"), "limit": 8},
            {"name": "gen", "type": "generate", "path": str(EXAMPLES / "data" / "gen_python.jsonl"), "limit": 6,
             "max_new_tokens": 24, "stop": ["\n"]},
            {"name": "ppl", "type": "perplexity", "path": str(data), "seq_len": 64, "limit": 4},
            {"name": "ppl_hf", "type": "perplexity", "path": str(data), "seq_len": 64, "limit": 4, "engine": "hf"},
        ],
    }
    p = tmp_path / f"{engine}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _tasks(run: Path) -> dict[tuple[str, str], dict]:
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete"
    return {(t["model"], t["task"]): t for t in res["tasks"]}


def test_vllm_run_equals_hf_run_at_every_position(tmp_path, vllm_model_dir, eval_txt):
    pytest.importorskip("vllm", reason="the vLLM tests run inside the environment .ci/vllm_env.sh builds")
    runs = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        assert main(["run", str(_config(tmp_path, vllm_model_dir, eval_txt, engine)), "-o", str(out)]) == 0
        runs[engine] = _tasks(out)
    hf, vl = runs["hf"], runs["vllm"]
    assert set(hf) == set(vl) == {(p, t) for p in POSITIONS for t in ("mc", "gen", "ppl", "ppl_hf")}
    for key in hf:
        a, b = hf[key], vl[key]
        assert a["n"] == b["n"] > 0
        if key[1] in ("mc", "gen"):
            assert a["per_sample"] == b["per_sample"], key
            assert a["metrics"] == b["metrics"], key
        else:
            for m in a["metrics"]:
                assert b["metrics"][m] == pytest.approx(a["metrics"][m], rel=1e-5), (key, m)
    for p in POSITIONS:  # the generated answers themselves, not only their scores
        assert [s["response"] for s in hf[(p, "gen")]["samples"].values()] == \
               [s["response"] for s in vl[(p, "gen")]["samples"].values()]
    # quantization changed the model, and vLLM saw the change (it read the position's weights from disk)
    assert vl[("fake_quant", "ppl")]["metrics"] != vl[("pretrain", "ppl")]["metrics"]
    assert (tmp_path / "vllm" / "models" / ".workers" / "fake_quant" / "model.safetensors").is_file()
    assert not (tmp_path / "vllm" / "models" / ".workers" / "pretrain").exists()  # read from the model's folder
