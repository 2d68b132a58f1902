"""fp8_gemm.py (the weight-only Triton GEMM over e4m3 weights) against float64 products of
the dequantised weights, on fresh random inputs each run: with and without split-K, strided
x, the refusals; GPU-only cases at Llama shapes, the table's configs and a CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import fresh_seed, rel_err

from swiftinfer_core.kernels.fp8_gemm import gemm_fp8
from swiftinfer_core.model.fp8 import quantize_fp8, reference_linear

# e4m3 weights and x are exact inputs, the sums float32: the output's rounding to its dtype is what is
# left. bf16: rounding to nearest is at most 2^-8 of each element, ~2^-8/sqrt(3) of the norm (the
# interpreter rounds as the GPU does: tests/conftest.py)
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 2**-8}


def _cfg(waves: int, block_m: int = 16) -> dict:
    return dict(block_m=block_m, block_n=16, block_k=32, warps=4, stages=1, waves=waves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("waves", [0, 1000])  # 1000: K cut into every step it has (4 parts at K = 101)
def test_gemm_fp8_matches_float64(m, dtype, waves, dev):
    seed = fresh_seed()
    n, k = 37, 101  # neither a multiple of the blocks
    q, s = quantize_fp8(torch.randn(n, k) * torch.logspace(-3, 0, k)[None, :])
    x = torch.randn(m, k).to(dtype)
    y = gemm_fp8(x.to(dev), q.to(dev), s.to(dev), cfg=_cfg(waves))
    assert y.shape == (m, n) and y.dtype == dtype
    assert rel_err(y, reference_linear(x, q, s)) < TOL[dtype], f"seed {seed}"


def test_gemm_fp8_reads_strided_rows_writes_out_and_refuses_bad_inputs(dev):
    seed = fresh_seed()
    q, s = (t.to(dev) for t in quantize_fp8(torch.randn(20, 64)))
    wide = torch.randn(5, 104, device=dev)
    x = wide[:, 8:72]  # row stride 104: a slice of a wider activation
    for waves in (0, 1000):
        out = torch.full((5, 20), float("nan"), device=dev)
        y = gemm_fp8(x, q, s, out=out, cfg=_cfg(waves))
        assert y.data_ptr() == out.data_ptr()
        assert rel_err(out, reference_linear(x.cpu(), q.cpu(), s.cpu())) < TOL[torch.float32], f"seed {seed}"
    assert gemm_fp8(x, q, s).shape == (5, 20)  # the table's config (int8's, bucket 16)
    with pytest.raises(ValueError, match=r"\[M, 64\]"):
        gemm_fp8(torch.randn(3, 63, device=dev), q, s)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        gemm_fp8(torch.randn(3, 64, device=dev).double(), q, s)
    with pytest.raises(ValueError, match="multiple of 16"):
        gemm_fp8(x, q, s, cfg=dict(_cfg(0), block_k=40))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [2, 8, 32, 300])
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (1000, 520)])  # 7B qkv/down; N, K not multiples of 16
def test_gemm_fp8_bf16_at_llama_shapes(m, n, k):
    seed = fresh_seed()
    dev = torch.device("cuda")
    q, s = quantize_fp8(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    assert rel_err(gemm_fp8(x, q, s), reference_linear(x, q, s)) < TOL[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
def test_gemm_fp8_split_k_replays_in_a_cuda_graph():
    """7B down (4096 x 11008) at 16 rows splits K under the table's waves: a graph replay on new x."""
    seed = fresh_seed()
    dev = torch.device("cuda")
    q, s = quantize_fp8(torch.randn(4096, 11008, device=dev, dtype=torch.bfloat16) * 0.02)
    x = torch.randn(16, 11008, device=dev, dtype=torch.bfloat16)
    out = torch.empty(16, 4096, device=dev, dtype=torch.bfloat16)
    gemm_fp8(x, q, s, out=out)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        gemm_fp8(x, q, s, out=out)
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        g.replay()
        assert rel_err(out, reference_linear(x, q, s)) < TOL[torch.bfloat16], f"seed {seed}"
