"""quant_gemv_xres.py (the int4 GEMV that holds x in registers and walks rows, config
"x_resident": true) against float64 products of the dequantised weights, on fresh
random inputs: with and without zero points, split over K chunks or not, rows per
program from one step to many, full and ragged tiles, register prefetch; its "h2" math
within the fp16 bound of test_quant_gemv_h2.py and equal to that file's emulation; the
grid's row ranges exactly; GPU-only cases at the Llama shapes, determinism and a
CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import check_deterministic_and_graph_replay, fresh_seed, int4_every_code, int4_zp_every_code, rel_err
from test_quant_gemv import DTYPES, TOL
from test_quant_gemv import _case as quant_gemv_case
from test_quant_gemv_h2 import OUT_U, _h2_bound, _h2_emulate, _x_with_large_columns

from swiftinfer_core.kernels import quant_common
from swiftinfer_core.kernels.quant_gemv import gemv_int4
from swiftinfer_core.kernels.quant_gemv_xres import row_ranges
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize, unpack_int4


def _case(n: int, k: int, group: int, dtype: torch.dtype, dev, zero_point: bool = False):
    return quant_gemv_case(QuantFormat.INT4, n, k, group, dtype, dev, zero_point)


def _gemv(qw, x, dev, block_n=8, block_k=64, waves=0, prefetch=0, math="f32", **kw):
    cfg = dict(block_n=block_n, block_k=block_k, warps=4, stages=1, waves=waves, x_resident=True, prefetch=prefetch, math=math)
    mins = None if qw.mins is None else qw.mins.to(dev)
    return gemv_int4(x, qw.qweight.to(dev), qw.scales.to(dev), qw.in_features, qw.group, cfg=cfg, mins=mins, **kw)


def test_row_ranges():
    """waves 0: one block_n step per program; else about waves * sms programs over the
    split, rows rounded to whole steps; the last range may be short."""
    assert row_ranges(100, 8, 4, 132, 0) == (8, 13)
    assert row_ranges(12288, 16, 4, 132, 2) == (176, 70)  # 768 steps for 66 ranges: 11 steps each, 70 ranges
    assert row_ranges(12288, 16, 4, 132, 1) == (368, 34)  # for 33 ranges: 23 steps each, 34 ranges
    assert row_ranges(40, 8, 1, 8, 1000) == (8, 5)  # more programs wanted than steps: one step each
    assert row_ranges(37, 8, 2, 8, 1) == (8, 5)


@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
# K padded to 128 (group 32), 3 chunks of 64 columns; 5 groups of 64 over 5 chunks;
# 256 columns in one chunk of 256 (no split); N = 64 = whole ranges (no masks at all)
@pytest.mark.parametrize("n,k,group,block_k", [(37, 101, 32, 64), (40, 320, 64, 64), (24, 256, 128, 256), (64, 256, 64, 128)])
def test_gemv_xres_matches_float64(n, k, group, block_k, dtype, zero_point, dev):
    seed = fresh_seed()
    qw, x, want = _case(n, k, group, dtype, dev, zero_point)
    for waves in (0, 1, 1000):  # ranges of one step; a few ranges of several steps; one step each
        y = _gemv(qw, x, dev, block_k=block_k, waves=waves)
        assert y.shape == (1, n) and y.dtype == dtype
        assert rel_err(y, want) < TOL[dtype], f"seed {seed} waves {waves}"


@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("n", [37, 64])  # a ragged last range; whole ranges (the unmasked words)
def test_gemv_xres_prefetch_matches_float64(n, zero_point, dev):
    """prefetch 1: each step's words are loaded one step ahead; the load past a range's
    last row is masked even where the tiles are whole. The same product."""
    seed = fresh_seed()
    qw, x, want = _case(n, 256, 64, torch.float32, dev, zero_point)
    for waves in (0, 1):
        y = _gemv(qw, x, dev, block_k=128, waves=waves, prefetch=1)
        assert rel_err(y, want) < TOL[torch.float32], f"seed {seed} waves {waves}"


def test_gemv_xres_leaves_its_counters_at_zero_and_refuses_other_options(dev):
    seed = fresh_seed()
    qw, x, want = _case(50, 256, 32, torch.float32, dev)
    for _ in range(2):  # the last chunk of each range resets its counter: the second call is right too
        assert rel_err(_gemv(qw, x, dev, waves=1), want) < TOL[torch.float32], f"seed {seed}"
        assert all(int(c.abs().sum()) == 0 for c in quant_common._COUNTERS.values())
    with pytest.raises(ValueError, match="prefetch"):
        _gemv(qw, x, dev, prefetch=2)
    q, s = qw.qweight.to(dev), qw.scales.to(dev)
    base = dict(block_n=8, block_k=64, warps=4, stages=1, waves=0, x_resident=True)
    with pytest.raises(ValueError, match="math"):
        gemv_int4(x, q, s, 256, 32, cfg=dict(base, math="f16"))
    with pytest.raises(ValueError, match="l2_only"):
        gemv_int4(x, q, s, 256, 32, cfg=dict(base, l2_only=True))
    with pytest.raises(ValueError, match="x_resident"):
        gemv_int4(x, q, s, 256, 32, cfg=dict(base, x_resident=1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_point", [False, True])
def test_gemv_xres_reads_every_code(zero_point, dtype, dev):
    """Codes -8..7 (symmetric) or nibbles 0..15 with signed mins, packed directly."""
    seed = fresh_seed()
    qw = int4_zp_every_code(24, 300, 32) if zero_point else int4_every_code(24, 300, 32)
    if not zero_point:
        assert (unpack_int4(qw.qweight) == -8).any()
    x = torch.randn(1, 300).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    for waves in (0, 1000):
        assert rel_err(_gemv(qw, x.to(dev), dev, waves=waves), want) < TOL[dtype], f"seed {seed} waves {waves}"


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,group,block_k", [(37, 101, 32, 64), (40, 320, 64, 128), (64, 256, 128, 256)])
def test_gemv_xres_h2_within_its_fp16_bound(n, k, group, block_k, dtype, large, dev):
    """math "h2": element by element within the h2 path's derived bound against float64,
    x with +-3e4 columns and a tiny block where ``large``, split over chunks or not."""
    seed = fresh_seed()
    qw, _, _ = _case(n, k, group, dtype, dev)
    x = _x_with_large_columns(k, dtype, large)
    want = x.double() @ dequantize(qw).double().t()
    bound = _h2_bound(qw, x, want)
    for waves, prefetch in ((0, 0), (1, 1), (1000, 0)):
        err = (_gemv(qw, x.to(dev), dev, block_k=block_k, waves=waves, prefetch=prefetch, math="h2").double().cpu() - want).abs()
        assert (err <= bound).all(), f"seed {seed} waves {waves}: worst err/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_xres_h2_matches_its_fp16_emulation(dtype, dev):
    """Every code, large columns: the block sums are the emulated pairs, order and roundings;
    what is left is float32 summation and y's rounding (as in test_quant_gemv_h2.py)."""
    seed = fresh_seed()
    qw = int4_every_code(37, 300, 32)
    x = _x_with_large_columns(300, dtype, True)
    emu, mag = _h2_emulate(qw, x)
    err = (_gemv(qw, x.to(dev), dev, waves=1, math="h2").double().cpu() - emu).abs()
    core = (300 / 32 + 8) * 2.0**-24 * mag
    assert (err <= core + OUT_U[dtype] * (emu.abs() + core)).all(), f"seed {seed}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_xres_h2_zero_point(dtype, dev):
    """Zero points on the h2 math: the min term (min + 8 scale) sum(x) is float32, the nibble
    part fp16 as above; against float64 within fp16's rounding over 16-product chains."""
    seed = fresh_seed()
    qw, x, want = _case(40, 320, 64, dtype, dev, zero_point=True)
    for waves in (0, 1000):
        assert rel_err(_gemv(qw, x, dev, block_k=128, waves=waves, math="h2"), want) < 4e-3 + TOL[dtype], f"seed {seed}"


