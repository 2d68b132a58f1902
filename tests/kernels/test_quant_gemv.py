"""quant_gemv.py (batch-1 int8/int4 GEMV, int4 with and without zero points) against
float64 products of the dequantised weights (model/quant.py), on fresh random inputs
each run, with and without split-K; GPU-only cases at the Llama shapes, split-K
determinism and a CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import check_deterministic_and_graph_replay, fresh_seed, int4_every_code, int4_zp_every_code, rel_err

from swiftinfer_core.kernels import quant_common
from swiftinfer_core.kernels.quant_gemv import gemv_int4, gemv_int8
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize, unpack_int4

# The weights and x are exact inputs, the sums float32: what is left is the
# output's rounding to its dtype (fp16: < 2^-11 relative per element).
# bf16: rounding to nearest, <= 2^-8 relative per element, ~2.3e-3 of the norm (the CPU
# interpreter rounds as the GPU does: tests/conftest.py); 5e-3 leaves room for int4's bf16
# operand on the GPU.
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# small tiles so the tiny shapes span several programs and K steps; waves 0: one
# program per row block, 1000: split K as finely as the steps allow
CFG = {"int8": dict(block_n=16, block_k=32, warps=4, stages=1), "int4": dict(block_n=16, block_k=64, warps=4, stages=1)}


def _case(fmt: QuantFormat, n: int, k: int, group: int, dtype: torch.dtype, dev, zero_point: bool = False):
    w = torch.randn(n, k) * torch.logspace(-2, 0, k)[None, :]  # uneven columns: groups get different scales
    if zero_point:
        w = w + torch.rand(n, 1)  # rows off centre: the min term carries a large share of y
    qw = quantize(w, fmt, group, zero_point)
    x = torch.randn(1, k).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    return qw, x.to(dev), want


def _gemv(qw, x, dev, waves, extra: dict | None = None, **kw):
    cfg = dict(CFG[qw.fmt.value], waves=waves, **(extra or {}))
    q, s = qw.qweight.to(dev), qw.scales.to(dev)
    if qw.fmt is QuantFormat.INT8:
        return gemv_int8(x, q, s, cfg=cfg, **kw)
    mins = None if qw.mins is None else qw.mins.to(dev)
    return gemv_int4(x, q, s, qw.in_features, qw.group, cfg=cfg, mins=mins, **kw)


@pytest.mark.parametrize("waves", [0, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(37, 101), (16, 64), (24, 300)])  # odd N and K, exact multiples of the blocks
def test_gemv_int8_matches_float64(n, k, dtype, waves, dev):
    seed = fresh_seed()
    qw, x, want = _case(QuantFormat.INT8, n, k, 128, dtype, dev)
    y = _gemv(qw, x, dev, waves)
    assert y.shape == (1, n) and y.dtype == dtype
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


@pytest.mark.parametrize("waves", [0, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
# K padded to 128 (group 32); K a multiple of the group (64); 5 groups of 64 over 3 split parts
@pytest.mark.parametrize("n,k,group", [(37, 101, 32), (24, 128, 64), (40, 320, 64)])
def test_gemv_int4_matches_float64(n, k, group, dtype, waves, dev):
    seed = fresh_seed()
    qw, x, want = _case(QuantFormat.INT4, n, k, group, dtype, dev)
    y = _gemv(qw, x, dev, waves)
    assert y.shape == (1, n) and y.dtype == dtype
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


@pytest.mark.parametrize("waves", [0, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
# K padded to 128 (group 32) or 384 (group 128); K = one group of 128; 5 groups of 64 over 3 split parts
@pytest.mark.parametrize("n,k,group", [(37, 101, 32), (24, 300, 128), (16, 128, 128), (40, 320, 64)])
def test_gemv_int4_zero_point_matches_float64(n, k, group, dtype, waves, dev):
    """w = nibble * scale + min (float16 scale and min per group): the min term
    y += min * sum(x_group) on top of the symmetric decode, against float64."""
    seed = fresh_seed()
    qw, x, want = _case(QuantFormat.INT4, n, k, group, dtype, dev, zero_point=True)
    assert qw.mins is not None and qw.scales.dtype == torch.float16
    y = _gemv(qw, x, dev, waves)
    assert y.shape == (1, n) and y.dtype == dtype
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"


@pytest.mark.parametrize("prefetch,l2_only", [(1, False), (2, False), (0, True), (1, True)])
@pytest.mark.parametrize("zero_point", [False, True])
# 7 K steps of 64 per row block: one program's 7 steps (waves 0); split parts of 3, 3 and 1
# steps (waves 1 on the CPU's 8 programs per wave; a GPU splits finer); 7 one-step parts
# (1000), whose prefetches all fall past their part's end, masked
@pytest.mark.parametrize("waves", [0, 1, 1000])
def test_gemv_int4_variants_match_float64(prefetch, l2_only, zero_point, waves, dev):
    """cfg "prefetch": each thread loads its words 1 or 2 K steps ahead (the loads past
    a part's last step are masked); "l2_only": the words skip L1. The same product."""
    seed = fresh_seed()
    qw, x, want = _case(QuantFormat.INT4, 37, 420, 32, torch.float32, dev, zero_point)
    y = _gemv(qw, x, dev, waves, dict(prefetch=prefetch, l2_only=l2_only))
    assert rel_err(y, want) < TOL[torch.float32], f"seed {seed}"
    with pytest.raises(ValueError, match="prefetch"):
        _gemv(qw, x, dev, waves, dict(prefetch=3, l2_only=l2_only))


@pytest.mark.parametrize("fmt", [QuantFormat.INT8, QuantFormat.INT4])
def test_gemv_split_k_leaves_its_counters_at_zero(fmt, dev):
    """The last part of each row block resets its arrival counter, so a second call
    (and the next graph replay) starts from zero and is right again."""
    seed = fresh_seed()
    qw, x, want = _case(fmt, 50, 256, 32, torch.float32, dev)
    for _ in range(2):
        assert rel_err(_gemv(qw, x, dev, 1000), want) < TOL[torch.float32], f"seed {seed}"
        assert quant_common._COUNTERS and all(int(c.abs().sum()) == 0 for c in quant_common._COUNTERS.values())


def test_gemv_default_config_and_refuses_bad_shapes(dev):
    fresh_seed()
    qw, x, want = _case(QuantFormat.INT4, 20, 96, 32, torch.float32, dev)
    out = torch.full((1, 20), float("nan"), device=dev)
    y = gemv_int4(x, qw.qweight.to(dev), qw.scales.to(dev), 96, 32, out=out)  # the table's config
    assert y.data_ptr() == out.data_ptr() and rel_err(out, want) < TOL[torch.float32]
    with pytest.raises(ValueError, match="int4 weights"):
        gemv_int4(x, qw.qweight.to(dev), qw.scales.to(dev), 96, 64)  # wrong group for these scales
    with pytest.raises(ValueError, match=r"\[1, 96\]"):
        gemv_int4(torch.randn(2, 96, device=dev), qw.qweight.to(dev), qw.scales.to(dev), 96, 32)
    with pytest.raises(ValueError, match="out must be"):
        gemv_int4(x, qw.qweight.to(dev), qw.scales.to(dev), 96, 32, out=torch.empty(1, 21, device=dev))
    q8 = quantize(torch.randn(20, 96), QuantFormat.INT8)
    with pytest.raises(ValueError, match="int8 weights"):
        gemv_int8(x, q8.qweight.to(dev), q8.scales[:10].to(dev))
    zp = quantize(torch.randn(20, 96), QuantFormat.INT4, 32, zero_point=True)
    with pytest.raises(ValueError, match="zero-point mins"):
        gemv_int4(x, zp.qweight.to(dev), zp.scales.to(dev), 96, 32, mins=zp.mins[:, :2].to(dev))


def _llama(fmt, n, k, zero_point=False, group=128):
    dev = torch.device("cuda")
    qw = quantize(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02, fmt, group, zero_point)
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)

    def run(out=None):
        if fmt is QuantFormat.INT8:
            return gemv_int8(x, qw.qweight, qw.scales, out=out)
        return gemv_int4(x, qw.qweight, qw.scales, k, group, out=out, mins=qw.mins)

    return qw, x, run


