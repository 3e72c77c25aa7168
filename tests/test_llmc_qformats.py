"""llmc's weight/activation formats beyond plain integers, pinned against hand computations or an independent
implementation: e2m1 / e3m2 grids (QPyTorch's rounding), int_range, round_zp, two-level W4A8 weights (bit: 48),
static_hist activation ranges (against PyTorch's HistogramObserver), per_group activations, and the mix_bits
layer lookup."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accbench.config_sections import FLOAT_BITS
from accbench.quant.floats import FLOAT_FORMATS, float_max, round_small_float
from accbench.quant.histogram import HistogramRange
from accbench.quant.mixbits import MixSetting, setting_for
from accbench.quant.quantizer import ActQuantSpec, WeightQuantSpec, fake_quantize_act_dynamic, fake_quantize_weight
from accbench.quant.w48 import LevelSpec, Weight48Spec

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def test_config_names_every_float_format_the_quantizer_has():
    assert set(FLOAT_BITS) == set(FLOAT_FORMATS)


def test_e2m1_weights_by_hand():
    # row 0: absmax 6 -> scale 1; row 1: absmax 3 -> scale 0.5
    w = torch.tensor([[6.0, 1.2, -0.3, 2.6, 0.25, 5.1], [3.0, -0.6, 0.1, 1.3, -2.2, 0.7]])
    got = fake_quantize_weight(w, WeightQuantSpec("e2m1", True, "per_channel"))
    want = torch.tensor([[6.0, 1.0, -0.5, 3.0, 0.5, 6.0],  # 0.25 is a tie: QPyTorch rounds it away from zero
                         [3.0, -0.5, 0.0, 1.5, -2.0, 0.75]])
    assert torch.equal(got, want)


def test_small_float_grids_and_nearest_rounding():
    assert [float_max(f) for f in ("e2m1", "e3m2", "e4m7")] == [6.0, 28.0, 510.0]
    x = torch.linspace(-8, 8, 20001)
    grid = torch.tensor(E2M1 + [-v for v in E2M1[1:]])
    got = round_small_float(x, "e2m1")
    assert set(got.unique().tolist()) == set(grid.tolist())  # saturates at +-6, every grid value reached
    dist = (x.unsqueeze(1) - grid.unsqueeze(0)).abs()
    nearest = grid[dist.argmin(1)]
    tie = (dist.sort(1).values[:, :2].diff(dim=1).squeeze(1) < 1e-6)
    assert torch.equal(got[~tie], nearest[~tie])
    e3m2 = round_small_float(torch.linspace(0, 40, 40001), "e3m2").unique()
    assert len(e3m2) == 32 and e3m2[1] == 0.0625 and e3m2.max() == 28.0  # OCP FP6 e3m2: 32 non-negative values


def test_int_range_replaces_the_grid():
    w = torch.tensor([[1.2, -0.6, 0.0049]])
    got = fake_quantize_weight(w, WeightQuantSpec(8, True, "per_channel", int_range=(-120, 120)))
    assert torch.allclose(got, torch.tensor([[1.2, -0.6, 0.0]]), atol=1e-7)  # scale 1.2 / 120
    got = fake_quantize_weight(torch.tensor([[-1.0, 0.2, 0.9]]), WeightQuantSpec(4, True, "per_channel",
                                                                             int_range=(-2, 3)))
    assert torch.allclose(got, torch.tensor([[-2 / 3, 1 / 3, 1.0]]))  # scale 1/3; -3 clamps to qmin -2
    got = fake_quantize_weight(torch.tensor([[0.0, 1.0, 0.33]]), WeightQuantSpec(4, False, "per_channel",
                                                                             int_range=(0, 10)))
    assert torch.allclose(got, torch.tensor([[0.0, 1.0, 0.3]]))  # scale (1 - 0) / (10 - 0)


def test_round_zp_false_keeps_the_minimum_on_the_grid():
    w = torch.tensor([[0.1, 0.5, 1.0, 0.7]])  # 2 bits asymmetric: scale 0.9 / 3 = 0.3
    rounded = fake_quantize_weight(w, WeightQuantSpec(2, False, "per_channel"))
    assert torch.allclose(rounded, torch.tensor([[0.0, 0.6, 0.9, 0.6]]))  # zero round(0.33) = 0
    exact = fake_quantize_weight(w, WeightQuantSpec(2, False, "per_channel", round_zp=False))
    assert torch.allclose(exact, torch.tensor([[0.1, 0.4, 1.0, 0.7]]), atol=1e-6)  # zero -1/3


def test_w4a8_two_level_by_hand():
    spec = WeightQuantSpec(48, w48=Weight48Spec(LevelSpec(8, True, "per_channel", int_range=(-120, 120)),
                                                LevelSpec(4, False, "per_group", 4, scales_bit=8, zeros_bit=8)))
    w = torch.tensor([[1.2, -0.6, 0.3, 0.05], [0.24, 0.12, 0.06, 0.0]])
    # row 0: s8 = 0.01, q8 = [120, -60, 30, 5]; level 4: s4 = 180 / 15 = 12, z4 = -round(-60 / 12) = 5,
    # q4 = [15, 0, round(2.5) + 5 = 7, 0 + 5], back: (q4 - 5) * 12 * 0.01
    # row 1: s8 = 0.002, q8 = [120, 60, 30, 0]; s4 = 8, z4 = 0, q4 = [15, round(7.5) = 8, round(3.75) = 4, 0]
    want = torch.tensor([[1.2, -0.6, 0.24, 0.0], [0.24, 0.128, 0.064, 0.0]])
    assert torch.allclose(fake_quantize_weight(w, spec), want, atol=1e-6)


def test_static_hist_histogram_is_numpys_for_one_unit():
    torch.manual_seed(3)
    x = torch.randn(8, 64)
    h = HistogramRange()
    h.add(x)
    counts, _ = np.histogram(x.numpy().astype(np.float64), bins=2048, range=(x.min().item(), x.max().item()))
    assert h.hist.sum().item() == x.numel()
    assert np.abs(h.hist.numpy() - counts).sum() <= 2  # at most one value on a bin edge may fall either side


def test_static_hist_equals_pytorch_histogram_observer():
    """PyTorch's HistogramObserver runs the same merge and search (its step 1e-5, llmc's 1e-8)."""
    from torch.ao.quantization.observer import HistogramObserver

    torch.manual_seed(0)
    units = [torch.randn(64, 32) * (1 + i) + 0.3 * i for i in range(4)]
    units[2][0, 0] = 40.0  # an outlier the search trims
    obs, h = HistogramObserver(bins=2048, dtype=torch.qint8), HistogramRange()
    for u in units:
        obs(u)
        h.add(u)
    assert torch.equal(obs.histogram, h.hist) and obs.min_val == h.lo and obs.max_val == h.hi
    lo, hi = h.range(8, stepsize=1e-5)
    want_lo, want_hi = obs._non_linear_param_search()
    assert lo == want_lo and hi == want_hi
    lo8, hi8 = h.range(8)  # llmc's finer step
    assert torch.isclose(lo8, torch.tensor(-12.2319), atol=1e-4) and torch.isclose(hi8, torch.tensor(39.9745), atol=1e-4)


def test_per_group_activations_by_hand():
    x = torch.tensor([[[1.0, -2.0, 0.5, 0.26]]])
    got = fake_quantize_act_dynamic(x, ActQuantSpec(2, True, "per_group", group_size=2))
    # 2 bits symmetric: qmax 1; group 1 scale 2 -> [round(0.5)=0, -1] * 2; group 2 scale 0.5 -> [1, round(0.52)=1]
    assert torch.equal(got, torch.tensor([[[0.0, -2.0, 0.5, 0.5]]]))
    per_token = fake_quantize_act_dynamic(x, ActQuantSpec(2, True, "per_token"))
    assert torch.equal(per_token, torch.tensor([[[0.0, -2.0, 0.0, 0.0]]]))  # one scale 2 for the token


def test_mix_bits_lookup_follows_llmc():
    w8 = WeightQuantSpec(8, False, "per_channel")
    settings = (MixSetting(MixSetting.parse_layer_names(["down_proj#0-3"]), True, w8),
                MixSetting(MixSetting.parse_layer_names(["o_proj"]), False),
                MixSetting(MixSetting.parse_layer_names(["down_proj#3"]), True, WeightQuantSpec(6)))
    assert setting_for(settings, 0, "mlp.down_proj") is settings[0]
    assert setting_for(settings, 3, "mlp.down_proj") is settings[2]  # a later setting replaces it for block 3
    assert setting_for(settings, 1, "mlp.down_proj") is None  # '0-3' lists blocks 0 and 3, not a range
    assert setting_for(settings, 1, "self_attn.o_proj") is settings[1]
    assert setting_for(settings, 0, "mlp.up_proj") is None


@pytest.mark.parametrize("bad", [{"int_range": (3, 1)}, {"calib_algo": "mse", "bit": "e2m1"}])
def test_bad_weight_specs(bad):
    with pytest.raises(ValueError):
        WeightQuantSpec(**{"bit": 4, **bad})


def test_mix_bits_gives_each_linear_its_weight_and_act_specs():
    from transformers import LlamaConfig, LlamaForCausalLM

    from accbench.quant.runner import fake_quantize_model
    from accbench.quant.spec import QuantSpec, QuantState

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    orig = {n: p.detach().clone() for n, p in model.named_parameters()}
    w4, w8 = WeightQuantSpec(4, False, "per_channel"), WeightQuantSpec(8, False, "per_channel")
    a4, a8 = ActQuantSpec(4, False, "per_token"), ActQuantSpec(8, False, "per_token")
    mix = (MixSetting(MixSetting.parse_layer_names(["down_proj"]), True, w8, a8),
           MixSetting(MixSetting.parse_layer_names(["o_proj#1"]), False),
           MixSetting(MixSetting.parse_layer_names(["up_proj#0"]), True, w8))  # no act: inputs stay float
    handles = fake_quantize_model(model, QuantSpec("RTN", w4, a4, mix_bits=mix), None, "cpu", QuantState())
    layers = model.model.layers
    for i, name, wspec in [(0, "mlp.down_proj", w8), (1, "mlp.up_proj", w4), (0, "mlp.up_proj", w8),
                           (0, "self_attn.o_proj", w4)]:
        key = f"model.layers.{i}.{name}.weight"
        assert torch.equal(dict(model.named_parameters())[key], fake_quantize_weight(orig[key], wspec)), key
    assert torch.equal(layers[1].self_attn.o_proj.weight, orig["model.layers.1.self_attn.o_proj.weight"])
    x = torch.randn(1, 3, 64)
    seen = {}
    for i, name, lin in [(0, "down", layers[0].mlp.down_proj), (1, "gate", layers[1].mlp.gate_proj),
                         (0, "up", layers[0].mlp.up_proj), (1, "o", layers[1].self_attn.o_proj)]:
        h = lin.register_forward_pre_hook(lambda m, args, k=f"{name}{i}": seen.__setitem__(k, args[0]), prepend=False)
        lin(x[..., : lin.in_features])
        h.remove()
    assert torch.equal(seen["down0"], fake_quantize_act_dynamic(x, a8))
    assert torch.equal(seen["gate1"], fake_quantize_act_dynamic(x[..., :32], a4))
    assert torch.equal(seen["up0"], x[..., :32]) and torch.equal(seen["o1"], x[..., :32])
    assert len(handles) == 2 * 7 - 2  # every linear but layer 0's up_proj and layer 1's o_proj
