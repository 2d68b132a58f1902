"""quant_dequant.py (int4/int8/fp8 weights dequantised in row chunks, each chunk through torch.mm)
against model/quant.py's and model/fp8.py's dequantised values and float64 products, on fresh
random inputs: symmetric int4 at groups 32 and 128, zero points, int8, fp8, K past the packing's
padding, one chunk and several."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import fresh_seed, int4_every_code, int4_zp_every_code, rel_err
from test_quant_gemm import DTYPES, TOL

from swiftinfer_core.kernels import quant_dequant
from swiftinfer_core.kernels.quant_gemm import gemm_int4, gemm_int8
from swiftinfer_core.model.fp8 import quantize_fp8, reference_linear
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize


def _dequant(qw, dev, lo, hi, dtype=torch.float32):
    out = torch.full((hi - lo + 3, qw.in_features), float("nan"), dtype=dtype, device=dev)
    mins = None if qw.mins is None else qw.mins.to(dev)
    return quant_dequant.dequantize_rows(qw.fmt.value, qw.qweight.to(dev).view(torch.int32), qw.scales.to(dev), mins,
                                         qw.in_features, qw.group, lo, hi, out)


@pytest.mark.parametrize("case", ["int8", "int4 g32", "int4 g128", "int4 zp g32", "int4 every code", "int4 zp every code"])
def test_dequantize_rows_gives_the_format_values(case, dev):
    """Rows [lo, hi) of a 150 x 300 weight (K pads to 304 / 320 / 384) equal model/quant.py's
    dequantised values: exactly for the symmetric formats (the same float32 product q * S), to
    float32 rounding with zero points (q * S + (MN + 8 S) against nibble * S + MN)."""
    seed = fresh_seed()
    w = torch.randn(150, 300) * torch.logspace(-2, 0, 300)[None, :] + torch.rand(150, 1)
    qw = {"int8": lambda: quantize(w, QuantFormat.INT8, 128),
          "int4 g32": lambda: quantize(w, QuantFormat.INT4, 32),
          "int4 g128": lambda: quantize(w, QuantFormat.INT4, 128),
          "int4 zp g32": lambda: quantize(w, QuantFormat.INT4, 32, zero_point=True),
          "int4 every code": lambda: int4_every_code(150, 300, 64),
          "int4 zp every code": lambda: int4_zp_every_code(150, 300, 32)}[case]()
    want = dequantize(qw).float()
    for lo, hi in [(0, 150), (37, 101), (149, 150)]:
        got = _dequant(qw, dev, lo, hi).cpu()
        assert got.shape == (hi - lo, 300)
        if qw.mins is None:
            assert torch.equal(got, want[lo:hi]), f"seed {seed} rows {lo}:{hi}"
        else:
            assert torch.allclose(got, want[lo:hi], rtol=1e-6, atol=1e-6), f"seed {seed} rows {lo}:{hi}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mib", [1, 64])  # 1: chunks of 64 rows (three for N = 150); 64: one chunk
@pytest.mark.parametrize("fmt,group,zp", [(QuantFormat.INT8, 128, False), (QuantFormat.INT4, 128, False),
                                          (QuantFormat.INT4, 32, True)])
def test_dequant_path_matches_float64(fmt, group, zp, mib, dtype, dev):
    seed = fresh_seed()
    w = torch.randn(150, 300) * torch.logspace(-2, 0, 300)[None, :]
    qw = quantize(w, fmt, group, zero_point=zp) if zp else quantize(w, fmt, group)
    x = torch.randn(20, 300).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    cfg = dict(block_m=32, block_n=64, block_k=128, warps=4, stages=3, waves=0, dequant_mib=mib)
    out = torch.full((20, 150), float("nan"), dtype=dtype, device=dev)
    if fmt is QuantFormat.INT8:
        y = gemm_int8(x.to(dev), qw.qweight.to(dev), qw.scales.to(dev), out=out, cfg=cfg)
    else:
        y = gemm_int4(x.to(dev), qw.qweight.to(dev), qw.scales.to(dev), 300, group, out=out, cfg=cfg,
                      mins=None if qw.mins is None else qw.mins.to(dev))
    assert y.data_ptr() == out.data_ptr() and y.dtype == dtype
    # bf16/fp16 operands: each weight rounded once to x's dtype (2^-9 / 2^-12 relative) before cuBLAS's sums
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


def test_fp8_rows_are_q_times_s_rounded_once(dev):
    """fp8: rows [lo, hi) of a 150 x 300 e4m3 weight (K not a multiple of the 128-column programs):
    float32 exactly q * S; in bf16, that product rounded once to nearest, at most 2^-8 of itself
    (the interpreter rounds as the GPU does: tests/conftest.py)."""
    seed = fresh_seed()
    q, s = quantize_fp8(torch.randn(150, 300) * torch.logspace(-3, 0, 300)[None, :])
    want = q.float() * s[:, None]
    for lo, hi in [(0, 150), (37, 101), (149, 150)]:
        out = torch.full((hi - lo + 3, 300), float("nan"), device=dev)
        got = quant_dequant.dequantize_rows("fp8", q.to(dev), s.to(dev), None, 300, 0, lo, hi, out).cpu()
        assert got.shape == (hi - lo, 300) and torch.equal(got, want[lo:hi]), f"seed {seed} rows {lo}:{hi}"
        out16 = torch.empty(hi - lo, 300, dtype=torch.bfloat16, device=dev)
        got16 = quant_dequant.dequantize_rows("fp8", q.to(dev), s.to(dev), None, 300, 0, lo, hi, out16).cpu()
        rel = ((got16.float() - want[lo:hi]).abs() / want[lo:hi].abs().clamp(min=1e-30)).max().item()
        assert rel <= 2**-8, f"seed {seed} rows {lo}:{hi}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mib", [1, 64])
def test_fp8_dequant_path_matches_float64(mib, dtype, dev):
    seed = fresh_seed()
    q, s = quantize_fp8(torch.randn(150, 300) * torch.logspace(-3, 0, 300)[None, :])
    x = torch.randn(20, 300).to(dtype)
    out = torch.full((20, 150), float("nan"), dtype=dtype, device=dev)
    y = quant_dequant.matmul("fp8", x.to(dev), q.to(dev), s.to(dev), None, 300, 0, out, mib)
    assert y.data_ptr() == out.data_ptr() and y.dtype == dtype
    assert rel_err(y, reference_linear(x, q, s)) < TOL[dtype], f"seed {seed}"


def test_chunk_rows():
    assert quant_dequant.chunk_rows(22016, 4096, 2, 16) == 2048  # 16 MiB of bf16 rows of 4,096
    assert quant_dequant.chunk_rows(4096, 11008, 2, 16) == 704  # 762 rounded down to 64s
    assert quant_dequant.chunk_rows(150, 300, 4, 1) == 150  # never past N
    assert quant_dequant.chunk_rows(4096, 4096, 2, 0) == 64  # at least 64 rows
    with pytest.raises(ValueError, match="dequant_mib"):
        gemm_int8(torch.randn(2, 64), torch.zeros(4, 64, dtype=torch.int8), torch.ones(4), cfg=dict(
            block_m=16, block_n=16, block_k=64, warps=4, stages=1, waves=0, dequant_mib=-1))


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,group,zp", [(QuantFormat.INT8, 128, False), (QuantFormat.INT4, 128, False),
                                          (QuantFormat.INT4, 32, True)])
@pytest.mark.parametrize("mib", [16, 1024])
def test_dequant_path_at_llama_shapes_and_in_a_cuda_graph(fmt, group, zp, mib):
    """7B gate-up (22016 x 4096) at 128 rows in bf16, eager and replayed from a CUDA graph on new x."""
    seed = fresh_seed()
    dev = torch.device("cuda")
    qw = quantize(torch.randn(22016, 4096, device=dev, dtype=torch.bfloat16) * 0.02, fmt, group, zp)
    x = torch.randn(128, 4096, device=dev, dtype=torch.bfloat16)
    cfg = dict(block_m=128, block_n=64, block_k=128, warps=4, stages=3, waves=0, dequant_mib=mib)

    def run(out=None):
        if fmt is QuantFormat.INT8:
            return gemm_int8(x, qw.qweight, qw.scales, out=out, cfg=cfg)
        return gemm_int4(x, qw.qweight, qw.scales, 4096, group, out=out, cfg=cfg, mins=qw.mins)

    w = dequantize(qw).double()
    assert rel_err(run(), x.double() @ w.t()) < TOL[torch.bfloat16], f"seed {seed}"
    out = torch.empty(128, 22016, device=dev, dtype=torch.bfloat16)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run(out)
    x.copy_(torch.randn_like(x))
    g.replay()
    assert rel_err(out, x.double() @ w.t()) < TOL[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("mib", [16, 1024])
def test_fp8_dequant_path_at_a_llama_shape_and_in_a_cuda_graph(mib):
    """7B gate-up (22016 x 4096) in e4m3 at 128 bf16 rows, eager and replayed from a CUDA graph on new x."""
    seed = fresh_seed()
    dev = torch.device("cuda")
    q, s = quantize_fp8(torch.randn(22016, 4096, device=dev, dtype=torch.bfloat16) * 0.02)
    x = torch.randn(128, 4096, device=dev, dtype=torch.bfloat16)
    out = torch.empty(128, 22016, device=dev, dtype=torch.bfloat16)
    quant_dequant.matmul("fp8", x, q, s, None, 4096, 0, out, mib)
    assert rel_err(out, reference_linear(x, q, s)) < TOL[torch.bfloat16], f"seed {seed}"
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        quant_dequant.matmul("fp8", x, q, s, None, 4096, 0, out, mib)
    x.copy_(torch.randn_like(x))
    g.replay()
    assert rel_err(out, reference_linear(x, q, s)) < TOL[torch.bfloat16], f"seed {seed}"
