"""quant_gemv.py (batch-1 int8/int4 GEMV) against float64 products of the
dequantised weights (model/quant.py), on fresh random inputs each run."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import fresh_seed, rel_err

from swiftinfer_core.kernels.quant_gemv import gemv_int4, gemv_int8
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize

# The weights and x are exact inputs, the sums float32: what is left is the
# output's rounding to its dtype (bf16: 2^-9 relative per element, fp16: 2^-12).
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _case(fmt: QuantFormat, n: int, k: int, group: int, dtype: torch.dtype, dev):
    w = torch.randn(n, k) * torch.logspace(-2, 0, k)[None, :]  # uneven columns: groups get different scales
    qw = quantize(w, fmt, group)
    x = torch.randn(1, k).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    return qw, x.to(dev), want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(37, 101), (16, 64)])  # odd N and K, and exact multiples of the blocks
def test_gemv_int8_matches_float64(n, k, dtype, dev):
    seed = fresh_seed()
    qw, x, want = _case(QuantFormat.INT8, n, k, 128, dtype, dev)
    y = gemv_int8(x, qw.qweight.to(dev), qw.scales.to(dev), block_n=16, block_k=32)
    assert y.shape == (1, n) and y.dtype == dtype
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,group", [(37, 101, 32), (24, 128, 64)])  # K padded to 128; K a multiple of G
def test_gemv_int4_matches_float64(n, k, group, dtype, dev):
    seed = fresh_seed()
    qw, x, want = _case(QuantFormat.INT4, n, k, group, dtype, dev)
    y = gemv_int4(x, qw.qweight.to(dev), qw.scales.to(dev), k, group, block_n=16)
    assert y.shape == (1, n) and y.dtype == dtype
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


def test_gemv_writes_into_out_and_refuses_bad_shapes(dev):
    fresh_seed()
    qw, x, want = _case(QuantFormat.INT4, 20, 96, 32, torch.float32, dev)
    out = torch.full((1, 20), float("nan"), device=dev)
    y = gemv_int4(x, qw.qweight.to(dev), qw.scales.to(dev), 96, 32, out=out)
    assert y.data_ptr() == out.data_ptr() and rel_err(out, want) < TOL[torch.float32]
    with pytest.raises(ValueError, match="int4 weights"):
        gemv_int4(x, qw.qweight.to(dev), qw.scales.to(dev), 96, 64)  # wrong group for these scales
    with pytest.raises(ValueError, match=r"\[1, 96\]"):
        gemv_int4(torch.randn(2, 96, device=dev), qw.qweight.to(dev), qw.scales.to(dev), 96, 32)
    q8 = quantize(torch.randn(20, 96), QuantFormat.INT8)
    with pytest.raises(ValueError, match="int8 weights"):
        gemv_int8(x, q8.qweight.to(dev), q8.scales[:10].to(dev))


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", [QuantFormat.INT8, QuantFormat.INT4])  # FP8: test_fp8_*.py
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (4096, 14336), (128256, 4096)])  # 7B/8B layers, 8B head
def test_gemv_bf16_at_llama_shapes(fmt, n, k):
    seed = fresh_seed()
    dev = torch.device("cuda")
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    qw = quantize(w, fmt, 128)
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    want = x.double() @ dequantize(qw).double().t()
    if fmt is QuantFormat.INT8:
        y = gemv_int8(x, qw.qweight, qw.scales)
    else:
        y = gemv_int4(x, qw.qweight, qw.scales, k, 128)
    assert rel_err(y, want) < TOL[torch.bfloat16], f"seed {seed}"
