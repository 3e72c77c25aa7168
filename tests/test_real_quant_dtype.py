"""Real-quant export in bfloat16 / float16: the checkpoint dequantizes to the fake-quant weights bit for bit
however the loader holds the scale.

vLLM's WNA16 kernels load `weight_scale` in the model's dtype, transformers < 5.20 (compressed-tensors 0.17)
casts every scale to it while loading, transformers >= 5.20 keeps the stored float32. Fake quantization holds
its weight scales in the model's dtype (quant/scale_dtype.py), so all three give the fake-quant weights. Each
check dequantizes the checkpoint's tensors with compressed-tensors' own `dequantize`, the scale held both ways.
Before scales were held in the model's dtype, every quantized linear of a bf16 model differed by up to one ulp.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from accbench.quant.codes import WeightCodes, weight_codes
from accbench.quant.gptq import gptq_quantize_weight
from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec, fake_quantize_weight
from accbench.quant.spec import QuantSpec, QuantState

pytest.importorskip("compressed_tensors")
pytestmark = pytest.mark.usefixtures("one_thread")

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# every layout the export writes: W4A16 / W8A16 (group, channel; sym, asym), W8A8 int8, FP8
LAYOUTS = [
    (WeightQuantSpec(4, True, "per_group", 32), None),
    (WeightQuantSpec(4, False, "per_group", 32), None),
    (WeightQuantSpec(4, True, "per_channel"), None),
    (WeightQuantSpec(4, False, "per_channel"), None),
    (WeightQuantSpec(8, True, "per_group", 32), None),
    (WeightQuantSpec(8, False, "per_channel"), None),
    (WeightQuantSpec(8, True, "per_channel"), ActQuantSpec(8, True, "per_token")),
    (WeightQuantSpec(8, False, "per_tensor"), ActQuantSpec(8, False, "per_tensor", static=True)),
    (WeightQuantSpec("e4m3", True, "per_channel"), ActQuantSpec("e4m3", True, "per_token")),
    (WeightQuantSpec("e4m3", True, "per_tensor"), ActQuantSpec("e4m3", True, "per_tensor", static=True)),
]


def _args(weight: WeightQuantSpec):
    from compressed_tensors.quantization import QuantizationArgs

    from accbench.export.compressed import _args

    return QuantizationArgs.model_validate(_args(weight, False))


def _deployed(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, args, dtype: torch.dtype,
              held: torch.dtype) -> torch.Tensor:
    """compressed-tensors' dequantization of signed codes with the scale held in `held`, cast to `dtype` (its
    channel / tensor strategies leave the result in the scale's dtype: the loader casts it to the model's)."""
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    return dequantize(x_q=q, scale=scale.to(held), zero_point=zero, args=args, dtype=dtype).to(dtype)


def _codes_deployed(c: WeightCodes, dtype: torch.dtype, held: torch.dtype) -> torch.Tensor:
    zero = None if c.zero is None else (c.zero - c.offset()).to(torch.int8)
    scale = c.scale.reshape(1) if c.spec.granularity == "per_tensor" else c.scale
    return _deployed(c.q, scale, zero, _args(c.spec), dtype, held)


def _outlier_weight(dtype: torch.dtype, rows: int = 48, cols: int = 128) -> torch.Tensor:
    """Weights with the built-in model's structure: a few input channels 10-30x larger than the rest."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[:, ::17] *= torch.linspace(10, 30, len(range(0, cols, 17)))
    return w.to(dtype)


