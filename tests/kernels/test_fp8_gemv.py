"""fp8_gemv.py (batch-1 GEMV over e4m3 weights, split-K) against float64 products
of the dequantised weights (model/fp8.py), on fresh random inputs each run.
Without a GPU it runs under Triton's interpreter, which loads float8_e4m3fn and
converts it exactly (checked here on all 256 codes); on CUDA, natively."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import fresh_seed, rel_err

from swiftinfer_core.kernels.fp8_gemv import choose_split, gemv_fp8
from swiftinfer_core.model.fp8 import quantize_fp8, reference_linear

# e4m3 weights and x are exact inputs, the sums float32: the output's rounding to its dtype is what is
# left. bf16: rounding to nearest is at most 2^-8 of each element, ~2^-8/sqrt(3) of the norm (the
# interpreter rounds as the GPU does: tests/conftest.py)
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 2**-8}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _case(n: int, k: int, dtype: torch.dtype, dev):
    w = torch.randn(n, k) * torch.logspace(-3, 0, k)[None, :]  # small columns reach e4m3's subnormals
    q, s = quantize_fp8(w)
    x = torch.randn(1, k).to(dtype)
    return q.to(dev), s.to(dev), x.to(dev), reference_linear(x, q, s)


def test_every_e4m3_code_reaches_the_kernel_exactly(dev):
    """x = e_j picks column j: y[n] = float(q[n, j]) * 1, for all 254 finite codes."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    finite = codes[~codes.float().isnan()]  # 0x7F and 0xFF are NaN
    q = finite.view(-1, 1).repeat(1, 8).contiguous()  # [254, 8]: every row one code
    x = torch.zeros(1, 8)
    x[0, 5] = 1.0
    y = gemv_fp8(x.to(dev), q.to(dev), torch.ones(254, device=dev), block_n=16, block_k=8)
    assert torch.equal(y.cpu()[0], finite.float())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,split", [(37, 1001, 1), (37, 1001, 3), (16, 512, 1), (5, 3, 1), (70, 300, 4)])
def test_gemv_fp8_matches_float64(n, k, split, dtype, dev):
    """Odd N and K (masked tails), exact block multiples, K shorter than a step, and split-K."""
    seed = fresh_seed()
    q, s, x, want = _case(n, k, dtype, dev)
    y = gemv_fp8(x, q, s, split_k=split, block_n=16, block_k=128)
    assert y.shape == (1, n) and y.dtype == dtype
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


def test_split_k_equals_one_chunk_in_float32(dev):
    """Split-K only reorders float32 sums: the results agree to float32 rounding."""
    seed = fresh_seed()
    q, s, x, _ = _case(24, 2000, torch.float32, dev)
    one = gemv_fp8(x, q, s, split_k=1, block_k=128)
    for split in (2, 5, 16):
        assert rel_err(gemv_fp8(x, q, s, split_k=split, block_k=128), one) < 1e-6, f"seed {seed} split {split}"


def test_gemv_writes_into_out_and_refuses_bad_inputs(dev):
    fresh_seed()
    q, s, x, want = _case(20, 96, torch.float32, dev)
    out = torch.full((1, 20), float("nan"), device=dev)
    y = gemv_fp8(x, q, s, out=out, split_k=2, block_k=32)
    assert y.data_ptr() == out.data_ptr() and rel_err(out, want) < TOL[torch.float32]
    with pytest.raises(ValueError, match=r"\[1, 96\]"):
        gemv_fp8(torch.randn(2, 96, device=dev), q, s)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        gemv_fp8(x, q.view(torch.uint8), s)
    with pytest.raises(ValueError, match="float32 scales"):
        gemv_fp8(x, q, s.bfloat16())
    with pytest.raises(ValueError, match="contiguous"):
        gemv_fp8(x[:, :48], q[:, ::2], s)


def test_choose_split_fills_the_gpu_only_where_rows_are_few():
    assert choose_split(576, 576, torch.device("cpu"), 16, 512) == 1  # the interpreter: nothing to fill
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        assert choose_split(128256, 4096, dev, 16, 512) == 1  # an 8B head: thousands of row blocks
        small = choose_split(576, 1536, dev, 16, 512)  # the default model's down projection: 36 row blocks
        assert 1 < small <= 3  # at most one chunk per 512-byte step


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (4096, 14336), (128256, 4096), (576, 1536), (960, 576)])
def test_gemv_fp8_bf16_at_llama_shapes(n, k):
    """7B/8B layers and head, and two default-model layers (split-K)."""
    seed = fresh_seed()
    dev = torch.device("cuda")
    q, s = quantize_fp8(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02)
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    assert rel_err(gemv_fp8(x, q, s), reference_linear(x, q, s)) < TOL[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
def test_gemv_fp8_split_k_replays_in_a_cuda_graph():
    """Shapes fix the grid and the split: a captured launch (both kernels) replays on new x in place."""
    dev = torch.device("cuda")
    q, s = quantize_fp8(torch.randn(576, 1536, device=dev))
    x = torch.randn(1, 1536, device=dev, dtype=torch.bfloat16)
    assert choose_split(576, 1536, dev, 16, 512) > 1
    gemv_fp8(x, q, s)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = gemv_fp8(x, q, s)
    x.copy_(torch.randn_like(x))
    g.replay()
    assert rel_err(out, reference_linear(x, q, s)) < TOL[torch.bfloat16]
