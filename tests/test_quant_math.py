"""Quantizer math: values pinned by hand on small tensors, SQNR bounds per bit width on random ones."""

from __future__ import annotations

import pytest
import torch

from accbench.quant.quantizer import (ActQuantSpec, WeightQuantSpec, fake_quantize_act_dynamic,
                                      fake_quantize_act_static, fake_quantize_weight, int_range, qparams,
                                      sqnr_db)


pytestmark = pytest.mark.usefixtures("one_thread")


X = torch.tensor([[-1.0, -0.2, 0.3, 2.0]])


def test_int_ranges():
    assert int_range(4, True) == (-8, 7)
    assert int_range(4, False) == (0, 15)
    assert int_range(8, True) == (-128, 127)


def test_asymmetric_2bit_by_hand():
    # scale = (2 - -1) / 3 = 1, zero = -round(-1 / 1) = 1; q = clamp(round(x) + 1, 0, 3)
    out = fake_quantize_weight(X, WeightQuantSpec(2, False, "per_tensor"))
    assert out.tolist() == [[-1.0, 0.0, 0.0, 2.0]]


def test_symmetric_3bit_rounds_half_to_even():
    # scale = 2 / 3; x / scale = [-1.5, -0.3, 0.45, 3.0] -> round half to even: [-2, 0, 0, 3]
    out = fake_quantize_weight(X, WeightQuantSpec(3, True, "per_tensor"))
    torch.testing.assert_close(out, torch.tensor([[-4 / 3, 0.0, 0.0, 2.0]]))


def test_all_positive_group_is_clipped_like_llmc():
    # min is not forced to 0: zero = -round(1 / (1/15)) = -15 -> clamped to 0, so 2.0 clips to 15 * (1/15)
    out = fake_quantize_weight(torch.tensor([[1.0, 2.0]]), WeightQuantSpec(4, False, "per_tensor"))
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0]]))


def test_per_channel_and_per_group_scales():
    w = torch.tensor([[0.0, 1.0, 0.0, 4.0], [0.0, -3.0, 0.0, 1.0]])
    scale, zero = qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True), 4, False)
    torch.testing.assert_close(scale, torch.tensor([[4 / 15], [4 / 15]]))
    torch.testing.assert_close(zero, torch.tensor([[0.0], [11.0]]))
    # groups of 2: each group's range is its own, so [0, 1] and [0, 4] are exact at 4 bits
    g = fake_quantize_weight(w, WeightQuantSpec(4, False, "per_group", 2))
    torch.testing.assert_close(g, w)


def test_act_per_token_dynamic_by_hand():
    x = torch.tensor([[[1.0, -0.5, 0.25], [0.0, 0.0, 0.1]]])
    out = fake_quantize_act_dynamic(x, ActQuantSpec(2, True, "per_token"))
    # token 0: scale = 1/1 (qmax 1) -> round([1, -0.5, 0.25]) = [1, -0 (half-even), 0]
    # token 1: scale = 0.1 -> [0, 0, 1] * 0.1
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.1]]]))


def test_act_static_uses_calibrated_range():
    x = torch.tensor([[0.5, 3.0]])
    out = fake_quantize_act_static(x, ActQuantSpec(8, True, "per_tensor", True), torch.tensor(-1.27), torch.tensor(1.27))
    torch.testing.assert_close(out, torch.tensor([[0.5, 1.27]]))  # 3.0 saturates at 127 * 0.01


@pytest.mark.parametrize("granularity,symmetric", [("per_channel", True), ("per_channel", False),
                                                   ("per_group", True), ("per_group", False)])
def test_weight_sqnr_grows_6db_per_bit(granularity, symmetric):
    torch.manual_seed(0)
    w = torch.randn(256, 512)
    s = [sqnr_db(w, fake_quantize_weight(w, WeightQuantSpec(b, symmetric, granularity, 128))) for b in range(2, 9)]
    for b, v in zip(range(2, 9), s):
        assert 6.02 * b - 11 < v < 6.02 * b, (b, v)
    steps = [b - a for a, b in zip(s[1:], s[2:])]  # from 3 bits on, each bit adds ~6 dB
    assert all(5.5 < d < 8.0 for d in steps), steps


def test_mse_range_search_never_worse_than_minmax():
    torch.manual_seed(1)
    w = torch.randn(64, 256)
    for b in (2, 3, 4, 8):
        mm = sqnr_db(w, fake_quantize_weight(w, WeightQuantSpec(b, False, "per_channel")))
        ms = sqnr_db(w, fake_quantize_weight(w, WeightQuantSpec(b, False, "per_channel", calib_algo="mse")))
        assert ms >= mm - 1e-6
    assert ms - mm < 0.5  # at 8 bits clipping hardly helps
    # at 2 bits clipping Gaussian tails helps a lot
    assert sqnr_db(w, fake_quantize_weight(w, WeightQuantSpec(2, False, "per_channel", calib_algo="mse"))) > \
        sqnr_db(w, fake_quantize_weight(w, WeightQuantSpec(2, False, "per_channel"))) + 2


def test_act_sqnr_per_bit():
    torch.manual_seed(2)
    x = torch.randn(4, 16, 64)
    for b in range(3, 9):
        v = sqnr_db(x, fake_quantize_act_dynamic(x, ActQuantSpec(b)))
        assert 6.02 * b - 8 < v < 6.02 * b, (b, v)


def test_bad_specs_rejected():
    with pytest.raises(ValueError, match="bit"):
        WeightQuantSpec(9)
    with pytest.raises(ValueError, match="does not divide"):
        fake_quantize_weight(torch.zeros(4, 96), WeightQuantSpec(4, False, "per_group", 64))
    with pytest.raises(ValueError, match="per_tensor"):
        ActQuantSpec(8, True, "per_token", static=True)
