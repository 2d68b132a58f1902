"""quant_gemm.py (batched int8/int4 GEMM) against float64 products of the
dequantised weights (model/quant.py), on fresh random inputs each run."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import fresh_seed, rel_err

from swiftinfer_core.kernels.quant_gemm import gemm_int4, gemm_int8
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize

# exact integer operands, float32 sums: the output's rounding to its dtype is what is left
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _run(fmt, x, qw, dev, **kw):
    q, s = qw.qweight.to(dev), qw.scales.to(dev)
    if fmt is QuantFormat.INT8:
        return gemm_int8(x, q, s, block_n=16, block_k=32, **kw)
    return gemm_int4(x, q, s, qw.in_features, qw.group, block_n=16, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("fmt", [QuantFormat.INT8, QuantFormat.INT4])  # FP8: test_fp8_*.py
def test_gemm_matches_float64(fmt, m, dtype, dev):
    seed = fresh_seed()
    n, k = 37, 101  # neither a multiple of the blocks; int4 pads K to 128 (group 32)
    w = torch.randn(n, k) * torch.logspace(-2, 0, k)[None, :]
    qw = quantize(w, fmt, 32)
    x = torch.randn(m, k).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    y = _run(fmt, x.to(dev), qw, dev)
    assert y.shape == (m, n) and y.dtype == dtype
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


@pytest.mark.parametrize("fmt", [QuantFormat.INT8, QuantFormat.INT4])  # FP8: test_fp8_*.py
def test_gemm_reads_strided_rows_and_writes_out(fmt, dev):
    """x rows with a stride (a slice of a wider activation) and a preallocated out."""
    seed = fresh_seed()
    n, k, m = 20, 64, 5
    qw = quantize(torch.randn(n, k), fmt, 32)
    wide = torch.randn(m, k + 40)
    x = wide[:, 8 : 8 + k]  # row stride k + 40
    want = x.double() @ dequantize(qw).double().t()
    out = torch.full((m, n), float("nan"), device=dev)
    y = _run(fmt, x.to(dev) if dev.type == "cpu" else wide.to(dev)[:, 8 : 8 + k], qw, dev, out=out)
    assert y.data_ptr() == out.data_ptr()
    assert rel_err(out, want) < TOL[torch.float32], f"seed {seed}"


def test_gemm_refuses_bad_inputs(dev):
    qw = quantize(torch.randn(20, 64), QuantFormat.INT4, 32)
    q, s = qw.qweight.to(dev), qw.scales.to(dev)
    with pytest.raises(ValueError, match=r"\[M, 64\]"):
        gemm_int4(torch.randn(3, 63, device=dev), q, s, 64, 32)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        gemm_int4(torch.randn(3, 64, device=dev).double(), q, s, 64, 32)
    with pytest.raises(ValueError, match="int4 weights"):
        gemm_int4(torch.randn(3, 64, device=dev), q, s, 200, 32)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", [QuantFormat.INT8, QuantFormat.INT4])  # FP8: test_fp8_*.py
@pytest.mark.parametrize("m", [2, 32, 128, 300])
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (28672, 4096)])  # 7B qkv/down, 8B gate-up
def test_gemm_bf16_at_llama_shapes(fmt, m, n, k):
    seed = fresh_seed()
    dev = torch.device("cuda")
    qw = quantize(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02, fmt, 128)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    want = x.double() @ dequantize(qw).double().t()
    if fmt is QuantFormat.INT8:
        y = gemm_int8(x, qw.qweight, qw.scales)
    else:
        y = gemm_int4(x, qw.qweight, qw.scales, k, 128)
    assert rel_err(y, want) < TOL[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
def test_gemm_int4_replays_in_a_cuda_graph():
    """Shapes fix the grid: a captured launch replays on new x in place."""
    dev = torch.device("cuda")
    qw = quantize(torch.randn(512, 1024, device=dev), QuantFormat.INT4, 128)
    x = torch.randn(32, 1024, device=dev, dtype=torch.bfloat16)
    out = torch.empty(32, 512, device=dev, dtype=torch.bfloat16)
    gemm_int4(x, qw.qweight, qw.scales, 1024, 128, out=out)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        gemm_int4(x, qw.qweight, qw.scales, 1024, 128, out=out)
    x.copy_(torch.randn_like(x))
    g.replay()
    want = x.double() @ dequantize(qw).double().t()
    assert rel_err(out, want) < TOL[torch.bfloat16]
