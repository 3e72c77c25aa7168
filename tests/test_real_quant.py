"""Real-quant export: the codes a method rounds to dequantize to its fake-quant weights bit for bit; the
compressed-tensors checkpoint transformers decompresses equals the fake-quant model tensor for tensor (and
gives the same logits, activation quantization included); save_vllm / save_sgl from the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from accbench.quant.codes import weight_codes
from accbench.quant.gptq import gptq_quantize_weight
from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec, fake_quantize_weight
from accbench.quant.spec import QuantSpec, QuantState

pytest.importorskip("compressed_tensors")
pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHT_SPECS = [WeightQuantSpec(4, True, "per_group", 32), WeightQuantSpec(4, False, "per_group", 32),
                WeightQuantSpec(3, False, "per_channel"), WeightQuantSpec(8, True, "per_tensor"),
                WeightQuantSpec(8, False, "per_channel", calib_algo="mse"),
                WeightQuantSpec("e4m3", True, "per_channel"),
                WeightQuantSpec("e4m3", True, "per_tensor")]


@pytest.mark.parametrize("spec", WEIGHT_SPECS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_codes_dequantize_to_the_fake_quant_weight_bit_for_bit(spec, dtype):
    torch.manual_seed(0)
    w = (torch.randn(48, 64) * torch.linspace(0.01, 3, 64)).to(dtype)
    codes = weight_codes(w, spec)
    assert torch.equal(codes.dequantize().to(dtype), fake_quantize_weight(w, spec))
    if not isinstance(spec.bit, str):
        lo, hi = (-(2 ** (spec.bit - 1)), 2 ** (spec.bit - 1) - 1)
        assert codes.q.dtype == torch.int8 and lo <= int(codes.q.min()) and int(codes.q.max()) <= hi
        assert len(codes.q.unique()) > 2 ** spec.bit // 2  # the grid is used, not a constant


def test_codes_with_awq_clip_ranges_match():
    torch.manual_seed(1)
    spec = WeightQuantSpec(4, False, "per_group", 16)
    w = torch.randn(8, 64)
    rows = w.reshape(-1, 16)
    clip = (rows.amin(1, keepdim=True) * 0.8, rows.amax(1, keepdim=True) * 0.7)
    assert torch.equal(weight_codes(w, spec, clip).dequantize(), fake_quantize_weight(w, spec, clip))


@pytest.mark.parametrize("spec,actorder,static", [
    (WeightQuantSpec(4, True, "per_group", 16), True, True), (WeightQuantSpec(4, False, "per_group", 16), False, False),
    (WeightQuantSpec(8, True, "per_channel"), True, False), (WeightQuantSpec("e4m3", True, "per_channel"), True, False),
    (WeightQuantSpec("e4m3", True, "per_tensor"), False, False)])
def test_gptq_codes_are_its_own_grid(spec, actorder, static):
    torch.manual_seed(2)
    w, x = torch.randn(24, 64), torch.randn(256, 64)
    out: list = []
    q, _ = gptq_quantize_weight(w, 2 * x.t() @ x / 256, spec, 32, 0.01, actorder, static, out)
    assert torch.equal(out[0].dequantize(), q)
    assert out[0].scale.shape[0] == (1 if spec.granularity == "per_tensor" else 24)


@pytest.mark.parametrize("spec", [WeightQuantSpec("e4m3", True, "per_channel"),
                                  WeightQuantSpec(4, False, "per_group", 16)], ids=str)
def test_gptq_with_an_identity_hessian_is_round_to_nearest(spec):
    # no correlation between inputs: nothing to compensate, every column rounds on its own (FP8 as integers)
    w = torch.randn(16, 64)
    q, _ = gptq_quantize_weight(w, torch.eye(64), spec, 32, 0.01)
    assert torch.equal(q, fake_quantize_weight(w, spec))


def test_gptq_act_order_with_dynamic_groups_has_no_codes():
    with pytest.raises(ValueError, match="static_groups"):
        gptq_quantize_weight(torch.randn(8, 32), torch.eye(32), WeightQuantSpec(4, True, "per_group", 16),
                             actorder=True, static_groups=False, codes_out=[])


def _quantized(model_dir: Path, spec: QuantSpec, dtype: torch.dtype, static_ranges: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from accbench.quant.runner import fake_quantize_model

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    state = QuantState(codes={})
    if static_ranges:  # what the calibration pass records: each linear's input range
        torch.manual_seed(3)
        state.act_ranges = {n: (-torch.rand(()) * 3, torch.rand(()) * 2) for n, m in model.named_modules()
                            if isinstance(m, torch.nn.Linear) and ".layers." in n}
    fake_quantize_model(model, spec, None, "cpu", state)
    return model, AutoTokenizer.from_pretrained(model_dir), state


EXPORTS = [
    ("pack-quantized", WeightQuantSpec(4, True, "per_group", 32), None),
    ("pack-quantized", WeightQuantSpec(4, False, "per_group", 32), None),
    ("pack-quantized", WeightQuantSpec(8, False, "per_channel"), None),
    ("int-quantized", WeightQuantSpec(8, True, "per_channel"), ActQuantSpec(8, True, "per_token")),
    ("int-quantized", WeightQuantSpec(8, True, "per_channel"), ActQuantSpec(8, False, "per_tensor", static=True)),
    ("float-quantized", WeightQuantSpec("e4m3", True, "per_channel"), ActQuantSpec("e4m3", True, "per_token")),
    ("float-quantized", WeightQuantSpec("e4m3", True, "per_tensor"), ActQuantSpec("e4m3", True, "per_tensor", True)),
]


@pytest.mark.parametrize("fmt,weight,act", EXPORTS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_exported_checkpoint_decompresses_to_the_fake_quant_model(tmp_path, tiny_model_dir, fmt, weight, act, dtype):
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from accbench.export.compressed import export_checkpoint
    from accbench.export.load import install_checkpoint_act_quant
    from accbench.pipeline.real_quant import compare_weights
    from accbench.results import RealQuantInfo

    spec = QuantSpec("RTN", weight, act)
    fake, tok, state = _quantized(tiny_model_dir, spec, dtype, static_ranges=act is not None and act.static)
    exp = export_checkpoint(fake, tok, state.codes, weight, act, state.act_ranges, tmp_path / "ct")
    qcfg = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert exp.format == fmt == qcfg["format"] and exp.quantized == 14 and exp.ignored == ["lm_head"]
    QuantizationConfig.model_validate(qcfg)  # compressed-tensors' own schema accepts it
    real = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=dtype,
                                                quantization_config=CompressedTensorsConfig(dequantize=True))
    info = compare_weights(RealQuantInfo(path="", format=fmt), fake, real)
    assert info.tensors_compared == len(fake.state_dict()) and info.tensors_equal == info.tensors_compared
    assert info.max_abs_diff == 0.0
    install_checkpoint_act_quant(real, tmp_path / "ct")
    ids = torch.randint(2, 500, (2, 24))
    with torch.no_grad():
        assert torch.equal(fake(ids).logits, real(ids).logits)  # activation quantization as at fake_quant


# ----------------------------------------------------------------------------- from the CLI

SMALL = ["calib.n_samples=4", "calib.seq_len=32", "eval.seq_len=64", "eval.bs=4", "eval.num_samples=24",
         "quant.weight.group_size=32"]


def _llmc_run(tmp_path: Path, name: str, model: Path, data: Path, capsys, *overrides: str) -> tuple[int, str, dict]:
    import yaml

    from accbench.cli import main
    from llmc_fixtures import LLMC, with_paths

    if LLMC is None:
        pytest.skip("../shared/data/llmc_configs is absent")
    cfg = with_paths(yaml.safe_load((LLMC / name).read_text()), str(model), data, tmp_path / "save")
    cfg["model"]["torch_dtype"] = "float32"
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    code = main(["run", str(tmp_path / "cfg.yaml"), "-o", str(tmp_path / "run"), *overrides])
    err = capsys.readouterr().err
    res_path = tmp_path / "run" / "results.json"
    return code, err, json.loads(res_path.read_text()) if res_path.is_file() else {}


def test_llmc_save_vllm_config_exports_and_evaluates_real_quant(tmp_path, tiny_model_dir, eval_txt, capsys):
    code, err, res = _llmc_run(tmp_path, "quantization/backend/vllm/gptq_w4a16.yml", tiny_model_dir, eval_txt, capsys,
                               *SMALL, "eval.eval_pos=[pretrain,fake_quant]", "eval.fidelity=true")
    assert code == 0, err[-3000:]
    folder = tmp_path / "save" / "vllm_quant_model"
    assert res["models"]["real_quant"] == str(folder)
    qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "pack-quantized"
    assert qcfg["config_groups"]["group_0"]["weights"].items() >= {"num_bits": 4, "strategy": "group",
                                                                   "group_size": 32, "symmetric": True}.items()
    rq = res["real_quant"]
    assert rq["tensors_equal"] == rq["tensors_compared"] == 21 and rq["max_abs_diff"] == 0.0
    ppl = {p["position"]: p["ppl"] for p in res["ppl"]}
    assert ppl["real_quant"] == ppl["fake_quant"] != ppl["pretrain"]
    kl = {f["position"]: f["kld_mean"] for f in res["fidelity"]}
    assert kl["real_quant"] == kl["fake_quant"] > 0
    vs = {c["kind"]: c for c in rq["vs_fake_quant"]}
    assert vs["ppl"]["baseline"] == "fake_quant" and vs["ppl"]["candidate"] == "real_quant"
    assert vs["ppl"]["delta"] == 0.0 and vs["fidelity"]["delta"] == 0.0 and vs["fidelity"]["metric"] == "kld_mean"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Real-quant checkpoint vs fake_quant" in report and "21/21 tensors bit for bit" in report
    assert "KL to the baseline wikitext2" in report


def test_llmc_save_sgl_fp8_static_writes_sgl_folder(tmp_path, tiny_model_dir, eval_txt, capsys):
    code, err, res = _llmc_run(tmp_path, "quantization/backend/sglang/fp8/awq_fp8_static.yml", tiny_model_dir,
                               eval_txt, capsys, *SMALL[:5], "quant.special.weight_clip=false")
    # (AWQ's weight_clip does not search per_tensor weights yet: the one change besides paths and sizes)
    assert code == 0, err[-3000:]
    folder = tmp_path / "save" / "sgl_quant_model"
    qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    group = qcfg["config_groups"]["group_0"]
    assert qcfg["format"] == "float-quantized" and group["input_activations"]["dynamic"] is False
    ppl = {p["position"]: p["ppl"] for p in res["ppl"]}
    assert set(ppl) == {"fake_quant", "real_quant"} and ppl["real_quant"] == ppl["fake_quant"]
    assert res["real_quant"]["tensors_equal"] == res["real_quant"]["tensors_compared"]


@pytest.mark.parametrize("key", ["save_autoawq", "save_mlcllm", "save_lightllm", "save_trtllm", "save_autogptq",
                                 "save_lightx2v"])
def test_other_real_quant_exports_are_refused_by_name(tmp_path, key, capsys):
    import yaml

    from accbench.cli import main

    cfg = {"model": {"path": "builtin:tiny-llama"}, "quant": {"method": "RTN", "weight": {"bit": 4}},
           "save": {key: True, "save_path": str(tmp_path)}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"save.{key}" in err and "not supported yet" in err


@pytest.mark.parametrize("weight,act,why", [
    ({"bit": 4, "granularity": "per_channel"}, {"bit": 8}, "W8A8"),
    ({"bit": 3, "granularity": "per_channel"}, None, "4 or 8 bits"),
    ({"bit": 8, "granularity": "per_block", "symmetric": True, "block_size": 32}, None, "per_block"),
])
def test_quantization_without_an_export_layout_fails_before_loading(tmp_path, tiny_model_dir, weight, act, why,
                                                                     capsys):
    import yaml

    from accbench.cli import main

    quant = {"method": "RTN", "weight": weight} | ({"act": act} if act else {})
    cfg = {"model": {"path": str(tiny_model_dir)}, "quant": quant, "save": {"save_vllm": True}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cannot export a real-quant checkpoint" in err and why in err


def test_real_quant_position_alone_exports_to_the_run_and_resumes(tmp_path, tiny_model_dir, eval_txt, capsys):
    import yaml

    from accbench.cli import main

    cfg = {"model": {"path": str(tiny_model_dir), "torch_dtype": "float32"},
           "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32, "symmetric": False}},
           "eval": {"name": "custom", "path": str(eval_txt), "seq_len": 64, "bs": 4, "num_samples": 8,
                    "eval_pos": ["pretrain", "fake_quant", "real_quant"]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "c.yaml"), "-o", str(run)]) == 0, capsys.readouterr().err[-3000:]
    said = " ".join(capsys.readouterr().out.split())  # the console says what the comparison found
    assert "the reloaded checkpoint equals the fake-quant model bit for bit (21 tensors)" in said
    res = json.loads((run / "results.json").read_text())
    assert res["models"]["real_quant"] == str(run / "models" / "vllm_quant_model")
    assert (run / "models" / "vllm_quant_model" / "config.json").is_file()
    assert [p["position"] for p in res["ppl"]] == ["pretrain", "fake_quant", "real_quant"]
    assert main(["run", str(tmp_path / "c.yaml"), "-o", str(run), "--resume"]) == 0
    again = json.loads((run / "results.json").read_text())
    assert again["resume"]["recomputed"] == []
    assert "quantization (all its results are stored)" in again["resume"]["reused"]
    assert again["real_quant"]["tensors_equal"] == res["real_quant"]["tensors_compared"] == 21