def _llama(n, k, zero_point, prefetch, block_k=1024, math="f32"):
    dev = torch.device("cuda")
    qw = quantize(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02, QuantFormat.INT4, 128, zero_point)
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    cfg = dict(block_n=16, block_k=block_k, warps=4, stages=1, waves=2, x_resident=True, prefetch=prefetch, math=math)

    def run(out=None):
        return gemv_int4(x, qw.qweight, qw.scales, k, 128, out=out, cfg=cfg, mins=qw.mins)

    return qw, x, run


@pytest.mark.gpu
@pytest.mark.parametrize("zero_point,prefetch", [(False, 0), (False, 1), (True, 0)])
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (4096, 14336), (128256, 4096)])  # 7B/8B layers, 8B head
def test_gemv_xres_bf16_at_llama_shapes(n, k, zero_point, prefetch):
    seed = fresh_seed()
    qw, x, run = _llama(n, k, zero_point, prefetch)
    assert rel_err(run(), x.double() @ dequantize(qw).double().t()) < TOL[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("zero_point", [False, True])
def test_gemv_xres_is_deterministic_and_replays_in_a_cuda_graph(zero_point):
    """11 K chunks of 1024 (the last one short) meet in the workspace: 30 launches give
    identical bits, and a captured launch replays on new x with its counters back at zero."""
    seed = fresh_seed()
    qw, x, run = _llama(4096, 11008, zero_point, 0)
    check_deterministic_and_graph_replay(run, x, lambda x: x.double() @ dequantize(qw).double().t(), 30, TOL[torch.bfloat16], seed)


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (128256, 4096)])
def test_gemv_xres_h2_at_llama_shapes_and_is_deterministic(n, k):
    """math "h2" at the 7B/8B shapes within its bound; 30 launches identical, a graph replay."""
    seed = fresh_seed()
    qw, x, run = _llama(n, k, False, 1, math="h2")
    want = x.double() @ dequantize(qw).double().t()
    err = (run().double() - want).abs().cpu()
    assert (err <= _h2_bound(qw, x, want.cpu())).all(), f"seed {seed}"
    check_deterministic_and_graph_replay(run, x, lambda x: x.double() @ dequantize(qw).double().t(), 30, TOL[torch.bfloat16], seed)


