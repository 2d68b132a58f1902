"""cache/kv_fp8.py: the e4m3 storage's scales, its round-trip error bound, and the
pool over it (bytes per slot, export/import with the scales, copies)."""

from __future__ import annotations

import pytest
import torch

from swiftinfer_core.cache.kv_fp8 import E4M3_MAX, FP8, Fp8KV, pow2_scale
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool


def _rows(n: int, d: int) -> torch.Tensor:
    """Random rows over 20 decades of magnitude, a few all-zero rows and exact e4m3 values."""
    x = torch.randn(n, d) * torch.pow(10.0, torch.empty(n, 1).uniform_(-10, 10))
    x[::17] = 0.0
    x[5, :] = torch.tensor([E4M3_MAX, -E4M3_MAX, 1.0, 0.5] * (d // 4))
    return x


def test_scale_is_the_smallest_power_of_two_that_fits_448():
    amax = torch.cat([_rows(500, 8).abs().amax(-1), torch.tensor([448.0, 448.00003, 1.0, 2.0**-130, 3e38])])
    s, inv = pow2_scale(amax)
    log2 = torch.log2(s)
    assert torch.equal(log2, log2.round()) and torch.equal(s * inv, torch.ones_like(s))  # powers of two, exact inverses
    big = amax > 2.0**-100
    assert torch.all(amax[big] / s[big] <= E4M3_MAX) and torch.all(amax[big] / s[big] > E4M3_MAX / 2)  # smallest
    assert pow2_scale(torch.tensor([448.0]))[0].item() == 1.0 and pow2_scale(torch.tensor([449.0]))[0].item() == 2.0


def test_round_trip_error_is_within_e4m3_rounding():
    torch.manual_seed(0)
    for d in (64, 128):
        x = _rows(2000, d)
        q = Fp8KV.quantize(x)
        assert q.data.dtype == FP8 and q.scale.shape == (2000,)
        y = q.dequantize(torch.float64)
        err, s = (y - x.double()).abs(), q.scale.double()[:, None]
        # normal range: half an ulp of 3 mantissa bits; subnormals: half of their spacing 2**-9 (times the scale)
        bound = torch.where(x.double().abs() >= 2.0**-6 * s, 2.0**-4 * x.double().abs(), 2.0**-10 * s)
        assert torch.all(err <= bound)
        assert torch.equal(y[x == 0], torch.zeros_like(y[x == 0]))
        assert torch.equal(y[5], x[5].double())  # exact values come back exactly
        # relative error of a typical row: 2**-5 or so (the scale costs nothing: e4m3 is relative)
        rel = ((y - x.double()).norm(dim=-1) / x.double().norm(dim=-1))[x.abs().amax(-1) > 0]
        assert rel.max() < 2.0**-4 and 0.01 < rel.mean() < 0.04


def test_dequantised_values_are_exact_in_bf16_and_quantising_them_again_changes_no_value():
    q = Fp8KV.quantize(_rows(300, 64))
    f32 = q.dequantize()
    assert torch.equal(q.dequantize(torch.bfloat16).float(), f32)
    # a row whose max rounded down to 224 may get half the scale the second time: same values
    assert torch.equal(Fp8KV.quantize(f32).dequantize(), f32)


def test_fp8_pool_holds_scales_and_bytes_per_slot_counts_them():
    lay = StreamLayout(2, 6)
    pool = KVPool(lay, num_layers=3, num_slots=2, kv_heads=2, head_dim=64, dtype=FP8, device="cpu")
    assert isinstance(pool.k[0], Fp8KV) and pool.k[0].shape == (2, 2, 8, 64) and pool.k[0].scale.shape == (2, 2, 8)
    assert pool.k[0].dtype == FP8
    per_slot = KVPool.bytes_per_slot(lay, 3, 2, 64, FP8)
    assert per_slot == 2 * 3 * 2 * 8 * (64 + 4) == sum(k[0].nbytes for k in pool.k + pool.v)
    assert KVPool.bytes_per_slot(lay, 3, 2, 128, torch.bfloat16) / KVPool.bytes_per_slot(lay, 3, 2, 128, FP8) == 256 / 132


def test_fp8_export_import_carries_the_scales_and_refuses_another_dtype():
    lay = StreamLayout(2, 6)
    pool = KVPool(lay, num_layers=3, num_slots=3, kv_heads=2, head_dim=16, dtype=FP8, device="cpu")
    for layer in range(3):
        pool.k[layer][1] = _rows(16, 16).view(2, 8, 16)
        pool.v[layer][1] = torch.randn(2, 8, 16)
    k, v = pool.export_slot(1, rows=5)
    assert isinstance(k, Fp8KV) and k.shape == (3, 2, 5, 16) and k.scale.shape == (3, 2, 5)
    assert k.nbytes == 3 * 2 * 5 * (16 + 4)
    pool.import_slot(0, k, v)
    pool.copy_slot(1, 2, rows=5)
    for layer in range(3):
        for dst in (0, 2):
            assert torch.equal(pool.k[layer][dst, :, :5].dequantize(), pool.k[layer][1, :, :5].dequantize())
            assert torch.equal(pool.v[layer][dst, :, :5].scale, pool.v[layer][1, :, :5].scale)
            assert torch.all(pool.k[layer][dst, :, 5:].scale == 0)  # rows past the fill untouched
    plain = KVPool(lay, num_layers=3, num_slots=1, kv_heads=2, head_dim=16, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="cannot be imported"):
        plain.import_slot(0, k, v)
    with pytest.raises(ValueError, match="cannot be imported"):
        pool.import_slot(0, *plain.export_slot(0))


def test_setting_rows_quantises_and_reading_them_dequantises():
    cache = Fp8KV.zeros((2, 3, 8, 32), "cpu")
    x = torch.randn(3, 4, 32) * 7
    cache[1, :, torch.tensor([6, 0, 3, 5])] = x
    got = cache[1, :, torch.tensor([6, 0, 3, 5])].dequantize()
    assert torch.equal(got, Fp8KV.quantize(x).dequantize())
    assert (got - x).norm() / x.norm() < 2.0**-4
    assert torch.all(cache[0].dequantize() == 0) and torch.all(cache[1, :, 1].dequantize() == 0)
