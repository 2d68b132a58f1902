"""quant_gemm.py (batched int8/int4 GEMM, int4 with and without zero points) against
float64 products of the dequantised weights (model/quant.py), on fresh random inputs
each run, with and without split-K; GPU-only cases at the Llama shapes and every
batch bucket, split-K determinism and a CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import check_deterministic_and_graph_replay, fresh_seed, int4_every_code, int4_zp_every_code, rel_err

from swiftinfer_core.kernels import quant_configs
from swiftinfer_core.kernels.quant_gemm import gemm_int4, gemm_int8
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize, unpack_int4

# exact integer operands (int4: q * scale, exact in float32 and fp16), float32 sums:
# the output's rounding to its dtype is what is left. On the GPU, bf16 also rounds
# int4's q * scale operand (2^-9 relative per weight, kernels/quant_gemm.py).
# bf16: rounding to nearest, <= 2^-8 relative per element, ~2.3e-3 of the norm (the CPU
# interpreter rounds as the GPU does: tests/conftest.py); 5e-3 leaves room for int4's bf16
# operand on the GPU.
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CFG = {"int8": dict(block_n=16, block_k=64, warps=4, stages=1), "int4": dict(block_n=16, block_k=128, warps=4, stages=1)}


def _run(qw, x, dev, waves=0, **kw):
    cfg = dict(CFG[qw.fmt.value], waves=waves)
    q, s = qw.qweight.to(dev), qw.scales.to(dev)
    if qw.fmt is QuantFormat.INT8:
        return gemm_int8(x, q, s, cfg=cfg, **kw)
    mins = None if qw.mins is None else qw.mins.to(dev)
    return gemm_int4(x, q, s, qw.in_features, qw.group, cfg=cfg, mins=mins, **kw)


@pytest.mark.parametrize("waves", [0, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 17])  # 17: two row tiles of 16
# int4 group 32: a 128-column step spans 4 groups (scales folded into the operand);
# group 128: one group per step (scale on the float32 partial); int8 ignores it
@pytest.mark.parametrize("fmt,group", [(QuantFormat.INT8, 0), (QuantFormat.INT4, 32), (QuantFormat.INT4, 128)])
def test_gemm_matches_float64(fmt, group, m, dtype, waves, dev):
    seed = fresh_seed()
    n, k = 37, 300  # neither a multiple of the blocks; int4 pads K to 320 or 384: 3 steps of 128; int8 to 304: 5 of 64
    w = torch.randn(n, k) * torch.logspace(-2, 0, k)[None, :]
    qw = quantize(w, fmt, group or 128)
    x = torch.randn(m, k).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    y = _run(qw, x.to(dev), dev, waves)
    assert y.shape == (m, n) and y.dtype == dtype
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


# the zero-point operand A = q * scale + zero in float32 (exact to float32's rounding
# before the dot; bf16 on the GPU rounds it as the symmetric group-spanning operand)
@pytest.mark.parametrize("waves", [0, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [2, 17])
# group 32: a step spans 4 groups; 128: one group per step (scale and zero per row);
# K = 300 pads to 320 / 384; K = 128: one step
@pytest.mark.parametrize("n,k,group", [(37, 300, 32), (37, 300, 128), (24, 128, 128)])
def test_gemm_int4_zero_point_matches_float64(n, k, group, m, dtype, waves, dev):
    seed = fresh_seed()
    w = torch.randn(n, k) * torch.logspace(-2, 0, k)[None, :] + torch.rand(n, 1)  # rows off centre
    qw = quantize(w, QuantFormat.INT4, group, zero_point=True)
    x = torch.randn(m, k).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    y = _run(qw, x.to(dev), dev, waves)
    assert y.shape == (m, n) and y.dtype == dtype
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


@pytest.mark.parametrize("fmt", [QuantFormat.INT8, QuantFormat.INT4])  # FP8: test_fp8_*.py
def test_gemm_reads_strided_rows_and_writes_out(fmt, dev):
    """x rows with a stride (a slice of a wider activation) and a preallocated out."""
    seed = fresh_seed()
    n, k, m = 20, 128, 5
    qw = quantize(torch.randn(n, k), fmt, 64)
    wide = torch.randn(m, k + 40)
    x = wide.to(dev)[:, 8 : 8 + k]  # row stride k + 40
    want = x.double().cpu() @ dequantize(qw).double().t()
    out = torch.full((m, n), float("nan"), device=dev)
    y = _run(qw, x, dev, 1000, out=out)
    assert y.data_ptr() == out.data_ptr()
    assert rel_err(out, want) < TOL[torch.float32], f"seed {seed}"


def test_gemm_default_configs_and_refusals(dev):
    """The table's config for each bucket runs (block_m from the bucket), and bad inputs are refused."""
    fresh_seed()
    qw = quantize(torch.randn(20, 256), QuantFormat.INT4, 128)
    q, s = qw.qweight.to(dev), qw.scales.to(dev)
    x = torch.randn(40, 256)
    want = x.double() @ dequantize(qw).double().t()
    assert rel_err(gemm_int4(x.to(dev), q, s, 256, 128), want) < TOL[torch.float32]  # bucket 64
    x = torch.randn(300, 256)  # bucket 512: dequantised, then torch.mm
    assert rel_err(gemm_int4(x.to(dev), q, s, 256, 128), x.double() @ dequantize(qw).double().t()) < TOL[torch.float32]
    with pytest.raises(ValueError, match=r"\[M, 256\]"):
        gemm_int4(torch.randn(3, 255, device=dev), q, s, 256, 128)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        gemm_int4(torch.randn(3, 256, device=dev).double(), q, s, 256, 128)
    with pytest.raises(ValueError, match="int4 weights"):
        gemm_int4(torch.randn(3, 256, device=dev), q, s, 400, 128)
    with pytest.raises(ValueError, match="multiple of 128"):
        gemm_int4(torch.randn(3, 256, device=dev), q, s, 256, 128, cfg=dict(CFG["int4"], block_k=64, waves=0))
    with pytest.raises(ValueError, match="zero-point mins"):
        gemm_int4(torch.randn(3, 256, device=dev), q, s, 256, 128, mins=s[:, :1].contiguous())


