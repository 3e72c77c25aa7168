"""llmc's FP_Quant (e2m1), W4A8 (bit: 48), mix_bits and static_hist configs run end to end from the CLI on the
tiny model (paths changed; sizes shrunk by overrides so CPU tests stay fast, and group sizes fitted to its
64-wide layers), and the fake-quantized weights are the ones each option asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from accbench.cli import main
from accbench.quant.quantizer import WeightQuantSpec, fake_quantize_weight
from llmc_fixtures import LLMC, with_paths

pytestmark = [pytest.mark.skipif(LLMC is None, reason="../shared/data/llmc_configs is absent"),
              pytest.mark.usefixtures("one_thread")]

SMALL = ["eval.seq_len=64", "eval.bs=4", "eval.num_samples=8"]
CALIB = ["calib.n_samples=4", "calib.seq_len=32"]


def _run(tmp_path: Path, name: str, model: Path, data: Path, capsys, *overrides: str) -> dict:
    cfg = with_paths(yaml.safe_load((LLMC / name).read_text()), str(model), data, tmp_path / "save")
    cfg["model"]["torch_dtype"] = "float32"
    cfg.setdefault("save", {})["save_fake"] = True  # to check the rounded weights
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code = main(["run", str(p), "-o", str(tmp_path / "run"), *overrides])
    assert code == 0, capsys.readouterr().err[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "complete"
    return res


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _ppl(res: dict) -> dict[str, float]:
    return {e["position"]: e["ppl"] for e in res["ppl"]}


def test_fp_quant_e2m1_weights_and_acts_run(tmp_path, tiny_model_dir, eval_txt, capsys):
    res = _run(tmp_path, "quantization/methods/FP_Quant/rtn_we2m1ae2m1.yml", tiny_model_dir, eval_txt, capsys, *SMALL)
    ppl = _ppl(res)
    assert ppl["fake_quant"] != ppl["pretrain"]  # the tiny random model barely notices; the weights below show it
    w = _weights(tmp_path / "save" / "fake_quant_model")["model.layers.0.mlp.up_proj.weight"]
    orig = _weights(tiny_model_dir)["model.layers.0.mlp.up_proj.weight"]
    scale = orig.abs().amax(dim=1, keepdim=True) / 6
    assert set((w / scale).round(decimals=4).abs().unique().tolist()) <= {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}


def test_gptq_e2m1_runs(tmp_path, tiny_model_dir, eval_txt, capsys):
    res = _run(tmp_path, "quantization/methods/FP_Quant/gptq_we2m1a16_g128.yml", tiny_model_dir, eval_txt, capsys,
               *SMALL, *CALIB, "quant.weight.group_size=32")
    assert res["quant"]["weight"]["bit"] == "e2m1" and res["quant"]["gptq_error_sum"] > 0


def test_w4a8_two_level_runs(tmp_path, tiny_model_dir, eval_txt, capsys):
    res = _run(tmp_path, "quantization/methods/RTN/rtn_w_a_wint4aint8.yml", tiny_model_dir, eval_txt, capsys,
               *SMALL, "quant.weight.bit4.group_size=32")
    ppl = _ppl(res)
    assert ppl["fake_quant"] != ppl["pretrain"] and abs(ppl["fake_quant"] / ppl["pretrain"] - 1) < 0.2
    w = _weights(tmp_path / "save" / "fake_quant_model")["model.layers.1.self_attn.o_proj.weight"]
    s8 = _weights(tiny_model_dir)["model.layers.1.self_attn.o_proj.weight"].abs().amax(dim=1, keepdim=True) / 120
    codes = w / s8  # int8-level values: per group of 32, on a grid of 16 points spaced by a float scale
    groups = codes.reshape(-1, 32)  # (the 4-bit grid's rounded zero point may shift it a little past +-120)
    assert codes.abs().max() < 128 and max(len(g.round(decimals=3).unique()) for g in groups) <= 16
    assert len(codes.round(decimals=3).unique()) > 16  # ... but each group has its own grid


def test_mix_bits_config_runs_and_rounds_each_layer_as_named(tmp_path, tiny_model_dir, eval_txt, capsys):
    # setting_0: down_proj of blocks 0-1-2-3-28-29-30-31 at 8 bits; setting_1: o_proj stays float
    res = _run(tmp_path, "quantization/methods/Awq/awq_w_only_mix_bits_2.yml", tiny_model_dir, eval_txt, capsys,
               *SMALL, *CALIB, "calib.preproc=wikitext2_gptq", "quant.weight.group_size=32",
               "quant.mix_bits.setting_0.weight.group_size=32",
               "quant.special.trans=false", "quant.special.weight_clip=false")
    assert _ppl(res)["fake_quant"] > 0 and res["quant"]["mix_bits"]["setting_1"]["do_quant"] is False
    fq, orig = _weights(tmp_path / "save" / "fake_quant_model"), _weights(tiny_model_dir)
    key = "model.layers.{}.{}.weight"
    assert torch.equal(fq[key.format(0, "self_attn.o_proj")], orig[key.format(0, "self_attn.o_proj")])
    down = key.format(1, "mlp.down_proj")
    assert torch.equal(fq[down], fake_quantize_weight(orig[down], WeightQuantSpec(8, False, "per_group", 32)))
    up = key.format(1, "mlp.up_proj")
    assert torch.equal(fq[up], fake_quantize_weight(orig[up], WeightQuantSpec(4, False, "per_group", 32)))


def test_static_hist_config_runs(tmp_path, tiny_model_dir, eval_txt, capsys):
    res = _run(tmp_path, "quantization/methods/RTN/rtn_w_a_pertensor_static.yml", tiny_model_dir, eval_txt, capsys,
               *SMALL, *CALIB)
    ppl = _ppl(res)
    assert res["quant"]["act"]["calib_algo"] == "static_hist"
    assert ppl["fake_quant"] != ppl["pretrain"] and abs(ppl["fake_quant"] / ppl["pretrain"] - 1) < 0.2


def test_awq_mix_bits_with_scaling_clipping_and_acts_runs(tmp_path, tiny_model_dir, eval_txt, capsys):
    # W4A4 per channel / per token, down_proj W8A8 (setting_0), AWQ scales and clips with each layer's settings
    res = _run(tmp_path, "quantization/methods/Awq/awq_w_a_mix_bits.yml", tiny_model_dir, eval_txt, capsys,
               *SMALL, *CALIB, "calib.preproc=wikitext2_gptq")
    ppl = _ppl(res)
    assert ppl["transformed"] == pytest.approx(ppl["pretrain"], rel=1e-3) and ppl["fake_quant"] != ppl["pretrain"]
