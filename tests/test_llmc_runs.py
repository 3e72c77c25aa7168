"""llmc's own configs run end to end on a tiny model (paths changed; sizes shrunk by overrides so CPU tests
stay fast): GPTQ without a baseline position, SmoothQuant with pileval_smooth calibration, saving to llmc's
folder names, base.seed; and the preflight rule that gates need the baseline position."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from accbench.cli import main
from accbench.data.calib import calib_batches, calib_samples
from llmc_fixtures import LLMC, with_paths

needs_llmc = pytest.mark.skipif(LLMC is None, reason="../shared/data/llmc_configs is absent")
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["calib.n_samples=4", "calib.seq_len=32", "eval.seq_len=64", "eval.bs=4"]


def _llmc_config(tmp_path: Path, name: str, model: Path, data: Path) -> Path:
    cfg = with_paths(yaml.safe_load((LLMC / name).read_text()), str(model), data, tmp_path / "save")
    cfg["model"]["torch_dtype"] = "float32"
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _run(cfg: Path, out: Path, capsys, *overrides: str) -> tuple[int, str, dict]:
    code = main(["run", str(cfg), "-o", str(out), *overrides])
    err = capsys.readouterr().err
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    return code, err, res


@needs_llmc
def test_gptq_example_without_baseline_runs(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _llmc_config(tmp_path, "quantization/methods/GPTQ/gptq_w_only.yml", tiny_model_dir, eval_txt)
    assert yaml.safe_load(cfg.read_text())["eval"]["eval_pos"] == ["fake_quant"]
    code, err, res = _run(cfg, tmp_path / "run", capsys, *SMALL, "quant.weight.group_size=32", "calib.bs=-1")
    assert code == 0, err[-3000:]
    assert res["status"] == "complete" and [p["position"] for p in res["ppl"]] == ["fake_quant"]
    assert res["compare"]["comparisons"] == [] and "no baseline position was evaluated" in res["compare"]["note"]
    assert "add pretrain to eval.eval_pos" in (tmp_path / "run" / "report.md").read_text()


def test_gates_without_baseline_position_fail_before_loading(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = {"model": {"path": str(tiny_model_dir)}, "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}},
           "eval": {"name": "custom", "path": str(eval_txt), "seq_len": 64, "eval_pos": ["fake_quant"]},
           "compare": {"gates": [{"metric": "ppl", "max_relative_increase": 0.1}]}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "compare needs the baseline position 'pretrain'" in err and "add pretrain to eval.eval_pos" in err


@needs_llmc
def test_smoothquant_pileval_smooth_saves_to_llmc_folders(tmp_path, tiny_model_dir, eval_txt, capsys):
    cfg = _llmc_config(tmp_path, "quantization/backend/trtllm/smoothquant_w8a8.yml", tiny_model_dir, eval_txt)
    assert yaml.safe_load(cfg.read_text())["calib"]["preproc"] == "pileval_smooth"
    code, err, res = _run(cfg, tmp_path / "run", capsys, *SMALL, "eval.eval_pos=[pretrain,fake_quant]",
                          "save.save_fake=true")
    assert code == 0, err[-3000:]
    save = tmp_path / "save"
    assert res["models"]["transformed"] == str(save / "transformed_model")
    assert res["models"]["fake_quant"] == str(save / "fake_quant_model")
    assert (save / "transformed_model" / "config.json").is_file()
    pre, fake = (next(p["ppl"] for p in res["ppl"] if p["position"] == pos) for pos in ("pretrain", "fake_quant"))
    assert fake != pre and abs(fake / pre - 1) < 0.05


def test_pileval_smooth_follows_llmc(tiny_tokenizer):
    """Documents in llmc's order (datasets' shuffle(seed=42), whatever the seed), the first n_samples, each
    truncated to seq_len (not skipped, not windowed)."""
    from accbench.data.calib import llmc_shuffled

    texts = [" ".join(["word"] * n) for n in (3, 50, 7, 200, 12)]
    got = calib_samples(texts, tiny_tokenizer, "pileval_smooth", 4, 64, seed=5)
    order = llmc_shuffled(texts)
    want = [tiny_tokenizer(t).input_ids[:64] for t in order[:4]]
    assert got == want and len({len(s) for s in got}) > 1
    assert [b.shape[0] for b in calib_batches(got, -1)] == [1, 1, 1, 1]  # unequal lengths: one sample a batch


def test_base_seed_seeds_everything():
    import numpy as np
    import torch

    from accbench.pipeline.spine import seed_everything

    seed_everything(7)
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    seed_everything(7)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a


@needs_llmc
def test_eval_name_list_evaluates_each_dataset(tmp_path, tiny_model_dir, eval_txt, capsys):
    """llmc's `name: [wikitext2, c4]` with `path: DIR` reads DIR/wikitext2 and DIR/c4 (save_to_disk folders)."""
    from datasets import Dataset

    docs = eval_txt.read_text().split("\n\n")
    for name in ("wikitext2", "c4"):
        Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "evaldata" / name))
    cfg = _llmc_config(tmp_path, "quantization/methods/RTN/rtn_w_only.yml", tiny_model_dir, tmp_path / "evaldata")
    code, err, res = _run(cfg, tmp_path / "run", capsys, "eval.name=[wikitext2,c4]", "eval.seq_len=64",
                          "eval.bs=4", "quant.weight.group_size=32")
    assert code == 0, err[-3000:]
    got = {(p["position"], p["dataset"]) for p in res["ppl"]}
    assert got == {(pos, d) for pos in ("pretrain", "fake_quant") for d in ("wikitext2", "c4")}
    wiki = {p["position"]: p["ppl"] for p in res["ppl"] if p["dataset"] == "wikitext2"}
    assert wiki["fake_quant"] != wiki["pretrain"]