_DEFAULT = dict(block_n=16, block_k=512, warps=4, stages=1, waves=2, prefetch=1, pdl=True)  # the default kernel
_XRES_H2 = dict(block_n=4, block_k=1024, warps=4, stages=1, waves=16, x_resident=True, prefetch=1, math="h2", pdl=True)
PDL_CFGS = [_DEFAULT, dict(_DEFAULT, l2_prefetch=True), _XRES_H2, dict(_XRES_H2, l2_prefetch=True),
            dict(block_n=8, block_k=1024, warps=4, stages=1, waves=8, x_resident=True, prefetch=1, pdl=True)]


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", PDL_CFGS, ids=["default", "default-l2pf", "xres-h2", "xres-h2-l2pf", "xres-f32"])
def test_gemv_pdl_chain_waits_for_the_previous_output(cfg):
    """"pdl" (and "l2_prefetch"): a chain of GEMVs, each reading the previous one's output (NaN until written),
    eager and replayed in a CUDA graph 20 times: every output is its own input's product
    (the wait before x), split-K counters back at zero (the wait before the workspace)."""
    seed = fresh_seed()
    dev = torch.device("cuda")
    ws = [quantize(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02, QuantFormat.INT4, 128)
          for n, k in ((11008, 4096), (4096, 11008), (12288, 4096))]
    x = torch.randn(1, 4096, device=dev, dtype=torch.bfloat16)
    outs = [torch.empty(1, w.out_features, device=dev, dtype=torch.bfloat16) for w in ws]

    def chain():
        for o in outs:
            o.fill_(float("nan"))
        src = x
        for w, o in zip(ws, outs):
            src = gemv_int4(src, w.qweight, w.scales, w.in_features, 128, out=o, cfg=cfg)

    def check(tag):
        src = x
        for w, o in zip(ws, outs):
            want = src.double() @ dequantize(w).double().t()
            assert rel_err(o, want) < TOL[torch.bfloat16], f"seed {seed} {tag}"
            src = o
        assert all(int(c.abs().sum()) == 0 for c in quant_common._COUNTERS.values())

    chain()
    torch.cuda.synchronize()
    check("eager")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        chain()
    for i in range(20):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        check(f"replay {i}")
