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
                WeightQuantSpec(8, False, "per_channel", calib_algo="mse"), WeightQuantSpec("e4m3", True, "per_channel"),
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
    (WeightQuantSpec(8, True, "per_channel"), True, False)])
def test_gptq_codes_are_its_own_grid(spec, actorder, static):
    torch.manual_seed(2)
    w, x = torch.randn(24, 64), torch.randn(256, 64)
    out: list = []
    q, _ = gptq_quantize_weight(w, 2 * x.t() @ x / 256, spec, 32, 0.01, actorder, static, out)
    assert torch.equal(out[0].dequantize(), q) and out[0].scale.shape[0] == 24


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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
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
