"""llmc's quantization options beyond integers: FP8 (e4m3 / e5m2) fake quantization equals a torch float8
round trip with llmc's scale rule (absmax / largest finite value), and llmc's FP8 RTN config runs end to end."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from accbench.cli import main
from accbench.quant.quantizer import (ActQuantSpec, WeightQuantSpec, fake_quantize_act_dynamic,
                                      fake_quantize_act_static, fake_quantize_weight)
from llmc_fixtures import LLMC, with_paths


def _llmc_fp8(x: torch.Tensor, absmax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """llmc's FloatQuantizer with use_qtorch: scale = absmax.clamp(1e-5) / finfo.max; round to the format."""
    scale = absmax.clamp(min=1e-5) / torch.finfo(dtype).max
    return (x / scale).to(dtype).float() * scale


@pytest.mark.parametrize("fmt,dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
def test_fp8_weight_equals_float8_round_trip(fmt, dtype):
    torch.manual_seed(0)
    w = torch.randn(64, 256) * torch.rand(64, 1) * 3
    got = fake_quantize_weight(w, WeightQuantSpec(fmt, True, "per_channel"))
    assert torch.equal(got, _llmc_fp8(w, w.abs().amax(dim=-1, keepdim=True), dtype))
    got = fake_quantize_weight(w, WeightQuantSpec(fmt, True, "per_tensor"))
    assert torch.equal(got, _llmc_fp8(w, w.abs().max(), dtype))
    got = fake_quantize_weight(w, WeightQuantSpec(fmt, True, "per_group", 64))
    want = _llmc_fp8(w.reshape(-1, 64), w.reshape(-1, 64).abs().amax(dim=-1, keepdim=True), dtype).reshape(w.shape)
    assert torch.equal(got, want)
    assert not torch.equal(got, w) and (got - w).abs().max() < w.abs().max() * 0.07  # 3 mantissa bits or fewer


def test_fp8_activations_per_token_and_static():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 32)
    got = fake_quantize_act_dynamic(x, ActQuantSpec("e4m3", True, "per_token"))
    rows = x.reshape(-1, 32)
    assert torch.equal(got, _llmc_fp8(rows, rows.abs().amax(dim=-1, keepdim=True), torch.float8_e4m3fn).reshape(x.shape))
    lo, hi = torch.tensor(-2.0), torch.tensor(1.5)
    got = fake_quantize_act_static(x, ActQuantSpec("e4m3", True, "per_tensor", static=True), lo, hi)
    assert torch.equal(got, _llmc_fp8(x.clamp(-2.0, 2.0), torch.tensor(2.0), torch.float8_e4m3fn))


@pytest.mark.skipif(LLMC is None, reason="../shared/data/llmc_configs is absent")
def test_llmc_fp8_rtn_config_runs(tmp_path, tiny_model_dir, eval_txt, capsys, one_thread):
    cfg = with_paths(yaml.safe_load((LLMC / "quantization/methods/FP_Quant/rtn_we4m3ae4m3.yml").read_text()),
                     str(tiny_model_dir), eval_txt, tmp_path / "save")
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    # llmc's file has its eval section commented out: evaluate with ours, on the command line
    code = main(["run", str(p), "-o", str(tmp_path / "run"), "eval.name=custom", f"eval.path={eval_txt}",
                 "eval.seq_len=64", "eval.bs=4", "eval.eval_pos=[pretrain,fake_quant]", "model.torch_dtype=float32"])
    assert code == 0, capsys.readouterr().err[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    ppl = {p["position"]: p["ppl"] for p in res["ppl"]}
    assert ppl["fake_quant"] != ppl["pretrain"] and abs(ppl["fake_quant"] / ppl["pretrain"] - 1) < 0.05
    assert res["quant"]["weight"]["bit"] == "e4m3" and res["quant"]["act"]["quant_type"] == "float-quant"


@pytest.mark.parametrize("quant", [
    {"method": "Awq", "weight": {"quant_type": "float-quant", "bit": "e4m3", "symmetric": True,
                                 "granularity": "per_channel"},
     "special": {"trans": True, "trans_version": "v2", "weight_clip": True}},
    {"method": "SmoothQuant", "weight": {"quant_type": "float-quant", "bit": "e4m3", "symmetric": True,
                                         "granularity": "per_channel"},
     "act": {"quant_type": "float-quant", "bit": "e4m3", "symmetric": True, "granularity": "per_tensor",
             "static": True}, "special": {"alpha": 0.8}},
])
def test_fp8_with_calibrated_methods(tmp_path, tiny_model_dir, eval_txt, capsys, one_thread, quant):
    cfg = {"model": {"path": str(tiny_model_dir), "torch_dtype": "float32", "device": "cpu"},
           "calib": {"name": "custom", "path": str(eval_txt), "n_samples": 4, "seq_len": 32,
                     "preproc": "wikitext2_gptq"},
           "eval": {"name": "custom", "path": str(eval_txt), "seq_len": 64, "bs": 4,
                    "eval_pos": ["pretrain", "fake_quant"]}, "quant": quant}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p), "-o", str(tmp_path / "run")]) == 0, capsys.readouterr().err[-3000:]
    ppl = {e["position"]: e["ppl"] for e in json.loads((tmp_path / "run" / "results.json").read_text())["ppl"]}
    assert ppl["fake_quant"] != ppl["pretrain"] and abs(ppl["fake_quant"] / ppl["pretrain"] - 1) < 0.05


@pytest.mark.parametrize("bit", [8, "e4m3"])
def test_per_block_is_absmax_per_tile(bit):
    torch.manual_seed(2)
    w = torch.randn(64, 96)
    got = fake_quantize_weight(w, WeightQuantSpec(bit, True, "per_block", block_size=32))
    for r in range(0, 64, 32):
        for c in range(0, 96, 32):
            tile = w[r:r + 32, c:c + 32]
            spec = WeightQuantSpec(bit, True, "per_tensor")
            assert torch.equal(got[r:r + 32, c:c + 32], fake_quantize_weight(tile, spec))
    with pytest.raises(ValueError, match="does not divide"):
        fake_quantize_weight(w, WeightQuantSpec(bit, True, "per_block", block_size=64))


def test_per_block_rtn_runs(tmp_path, tiny_model_dir, eval_txt, capsys, one_thread):
    cfg = {"model": {"path": str(tiny_model_dir), "torch_dtype": "float32", "device": "cpu"},
           "eval": {"name": "custom", "path": str(eval_txt), "seq_len": 64, "bs": 4,
                    "eval_pos": ["pretrain", "fake_quant"]},
           "quant": {"method": "RTN", "weight": {"quant_type": "float-quant", "bit": "e4m3", "symmetric": True,
                                                 "granularity": "per_block", "block_size": 32}}}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p), "-o", str(tmp_path / "run")]) == 0, capsys.readouterr().err[-3000:]
    ppl = {e["position"]: e["ppl"] for e in json.loads((tmp_path / "run" / "results.json").read_text())["ppl"]}
    assert ppl["fake_quant"] != ppl["pretrain"] and abs(ppl["fake_quant"] / ppl["pretrain"] - 1) < 0.05
    cfg["quant"]["weight"]["block_size"] = 48
    p.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(p)]) == 2 and "block_size 48 does not divide" in capsys.readouterr().err