def test_ignored_layers_ranges_and_names():
    from accbench.config_sections import IgnoredLayersCfg
    from accbench.pipeline.quantize import quant_spec
    from accbench.config_sections import QuantCfg

    ig = IgnoredLayersCfg(block_ids=[4, "15-17"], layer_names=["self_attn.q_proj"],
                          speical_names=["model.layers.0.mlp.down_proj"])
    spec = quant_spec(QuantCfg(method="RTN"), None, ig)
    assert [i for i in range(20) if spec.is_ignored("model.layers", i, "self_attn.q_proj")] == [4, 15, 16, 17]
    assert not spec.is_ignored("model.layers", 4, "self_attn.k_proj")
    assert spec.is_ignored("model.layers", 0, "mlp.down_proj") and not spec.is_ignored("model.layers", 1, "mlp.down_proj")


@needs_llmc
def test_mix_precision_config_keeps_ignored_layers_float(tmp_path, tiny_model_dir, eval_txt, capsys):
    """llmc's MixPrecision RTN W8A8 config: model.layers.0.mlp.down_proj (speical_names) and the attention
    projections of the listed blocks stay as they were; every other linear is quantized."""
    import torch
    from safetensors.torch import load_file

    cfg = _llmc_config(tmp_path, "quantization/methods/MixPrecision/rtn_w_a.yml", tiny_model_dir, eval_txt)
    code, err, res = _run(cfg, tmp_path / "run", capsys, "eval.seq_len=64", "eval.bs=4", "save.save_fake=true",
                          "ignored_layers.block_ids=[1-2]")
    assert code == 0, err[-3000:]
    orig = load_file(str(tiny_model_dir / "model.safetensors"))
    fake = load_file(str(tmp_path / "save" / "fake_quant_model" / "model.safetensors"))
    same = sorted(k for k in orig if k.endswith("proj.weight") and torch.equal(orig[k], fake[k]))
    n_layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    want = ["model.layers.0.mlp.down_proj.weight"] + [f"model.layers.{i}.self_attn.{p}_proj.weight"
                                                      for i in (1, 2) if i < n_layers for p in ("o", "q")]
    assert n_layers >= 2 and same == want
    ppl = {p["position"]: p["ppl"] for p in res["ppl"]}
    assert ppl["fake_quant"] != ppl["pretrain"]


STEP1 = ["quantization/combination/awq_comb_omni/w2a16g64/step_1_awq.yml",
         "quantization/combination/awq_comb_omni/w3a16g128/step_1_awq.yml",
         "quantization/combination/awq_comb_omni/w4a16g128/step_1_awq.yml",
         *(f"quantization/backend/{b}/w4a16_combin/step_1_awq.yml" for b in ("autoawq", "mlcllm", "sglang", "vllm"))]


def _step1(tmp_path: Path, name: str, model: Path, data: Path, capsys) -> tuple[Path, dict]:
    """Run an llmc step-1 config (paths changed, sizes shrunk); its transformed model is at
    save_path/transformed_model. llmc ships w4a16g128's step 1 with save_trans off: switched on there."""
    (tmp_path / "s1").mkdir()
    step1 = _llmc_config(tmp_path / "s1", name, model, data)
    on = [] if yaml.safe_load(step1.read_text())["save"]["save_trans"] else ["save.save_trans=true"]
    code, err, res = _run(step1, tmp_path / "run1", capsys, *SMALL, "quant.weight.group_size=32", *on)
    assert code == 0, err[-3000:]
    trans = tmp_path / "s1" / "save" / "transformed_model"
    assert res["models"]["transformed"] == str(trans) and (trans / "config.json").is_file()
    return trans, res


