"""Real-quant export of OmniQuant, QuaRot and HQQ results: the compressed-tensors checkpoint of OmniQuant LWC
(W4A16 g128, symmetric and asymmetric) and LWC+LET (W8A8 int8, per-channel weights, per-token activations),
QuaRot without online rotations (W4A16, W8A8) and HQQ with integer zero points along the input (W4 g32, W8 per
channel) decompresses to the fake-quant model bit for bit, in float32 and bfloat16, and gives the same logits;
OmniQuant's learned ranges and HQQ's optimised zeros are what the checkpoint holds (its codes differ from
min/max rounding of the same weights); llmc's vllm/sglang w4a16_combin (AWQ, then OmniQuant with save_vllm /
save_sgl) run from the CLI; what has no layout (LLM.int8(), HQQ's float zero point and axis 0, online
rotations, asymmetric W8A8 weights for vLLM) is refused by name."""

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

CASES = {  # name: (method, weight, act, special)
    "omniquant-lwc-w4a16-g128-sym": ("OmniQuant", WeightQuantSpec(4, True, "per_group", 128, "learnable"), None,
                                     {"search_clip_init": True}),  # as llmc's backend/*/w4a16_combin/step_2_omniq
    "omniquant-lwc-w4a16-g128-asym": ("OmniQuant", WeightQuantSpec(4, False, "per_group", 128, "learnable"), None,
                                      {}),
    "omniquant-lwc-let-w8a8": ("OmniQuant", WeightQuantSpec(8, True, "per_channel", 128, "learnable"),
                               ActQuantSpec(8, True, "per_token"), {"let": True}),
    # QuaRot without online rotations: the rotation is folded into the weights (tied embeddings untied)
    "quarot-w4a16-g32": ("Quarot", WeightQuantSpec(4, True, "per_group", 32), None, {}),
    "quarot-w8a8": ("Quarot", WeightQuantSpec(8, True, "per_channel"), ActQuantSpec(8, True, "per_token"), {}),
    # HQQ with an integer zero point, groups of input columns (axis 1)
    "hqq-w4a16-g32-axis1": ("HQQ", WeightQuantSpec(4, False, "per_group", 32), None, {"axis": 1}),
    "hqq-w8a16-channel-axis1": ("HQQ", WeightQuantSpec(8, False, "per_channel"), None, {"axis": 1}),
}


def _transformed(case: str, folder, dtype: torch.dtype):
    """The model (built, saved in float32 and loaded in `dtype`, as the pipeline loads it), its spec and the
    method's state after the transform, and the transformed weights."""
    from quarot_fixtures import tiny_llama
    from transformers import AutoModelForCausalLM

    method, weight, act, special = CASES[case]
    omni = method == "OmniQuant"
    spec = QuantSpec(method, weight, act, {**METHOD_SPECIAL_KEYS[method], **({"epochs": 2} if omni else {}),
                                           **special}, omni, 32)
    # OmniQuant: hidden 128, so that group_size 128 fits every linear; QuaRot: tied embeddings, norms not all 1
    (_llama(hidden=128, intermediate=256) if omni else tiny_llama(tied=True)).save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    state = transform_model(model, spec, list(ids.split(1)), "cpu")
    return model, spec, state, {k: v.clone() for k, v in model.state_dict().items()}, ids


