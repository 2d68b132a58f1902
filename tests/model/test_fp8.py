"""model/fp8.py: the e4m3 per-channel format on hand-made values and random
round trips, its reference product, and which devices it refuses."""

from __future__ import annotations

import os

import pytest
import torch

from swiftinfer_core.model.fp8 import (
    E4M3_MAX,
    dequantize_fp8,
    error_bound,
    fp8_unsupported,
    quantize_fp8,
    reference_linear,
)
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize, weight_bytes


def test_e4m3_is_what_the_format_assumes():
    f = torch.finfo(torch.float8_e4m3fn)
    assert f.max == E4M3_MAX and f.smallest_normal == 2.0**-6
    assert torch.tensor(2.0**-9).to(torch.float8_e4m3fn).float().item() == 2.0**-9  # smallest subnormal


def test_quantize_fp8_exact_values():
    # row 0: amax 448 -> scale 1, q = w rounded to e4m3; row 1: all zero; row 2: amax 0.5 -> scale 0.5 / 448
    w = torch.tensor([[448.0, -17.0, 0.3, 2.0**-10], [0.0, 0.0, 0.0, 0.0], [0.5, -0.25, 0.0, 1e-3]])
    q, s = quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == (3,)
    assert s[0].item() == 1.0 and s[2].item() == pytest.approx(0.5 / 448, rel=1e-7)
    # 17 lies halfway between 16 and 18 (step 2 above 16): ties to even -> 16; 0.3 -> 0.3125 (step 2^-5 there);
    # 2^-10 is below half the smallest subnormal 2^-9: rounds to... exactly half: ties to even -> 0
    assert q[0].float().tolist() == [448.0, -16.0, 0.3125, 0.0]
    assert s[1].item() > 0 and q[1].float().abs().sum() == 0  # an all-zero row: tiny scale, zeros, no NaN
    assert q[2, 0].float().item() == 448.0 and q[2, 1].float().item() == -224.0
    assert torch.equal(dequantize_fp8(q, s)[0], q[0].float())


@pytest.mark.parametrize("rows_scale", [(-3, 1), (-8, 3)])
def test_round_trip_within_the_e4m3_bound(rows_scale):
    """Random rows of very different magnitudes (and some outliers): every element
    within error_bound (2^-4 relative, or 2^-10 x scale below e4m3's normal range),
    every row's amax exactly +-448, nothing beyond."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    lo, hi = rows_scale
    w = torch.randn(33, 301) * torch.logspace(lo, hi, 33)[:, None]
    w[5, 7] *= 50  # an outlier stretches its row's scale: the rest of the row falls toward subnormals
    q, s = quantize_fp8(w)
    deq = dequantize_fp8(q, s)
    assert bool(((deq - w).abs() <= error_bound(w, s) * (1 + 1e-6)).all())
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((33,), E4M3_MAX))
    assert torch.allclose(s, w.abs().amax(dim=1) / E4M3_MAX, rtol=0, atol=0)
    # rounding is unbiased and fine: the mean relative error of the normal-range elements is ~2^-6
    normal = (w.abs() / s[:, None]) >= 2.0**-6
    rel = ((deq - w).abs() / w.abs())[normal]
    assert rel.mean().item() < 2.0**-5


def test_quant_format_fp8_goes_through_model_quant():
    w = torch.randn(20, 48)
    qw = quantize(w, QuantFormat.FP8)
    q, s = quantize_fp8(w)
    assert qw.qweight.dtype == torch.float8_e4m3fn and torch.equal(qw.scales, s)
    assert torch.equal(dequantize(qw), dequantize_fp8(q, s))
    assert weight_bytes(QuantFormat.FP8, 4096, 4096) == 4096 * 4096 + 4096 * 4


def test_reference_linear_with_and_without_quantized_activations():
    torch.manual_seed(1)
    w, x = torch.randn(24, 64), torch.randn(5, 64)
    q, s = quantize_fp8(w)
    plain = reference_linear(x, q, s)
    assert plain.dtype == torch.float64
    assert torch.allclose(plain, x.double() @ dequantize_fp8(q, s).double().t())
    xq, sx = quantize_fp8(x)
    both = reference_linear(x, q, s, quantize_x=True)
    assert torch.allclose(both, dequantize_fp8(xq, sx).double() @ dequantize_fp8(q, s).double().t())
    # e4m3 activations cost a few percent per product, not more
    assert 1e-3 < ((both - plain).norm() / plain.norm()).item() < 0.06


def test_fp8_unsupported_names_the_reason(monkeypatch):
    assert "CUDA GPU" in fp8_unsupported(torch.device("cpu")) and "int8" in fp8_unsupported(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    assert "NVIDIA A100 is 8.0" in fp8_unsupported(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8_unsupported(torch.device("cuda", 0)) is None