@needs_llmc
def test_two_step_combination_runs_in_sequence(tmp_path, tiny_model_dir, eval_txt, capsys):
    """llmc's combination configs run as two `accbench run`s: step 1 (llmc's AWQ step, as shipped with
    save_trans: True) saves the transformed model under save_path/transformed_model, step 2's model.path points
    there. llmc's own step 2 (OmniQuant) validates here and runs in test_llmc_omniquant_runs.py; step 2 here
    is llmc's GPTQ config; it quantizes step 1's model, not the original."""
    import torch
    from safetensors.torch import load_file

    trans, res1 = _step1(tmp_path, STEP1[1], tiny_model_dir, eval_txt, capsys)
    orig = load_file(str(tiny_model_dir / "model.safetensors"))
    scaled = load_file(str(trans / "model.safetensors"))
    assert not torch.equal(orig["model.layers.0.input_layernorm.weight"], scaled["model.layers.0.input_layernorm.weight"])

    (tmp_path / "s2").mkdir()
    llmc_step2 = _llmc_config(tmp_path / "s2", "quantization/combination/awq_comb_omni/w3a16g128/step_2_omniq.yml",
                              trans, eval_txt)
    main(["validate", str(llmc_step2)])  # only the tiny model's shapes (group_size 128) are in the way
    assert "not supported yet" not in capsys.readouterr().err
    step2 = _llmc_config(tmp_path / "s2", "quantization/methods/GPTQ/gptq_w_only.yml", trans, eval_txt)
    code, err, res2 = _run(step2, tmp_path / "run2", capsys, *SMALL, "quant.weight.group_size=32",
                           "eval.eval_pos=[pretrain,fake_quant]")
    assert code == 0, err[-3000:]
    assert res2["models"]["pretrain"] == str(trans)
    ppl1 = {p["position"]: p["ppl"] for p in res1["ppl"]}
    ppl2 = {p["position"]: p["ppl"] for p in res2["ppl"]}
    assert "fake_quant" in ppl1 and ppl2["fake_quant"] != ppl2["pretrain"]


@needs_llmc
@pytest.mark.slow
@pytest.mark.parametrize("name", STEP1)
def test_every_step1_config_writes_its_transformed_model(tmp_path, tiny_model_dir, eval_txt, capsys, name):
    """Each llmc step-1 config that validates runs and writes save_path/transformed_model, which an RTN step 2
    then loads and quantizes."""
    trans, _ = _step1(tmp_path, name, tiny_model_dir, eval_txt, capsys)
    (tmp_path / "s2").mkdir()
    step2 = _llmc_config(tmp_path / "s2", "quantization/methods/RTN/rtn_w_only.yml", trans, eval_txt)
    code, err, res = _run(step2, tmp_path / "run2", capsys, "eval.seq_len=64", "eval.bs=4",
                          "quant.weight.group_size=32")
    assert code == 0 and res["models"]["pretrain"] == str(trans), err[-3000:]


def test_base_seed_decides_calibration_and_runs_repeat(tmp_path, tiny_model_dir, eval_txt, capsys):
    """base.seed seeds the calibration draw (calib.seed unset): the same seed gives the same results.json
    numbers, bit for bit; another seed draws other GPTQ windows and so another fake_quant perplexity."""
    cfg = {"base": {"seed": 42}, "model": {"path": str(tiny_model_dir), "torch_dtype": "float32"},
           "calib": {"name": "custom", "path": str(eval_txt), "n_samples": 4, "seq_len": 32,
                     "preproc": "wikitext2_gptq"},
           "quant": {"method": "GPTQ", "weight": {"bit": 3, "group_size": 32}},
           "eval": {"name": "custom", "path": str(eval_txt), "seq_len": 64, "bs": 4,
                    "eval_pos": ["pretrain", "fake_quant"]}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))

    def numbers(run: str, *overrides: str) -> dict:
        code, err, res = _run(p, tmp_path / run, capsys, *overrides)
        assert code == 0, err[-3000:]
        return {e["position"]: (e["ppl"], e["window_losses"]) for e in res["ppl"]}

    a, b, c = numbers("a"), numbers("b"), numbers("c", "base.seed=7")
    assert a == b
    assert c["pretrain"] == a["pretrain"] and c["fake_quant"][0] != a["fake_quant"][0]
    assert yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())["calib"]["seed"] == 7