@pytest.mark.parametrize("weight", [w for w, _ in LAYOUTS], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", ["rtn", "clip", "gptq"])
def test_codes_dequantize_like_the_serving_kernels(weight, dtype, method):
    # rtn: RTN and SmoothQuant (RTN on smoothed weights); clip: AWQ's clipped ranges; gptq: GPTQ's own scales
    w = _outlier_weight(dtype)
    if method == "gptq":
        x = torch.randn(256, w.shape[1], generator=torch.Generator().manual_seed(1))
        out: list = []
        fake, _ = gptq_quantize_weight(w, 2 * x.t() @ x / 256, weight, 32, 0.01, True, True, out)
        codes = out[0]
    else:
        rows = w.float().reshape(-1, weight.group_size) if weight.granularity == "per_group" else w.float()
        clip = None
        if method == "clip":
            lo = rows.amin(-1, keepdim=True) * 0.8
            hi = rows.amax(-1, keepdim=True) * 0.7
            clip = (torch.minimum(lo, -hi), torch.maximum(hi, -lo)) if isinstance(weight.bit, str) else (lo, hi)
            if weight.granularity == "per_tensor":
                clip = (clip[0].amin().reshape(1, 1), clip[1].amax().reshape(1, 1))
        fake = fake_quantize_weight(w, weight, clip)
        codes = weight_codes(w, weight, clip)
        assert torch.equal(codes.dequantize().to(dtype), fake)
    assert fake.dtype == dtype
    assert torch.equal(codes.scale.to(dtype).float(), codes.scale)  # the scale is a value of the model's dtype
    for held in (dtype, torch.float32):  # vLLM WNA16 / transformers < 5.20, and transformers >= 5.20
        assert torch.equal(_codes_deployed(codes, dtype, held), fake), f"scale held in {held}"


def _fake_quantized_tiny(model_dir: Path, weight: WeightQuantSpec, act: ActQuantSpec | None, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from accbench.quant.runner import fake_quantize_model

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    with torch.no_grad():  # outlier input channels, as in the built-in model and real LLMs
        for n, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and ".layers." in n:
                m.weight[:, ::13] *= 20
    state = QuantState(codes={})
    if act is not None and act.static:
        state.act_ranges = {n: (-torch.rand(()) * 3, torch.rand(()) * 2) for n, m in model.named_modules()
                            if isinstance(m, torch.nn.Linear) and ".layers." in n}
    fake_quantize_model(model, QuantSpec("RTN", weight, act), None, "cpu", state)
    return model, AutoTokenizer.from_pretrained(model_dir), state


def checkpoint_differences(folder: Path, fake: torch.nn.Module, dtype: torch.dtype, held: torch.dtype) -> list[str]:
    """The quantized linears of the checkpoint in `folder` whose weight, dequantized by compressed-tensors from
    the stored tensors with the scale held in `held`, differs from `fake`'s (empty: all equal bit for bit)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs
    from safetensors.torch import load_file

    qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    args = QuantizationArgs.model_validate(qcfg["config_groups"]["group_0"]["weights"])
    st: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        st.update(load_file(str(f)))
    weights = dict(fake.named_parameters())
    bad, seen = [], 0
    for key in st:
        if not key.endswith(".weight_scale"):
            continue
        mod = key[: -len(".weight_scale")]
        scale, zero = st[key], st.get(f"{mod}.weight_zero_point")
        if f"{mod}.weight_packed" in st:
            shape = torch.Size(st[f"{mod}.weight_shape"].tolist())
            q = unpack_from_int32(st[f"{mod}.weight_packed"], args.num_bits, shape)
            if zero is not None and zero.numel() > 1:
                zero = unpack_from_int32(zero, args.num_bits, torch.Size(scale.shape), packed_dim=0)
        else:
            q = st[f"{mod}.weight"]
        seen += 1
        if not torch.equal(_deployed(q, scale, zero, args, dtype, held), weights[f"{mod}.weight"].detach()):
            bad.append(mod)
    assert seen > 0, f"no quantized linear in {folder}"
    return bad


@pytest.mark.parametrize("weight,act", LAYOUTS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tiny_checkpoint_dequantizes_to_fake_quant_for_every_scale_dtype(tmp_path, tiny_model_dir, weight, act,
                                                                         dtype):
    from accbench.export.compressed import export_checkpoint

    fake, tok, state = _fake_quantized_tiny(tiny_model_dir, weight, act, dtype)
    exp = export_checkpoint(fake, tok, state.codes, weight, act, state.act_ranges, tmp_path / "ct")
    assert exp.quantized == 14
    for held in (dtype, torch.float32):
        assert checkpoint_differences(tmp_path / "ct", fake, dtype, held) == [], f"scale held in {held}"


# ----------------------------------------------------------------------------- the built-in model in bf16 / fp16

BUILTIN_RUNS = [
    ("RTN", WeightQuantSpec(4, True, "per_group", 128), None, {}),
    ("Awq", WeightQuantSpec(4, False, "per_group", 128), None, {"trans": True, "weight_clip": True}),
    ("GPTQ", WeightQuantSpec(4, True, "per_group", 128), None, {"actorder": True, "static_groups": True}),
    ("RTN", WeightQuantSpec(8, False, "per_channel"), None, {}),
    ("SmoothQuant", WeightQuantSpec(8, True, "per_channel"), ActQuantSpec(8, True, "per_token"), {"alpha": 0.8}),
    ("GPTQ", WeightQuantSpec("e4m3", True, "per_channel"), ActQuantSpec("e4m3", True, "per_token"), {}),
]


@pytest.fixture(scope="module")
def builtin_calib():
    from accbench.data.calib import calib_batches, calib_samples
    from accbench.data.text import load_texts
    from accbench.models import load_model

    tok = load_model("builtin:tiny-llama", "float32", device="cpu").tokenizer
    return calib_batches(calib_samples(load_texts("builtin:pydoc", builtin_split="calib"), tok,
                                       "random_truncate_txt", 4, 128, 42), -1)


@pytest.mark.parametrize("method,weight,act,special", BUILTIN_RUNS,
                         ids=["rtn-w4g128", "awq-w4g128-asym", "gptq-w4g128", "rtn-w8-asym", "sq-w8a8", "gptq-fp8"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_builtin_model_checkpoint_equals_fake_quant(tmp_path, builtin_calib, method, weight, act, special, dtype):
    """Every quantized linear of the built-in model (outlier channels), exported after RTN / AWQ / GPTQ /
    SmoothQuant, dequantizes to the fake-quant weight bit for bit, the scale held in the model's dtype or
    float32, and transformers' reload equals the fake-quant model tensor for tensor."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from accbench.export.compressed import export_checkpoint
    from accbench.models import load_model
    from accbench.pipeline.real_quant import compare_weights
    from accbench.quant.runner import fake_quantize_model, transform_model
    from accbench.results import RealQuantInfo

    loaded = load_model("builtin:tiny-llama", dtype, device="cpu")
    spec = QuantSpec(method, weight, act, special)
    state = transform_model(loaded.model, spec, builtin_calib, "cpu")
    state.codes = {}
    fake_quantize_model(loaded.model, spec, builtin_calib, "cpu", state)
    exp = export_checkpoint(loaded.model, loaded.tokenizer, state.codes, weight, act, state.act_ranges, tmp_path)
    assert exp.quantized == 28
    torch_dtype = getattr(torch, dtype)
    for held in (torch_dtype, torch.float32):
        assert checkpoint_differences(tmp_path, loaded.model, torch_dtype, held) == [], f"scale held in {held}"
    real = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch_dtype,
                                                quantization_config=CompressedTensorsConfig(dequantize=True))
    info = compare_weights(RealQuantInfo(path="", format=exp.format), loaded.model, real)
    assert info.tensors_equal == info.tensors_compared == len(loaded.model.state_dict())


def test_a_differing_checkpoint_is_reported_with_its_count(capsys):
    from rich.console import Console

    from accbench.pipeline.real_quant import _say_weights, compare_weights
    from accbench.results import RealQuantInfo

    fake, real = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    real.load_state_dict(fake.state_dict())
    with torch.no_grad():
        real.weight[0, 0] += 2**-6
    info = compare_weights(RealQuantInfo(path="", format="pack-quantized"), fake, real)
    assert (info.tensors_compared, info.tensors_equal, info.max_abs_diff) == (2, 1, pytest.approx(2**-6))
    _say_weights(info, Console(width=300))
    assert "1 of 2 tensors differ from the fake-quant model (max |diff| 0.0156)" in capsys.readouterr().out


def test_held_scales_round_to_the_dtype_and_never_to_zero():
    from accbench.quant.scale_dtype import held

    s = torch.tensor([0.1, 1e-5 / 448, 3.0])
    assert torch.equal(held(s, torch.float32), s)
    assert torch.equal(held(s, torch.bfloat16), s.to(torch.bfloat16).float())
    h = held(s, torch.float16)
    assert h[0] == torch.tensor(0.1).half().float() and h[2] == 3.0
    assert h[1] == 2.0**-24  # an all-zero fp16 row's FP8 scale underflows: the smallest fp16 subnormal instead