@pytest.mark.parametrize("spec", [WeightQuantSpec(4, False, "per_group", 32), WeightQuantSpec(3, False, "per_channel")],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_hqq_codes_are_its_fake_quant_grid(spec, dtype):
    from accbench.quant.hqq import HqqOptions, hqq_codes, hqq_fake_quantize

    w = (torch.randn(48, 128, generator=torch.Generator().manual_seed(0)) * 0.05).to(dtype)
    opts = HqqOptions(axis=1)
    codes = hqq_codes(w, spec, opts)
    assert torch.equal(codes.dequantize().to(dtype), hqq_fake_quantize(w, spec, opts, True))
    assert codes.zero is not None and torch.equal(codes.zero, codes.zero.round())  # an integer zero point
    assert codes.scale.shape == ((48, 4) if spec.granularity == "per_group" else (48, 1))
    if dtype != torch.float32:  # the scale is a value of the model's dtype (scale_dtype.py)
        assert torch.equal(codes.scale, codes.scale.to(dtype).float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_decompresses_to_the_fake_quant_model(tmp_path, tiny_tokenizer, case, dtype):
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from accbench.export.compressed import export_checkpoint, export_problems
    from accbench.export.load import install_checkpoint_act_quant
    from accbench.pipeline.real_quant import compare_weights
    from accbench.results import RealQuantInfo

    model, spec, state, transformed, ids = _transformed(case, tmp_path / "fp", dtype)
    weight, act = spec.weight, spec.act
    assert export_problems(weight, act, spec.method, spec.special) == []
    if spec.method == "OmniQuant":
        assert len(state.clips) == 14 - 4 * spec.special["search_clip_init"]  # q/k unclipped after AWQ's search
    state.codes = {}
    fake_quantize_model(model, spec, list(ids.split(1)), "cpu", state)
    assert {p.dtype for p in model.parameters()} == {dtype}
    if spec.method in ("OmniQuant", "HQQ"):  # learned ranges / optimised zeros are in the codes: min/max differs
        moved = [n for n in state.codes if not torch.equal(
            fake_quantize_weight(transformed[n + ".weight"], weight), model.get_submodule(n).weight.data)]
        # (HQQ's integer zero mostly rounds back to min/max's on these weights: 1 of 14 linears moves)
        assert len(moved) >= (len(state.codes) // 2 if spec.method == "OmniQuant" else 1), len(moved)

    exp = export_checkpoint(model, tiny_tokenizer, state.codes, weight, act, state.act_ranges, tmp_path / "ct")
    cfg = json.loads((tmp_path / "ct" / "config.json").read_text())
    QuantizationConfig.model_validate(cfg["quantization_config"])
    assert exp.format == ("int-quantized" if act else "pack-quantized") and exp.quantized == 14
    group = cfg["quantization_config"]["config_groups"]["group_0"]
    assert group["weights"]["symmetric"] == weight.symmetric and group["weights"]["num_bits"] == weight.bit
    assert cfg["tie_word_embeddings"] is False or spec.method != "Quarot"  # QuaRot untied the rotated head
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


@pytest.mark.parametrize("quant,why", [
    ({"method": "LlmInt8", "weight": {"bit": 8, "symmetric": True, "granularity": "per_channel"},
      "act": {"bit": 8, "symmetric": True, "granularity": "per_token"}, "special": {"threshold": 6.0}},
     "real-quant export of LlmInt8 results is not supported: LLM.int8() keeps the input columns"),
    ({"method": "HQQ", "weight": {"bit": 4, "symmetric": False, "granularity": "per_group", "group_size": 32,
                                  "round_zp": False}, "special": {"axis": 0}},
     "HQQ's optimised zero point is a float (round_zp: false)"),
    ({"method": "HQQ", "weight": {"bit": 4, "symmetric": False, "granularity": "per_channel"}},
     "HQQ with axis 0 (its default) groups output rows"),
    ({"method": "Quarot", "weight": {"bit": 8, "symmetric": True, "granularity": "per_channel"},
      "act": {"bit": 8, "symmetric": True, "granularity": "per_token"},
      "special": {"rotate_mode": "hadamard", "online_rotate": True}}, "Quarot with online_rotate"),
    ({"method": "GPTQ", "weight": {"bit": 4, "symmetric": True, "granularity": "per_group", "group_size": 32},
      "special": {"online_rotate": True}}, "GPTQ with online_rotate"),
    ({"method": "OmniQuant", "weight": {"bit": 8, "symmetric": False, "granularity": "per_channel",
                                        "calib_algo": "learnable"},
      "act": {"bit": 8, "symmetric": False, "granularity": "per_token"}, "special": {"let": True}},
     "W8A8 int8 kernels take symmetric weights only"),
])
def test_what_no_checkpoint_holds_is_refused_by_name(tmp_path, tiny_model_dir, eval_txt, quant, why, capsys):
    import yaml

    from accbench.cli import main

    cfg = {"model": {"path": str(tiny_model_dir)}, "quant": quant, "save": {"save_vllm": True},
           "calib": {"name": "custom", "path": str(eval_txt), "n_samples": 2, "seq_len": 32}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(tmp_path / "c.yaml")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot export a real-quant checkpoint" in err and why in err, err[-1500:]