def _llama(fmt, m, n, k, zero_point=False, group=128):
    dev = torch.device("cuda")
    qw = quantize(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02, fmt, group, zero_point)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)

    def run(out=None, cfg=None):
        if fmt is QuantFormat.INT8:
            return gemm_int8(x, qw.qweight, qw.scales, out=out, cfg=cfg)
        return gemm_int4(x, qw.qweight, qw.scales, k, group, out=out, cfg=cfg, mins=qw.mins)

    return qw, x, run


# (format, zero points, group): int8, symmetric int4 and the zero-point variant at both group sizes
FORMATS = [(QuantFormat.INT8, False, 128), (QuantFormat.INT4, False, 128), (QuantFormat.INT4, True, 128),
           (QuantFormat.INT4, True, 32)]


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,zp,group", FORMATS)
@pytest.mark.parametrize("m", [2, 16, 32, 64, 128, 300])  # every bucket; 300: bucket 512, dequantised then cuBLAS
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (28672, 4096)])  # 7B qkv/down, 8B gate-up
def test_gemm_bf16_at_llama_shapes(fmt, zp, group, m, n, k):
    seed = fresh_seed()
    qw, x, run = _llama(fmt, m, n, k, zp, group)
    want = x.double() @ dequantize(qw).double().t()
    assert rel_err(run(), want) < TOL[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,zp,group", FORMATS)
def test_gemm_candidates_all_match(fmt, zp, group):
    """Every config the sweep may pick (bucket 32, each waves value) gives the right
    product, so a tuned table cannot install a broken one (the zero-point variant
    runs on int4's table)."""
    seed = fresh_seed()
    qw, x, run = _llama(fmt, 32, 4096, 4096, zp, group)
    want = x.double() @ dequantize(qw).double().t()
    for bn, bk, warps, stages in quant_configs.GEMM_CANDIDATES[fmt.value]:
        for waves in (0, 4):
            cfg = dict(block_m=32, block_n=bn, block_k=bk, warps=warps, stages=stages, waves=waves)
            assert rel_err(run(cfg=cfg), want) < TOL[torch.bfloat16], f"seed {seed} {cfg}"


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,zp,group", FORMATS)
def test_gemm_split_k_is_deterministic_and_replays_in_a_cuda_graph(fmt, zp, group):
    """Batch 32 at (4096, 11008) splits K under the default waves: repeated launches
    give identical bits, and a captured launch replays on new x in place."""
    seed = fresh_seed()
    qw, x, run = _llama(fmt, 32, 4096, 11008, zp, group)
    check_deterministic_and_graph_replay(run, x, lambda x: x.double() @ dequantize(qw).double().t(), 20, TOL[torch.bfloat16], seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [32, 128])
def test_gemm_int4_reads_every_code_including_minus_8(group, dtype, dev):
    """Codes -8..7 (nibble 0 included: model/quant_search.py's qmin=-8 stores -8) and
    bf16 group scales, packed directly, against float64."""
    seed = fresh_seed()
    n, k, m = 37, 300, 17
    qw = int4_every_code(n, k, group)
    assert (unpack_int4(qw.qweight) == -8).any()
    x = torch.randn(m, k).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    for waves in (0, 1000):
        y = _run(qw, x.to(dev), dev, waves)
        assert rel_err(y, want) < TOL[dtype], f"seed {seed} waves {waves}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [32, 128])
def test_gemm_int4_zero_point_reads_every_code_and_signed_mins(group, dtype, dev):
    """Nibbles 0..15 with float16 scales and mins of either sign, packed directly
    (no quantizer), against float64 of w = nibble * scale + min."""
    seed = fresh_seed()
    n, k, m = 37, 300, 17
    qw = int4_zp_every_code(n, k, group)
    x = torch.randn(m, k).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    for waves in (0, 1000):
        y = _run(qw, x.to(dev), dev, waves)
        assert rel_err(y, want) < TOL[dtype], f"seed {seed} waves {waves}"
