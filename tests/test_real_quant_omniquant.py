"""Real-quant export of OmniQuant results: the compressed-tensors checkpoint of an LWC (W4A16 g128, symmetric
and asymmetric) and an LWC+LET (W8A8 int8, per-channel weights, per-token activations) run decompresses to the
fake-quant model bit for bit, in float32 and bfloat16, and gives the same logits; the learned ranges are what
the checkpoint holds (its codes differ from min/max rounding of the same weights)."""

from __future__ import annotations

import json

import pytest
import torch
from test_quant_methods import _llama

from accbench.quant.methods import METHOD_SPECIAL_KEYS
from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec, fake_quantize_weight
from accbench.quant.runner import fake_quantize_model, transform_model
from accbench.quant.spec import QuantSpec

pytest.importorskip("compressed_tensors")
pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {  # name: (weight, act, special)
    "lwc-w4a16-g128-sym": (WeightQuantSpec(4, True, "per_group", 128, "learnable"), None,
                           {"search_clip_init": True}),  # as llmc's backend/*/w4a16_combin/step_2_omniq.yml
    "lwc-w4a16-g128-asym": (WeightQuantSpec(4, False, "per_group", 128, "learnable"), None, {}),
    "lwc-let-w8a8": (WeightQuantSpec(8, True, "per_channel", 128, "learnable"), ActQuantSpec(8, True, "per_token"),
                     {"let": True}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_omniquant_checkpoint_decompresses_to_the_fake_quant_model(tmp_path, tiny_tokenizer, case, dtype):
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from accbench.export.compressed import export_checkpoint, export_problems
    from accbench.export.load import install_checkpoint_act_quant
    from accbench.pipeline.real_quant import compare_weights
    from accbench.results import RealQuantInfo

    weight, act, special = CASES[case]
    special = {**METHOD_SPECIAL_KEYS["OmniQuant"], "epochs": 2, **special}
    spec = QuantSpec("OmniQuant", weight, act, special, True, 32)
    assert export_problems(weight, act, "OmniQuant", special) == []
    _llama(hidden=128, intermediate=256).save_pretrained(tmp_path / "fp")  # hidden 128: g128 fits every linear
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "fp", dtype=dtype)  # as the pipeline loads it
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    state = transform_model(model, spec, list(ids.split(1)), "cpu")
    assert len(state.clips) == 14 - 4 * special["search_clip_init"]  # q/k are not clipped after AWQ's search
    transformed = {k: v.clone() for k, v in model.state_dict().items()}
    state.codes = {}
    fake_quantize_model(model, spec, list(ids.split(1)), "cpu", state)
    assert {p.dtype for p in model.parameters()} == {dtype}
    # the learned ranges are in the codes: min/max rounding of the same (LET-folded) weights differs
    moved = [n for n in state.clips if not torch.equal(
        fake_quantize_weight(transformed[n + ".weight"], weight), model.get_submodule(n).weight.data)]
    assert len(moved) >= len(state.clips) // 2, (len(moved), len(state.clips))

    exp = export_checkpoint(model, tiny_tokenizer, state.codes, weight, act, state.act_ranges, tmp_path / "ct")
    qcfg = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    QuantizationConfig.model_validate(qcfg)
    assert exp.format == ("int-quantized" if act else "pack-quantized") and exp.quantized == 14
    group = qcfg["config_groups"]["group_0"]
    assert group["weights"]["symmetric"] == weight.symmetric and group["weights"]["num_bits"] == weight.bit
    real = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=dtype,
                                                quantization_config=CompressedTensorsConfig(dequantize=True))
    info = compare_weights(RealQuantInfo(path="", format=exp.format), model, real)
    assert info.tensors_compared == len(model.state_dict()) == info.tensors_equal and info.max_abs_diff == 0.0
    install_checkpoint_act_quant(real, tmp_path / "ct")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, real(ids).logits)


@pytest.mark.parametrize("backend,folder", [("vllm", "vllm_quant_model"), ("sglang", "sgl_quant_model")])
def test_llmc_awq_then_omniquant_exports_real_quant(tmp_path, tiny_model_dir, eval_txt, capsys, backend, folder):
    """llmc's backend/<vllm|sglang>/w4a16_combin: step 1 AWQ saves its transformed model, step 2 OmniQuant (LWC,
    search_clip_init) on it writes the real-quant checkpoint, which reloads equal to fake_quant and scores the same.
    Paths changed; sizes, group size (the tiny model's hidden size is 64) and epochs shrunk by overrides."""
    from test_llmc_omniquant_runs import SMALL, _config, _run

    root = f"quantization/backend/{backend}/w4a16_combin"
    step1 = _config(tmp_path, f"{root}/step_1_awq.yml", str(tiny_model_dir), eval_txt, tmp_path / "awq")
    _run(step1, tmp_path / "run1", capsys, *SMALL, "quant.weight.group_size=32")
    step2 = _config(tmp_path, f"{root}/step_2_omniq.yml", str(tmp_path / "awq" / "transformed_model"), eval_txt,
                    tmp_path / "save")
    res = _run(step2, tmp_path / "run2", capsys, *SMALL, "quant.weight.group_size=32", "quant.special.epochs=1")
    out = tmp_path / "save" / folder
    assert res["models"]["real_quant"] == str(out)
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "pack-quantized"
    assert qcfg["config_groups"]["group_0"]["weights"].items() >= {"num_bits": 4, "symmetric": True,
                                                                   "strategy": "group", "group_size": 32}.items()
    rq = res["real_quant"]
    assert rq["tensors_equal"] == rq["tensors_compared"] == 21 and rq["max_abs_diff"] == 0.0
    ppl = {p["position"]: p["ppl"] for p in res["ppl"]}
    assert set(ppl) == {"fake_quant", "real_quant"} and ppl["real_quant"] == ppl["fake_quant"]
    assert res["quant"]["method"] == "OmniQuant" and res["quant"]["special"]["search_clip_init"] is True
