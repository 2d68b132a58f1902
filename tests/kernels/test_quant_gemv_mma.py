"""quant_gemv_mma.py (batch-1 int4 GEMV on the tensor cores, weights dequantised by
packed integer tricks) against float64 products of the dequantised weights, on fresh
random inputs each run: every code -8..7, K padded to the group, N not a multiple of
the tile, groups 128 and 256, bf16 and fp16, with and without split-K; on a GPU also
the Llama shapes, split-K determinism and a CUDA-graph replay. Under the interpreter
the nibbles decode with integer ops; natively the packed PTX runs."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import check_deterministic_and_graph_replay, fresh_seed, int4_every_code, rel_err

from swiftinfer_core.kernels.quant_gemv_mma import gemv_int4_mma, supported
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize, unpack_int4

TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}  # the output's rounding (test_quant_gemv.py)
DTYPES = [torch.bfloat16, torch.float16]
TILE = dict(block_n=32, block_k=128, warps=4, stages=1)  # small: several programs and K steps on tiny shapes


@pytest.mark.parametrize("waves", [0, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,group", [(37, 300, 128), (64, 512, 128), (40, 512, 256), (24, 128, 128)])
def test_gemv_int4_mma_reads_every_code(n, k, group, dtype, waves, dev):
    seed = fresh_seed()
    qw = int4_every_code(n, k, group)
    assert (unpack_int4(qw.qweight) == -8).any() and (unpack_int4(qw.qweight) == 7).any()
    x = torch.randn(1, k).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    y = gemv_int4_mma(x.to(dev), qw.qweight.to(dev), qw.scales.to(dev), k, group, cfg=dict(TILE, waves=waves))
    assert y.dtype == dtype and y.shape == (1, n)
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


def test_gemv_int4_mma_refuses_what_it_cannot_run(dev):
    qw = int4_every_code(16, 64, 32)
    x = torch.randn(1, 64).to(torch.bfloat16).to(dev)
    assert not supported(x, 32, False) and not supported(x.float(), 128, False) and not supported(x, 128, True)
    assert supported(x, 128, False) and supported(x.half(), 256, False)
    with pytest.raises(ValueError, match="group multiple of 128"):
        gemv_int4_mma(x, qw.qweight.to(dev), qw.scales.to(dev), 64, 32)
    with pytest.raises(ValueError, match=r"\[1, 64\]"):
        gemv_int4_mma(x.expand(2, 64).contiguous(), qw.qweight.to(dev), qw.scales.to(dev), 64, 32)


def _llama(n: int, k: int):
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    qw = quantize(w, QuantFormat.INT4, 128)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)

    def run(out=None):
        return gemv_int4_mma(x, qw.qweight, qw.scales, k, 128, out=out)
    return qw, x, run


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008), (128256, 4096)])
def test_gemv_int4_mma_bf16_at_llama_shapes(n, k):
    seed = fresh_seed()
    qw, x, run = _llama(n, k)
    assert rel_err(run(), x.double() @ dequantize(qw).double().t()) < TOL[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
def test_gemv_int4_mma_split_k_is_deterministic_and_replays_in_a_cuda_graph():
    seed = fresh_seed()
    qw, x, run = _llama(4096, 11008)
    check_deterministic_and_graph_replay(run, x, lambda x: x.double() @ dequantize(qw).double().t(), 30,
                                         TOL[torch.bfloat16], seed)