# (format, zero points, group): int8, symmetric int4 and the zero-point variant at both group sizes
FORMATS = [(QuantFormat.INT8, False, 128), (QuantFormat.INT4, False, 128), (QuantFormat.INT4, True, 128),
           (QuantFormat.INT4, True, 32)]


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,zp,group", FORMATS)  # FP8: test_fp8_*.py
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (4096, 14336), (128256, 4096)])  # 7B/8B layers, 8B head
def test_gemv_bf16_at_llama_shapes(fmt, zp, group, n, k):
    seed = fresh_seed()
    qw, x, run = _llama(fmt, n, k, zp, group)
    want = x.double() @ dequantize(qw).double().t()
    assert rel_err(run(), want) < TOL[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,zp,group", FORMATS)
def test_gemv_split_k_is_deterministic_and_replays_in_a_cuda_graph(fmt, zp, group):
    """(4096, 11008) splits K under the default waves: 30 launches give identical
    bits (the partials are summed in a fixed order: a race would show here), and
    a captured launch replays on new x with its counters back at zero."""
    seed = fresh_seed()
    qw, x, run = _llama(fmt, 4096, 11008, zp, group)
    check_deterministic_and_graph_replay(run, x, lambda x: x.double() @ dequantize(qw).double().t(), 30, TOL[torch.bfloat16], seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [32, 128])
def test_gemv_int4_reads_every_code_including_minus_8(group, dtype, dev):
    """Codes -8..7 (nibble 0 included: model/quant_search.py's qmin=-8 stores -8) and
    bf16 group scales, packed directly, against float64."""
    seed = fresh_seed()
    n, k = 24, 300
    qw = int4_every_code(n, k, group)
    assert (unpack_int4(qw.qweight) == -8).any()
    x = torch.randn(1, k).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    for waves in (0, 1000):
        y = _gemv(qw, x.to(dev), dev, waves)
        assert rel_err(y, want) < TOL[dtype], f"seed {seed} waves {waves}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [32, 128])
def test_gemv_int4_zero_point_reads_every_code_and_signed_mins(group, dtype, dev):
    """Nibbles 0..15 with float16 scales and mins of either sign, packed directly
    (no quantizer), against float64 of w = nibble * scale + min."""
    seed = fresh_seed()
    n, k = 24, 300
    qw = int4_zp_every_code(n, k, group)
    x = torch.randn(1, k).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    for waves in (0, 1000):
        y = _gemv(qw, x.to(dev), dev, waves)
        assert rel_err(y, want) < TOL[dtype], f"seed {seed} waves {waves}"
