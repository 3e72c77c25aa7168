"""Choosing the engine (`engine: hf | vllm`, per run or per task) without vLLM installed: the config keys, which
backend answers which task, the weights a disk-reading engine gets, the vLLM engine's settings, and the clear
exit-2 message where vLLM cannot run. (vLLM's own numbers: test_vllm_backend.py, inside its environment.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from accbench.cli import main
from accbench.config import RunnerCfg, load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _cfg(tmp_path: Path, model_dir: Path, **runner) -> Path:
    cfg = {"model": {"path": str(model_dir), "torch_dtype": "float32"}, "runner": runner,
           "tasks": [{"name": "mc", "type": "multiple_choice", "path": str(EXAMPLES / "data" / "mc_python.jsonl"),
                      "limit": 2},
                     {"name": "gen", "type": "generate", "path": str(EXAMPLES / "data" / "gen_python.jsonl"),
                      "limit": 2, "max_new_tokens": 4, "engine": "hf"}]}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_engine_keys_parse_and_default_to_hf(tmp_path, tiny_model_dir):
    cfg = load_config(_cfg(tmp_path, tiny_model_dir, engine="vllm"))
    assert cfg.runner.engine == "vllm"
    assert [t.engine for t in cfg.tasks] == [None, "hf"]
    assert RunnerCfg().engine == "hf"


def test_unknown_engine_is_a_config_error(tmp_path, tiny_model_dir, capsys):
    code = main(["validate", str(_cfg(tmp_path, tiny_model_dir, engine="vlm"))])
    err = capsys.readouterr().err
    assert code == 2 and "runner.engine" in err and "'hf'" in err and "'vllm'" in err


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here: nothing to refuse")
def test_vllm_missing_is_exit_2_before_the_model_loads(tmp_path, tiny_model_dir, capsys):
    code = main(["run", str(_cfg(tmp_path, tiny_model_dir, engine="vllm")), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "engine: vllm needs the vllm package" in err and "engine: hf" in err and ".ci/vllm_env.sh" in err
    from accbench.errors import AccbenchError
    from accbench.evaluate.backends.vllm import import_vllm

    with pytest.raises(AccbenchError, match="vllm package"):
        import_vllm()


def test_engine_settings_map_runner_to_vllm(tiny_model_dir):
    from accbench.evaluate.backends.vllm import VLLMSettings

    kw = VLLMSettings(str(tiny_model_dir), "float32", tensor_parallel_size=4, max_model_len=513).engine_kwargs()
    assert kw["tensor_parallel_size"] == 4 and kw["max_model_len"] == 513 and kw["dtype"] == "float32"
    assert kw["model"] == kw["tokenizer"] == str(tiny_model_dir) and "gpu_memory_utilization" not in kw


class _Fake:
    """A backend stand-in that records how it was made."""

    def __init__(self, loaded, batch_size, name, gpus, kv=None):
        self.path, self.batch_size, self.name, self.gpus, self.kv = loaded.path, batch_size, name, gpus, kv
        self.released = False

    def release(self):
        self.released = True


def test_backends_route_tasks_by_engine_and_save_weights_once(tmp_path, tiny_model_dir, monkeypatch):
    from accbench.config import ModelCfg
    from accbench.models import load_model
    from accbench.pipeline import tasks

    made = []
    monkeypatch.setattr(tasks, "create_backend", lambda *a: made.append(_Fake(*a)) or made[-1])
    loaded = load_model(str(tiny_model_dir), "float32")
    runner = RunnerCfg(engine="vllm", num_gpus=2)
    weights = tasks.PositionWeights(loaded, ModelCfg(path=str(tiny_model_dir)), "fake_quant", tmp_path)
    backends = tasks._Backends(loaded, None, runner, weights)
    v1, v2 = backends(("vllm", 8)), backends(("vllm", "auto"))
    h1, h2 = backends(("hf", 8)), backends(("hf", 8))
    assert v1 is v2 and v1.name == "vllm" and v1.gpus == 2  # one engine whatever the batch size
    assert v1.path == str(tmp_path / "models" / ".workers" / "fake_quant") != loaded.path
    assert (Path(v1.path) / "model.safetensors").is_file()
    assert h1 is h2 and h1.name == "hf" and h1.path == loaded.path  # HF answers on the model in memory
    assert backends(("hf", 4)) is not h1
    assert weights() == v1.path and len(made) == 3  # saved once
    backends.release()
    assert all(b.released for b in made)
    pretrain = tasks.PositionWeights(loaded, ModelCfg(path=str(tiny_model_dir)), "pretrain", tmp_path)
    assert pretrain() == loaded.path  # the unchanged model is read from its own folder


def test_vllm_at_real_quant_loads_the_exported_checkpoint(tmp_path):
    """At real_quant, vLLM is handed the exported compressed-tensors folder (its integer kernels run it), not a
    re-save of the decompressed model in memory; pretrain stays the model's own folder."""
    import types

    from accbench.config_sections import ModelCfg
    from accbench.pipeline.tasks import PositionWeights

    export = tmp_path / "vllm_quant_model"
    loaded = types.SimpleNamespace(path=str(export), model=None, tokenizer=None)
    assert PositionWeights(loaded, ModelCfg(path="m"), "real_quant", tmp_path)("vllm") == str(export)
    base = types.SimpleNamespace(path="/models/base", model=None, tokenizer=None)
    assert PositionWeights(base, ModelCfg(path="m"), "pretrain", tmp_path)("vllm") == "/models/base"
