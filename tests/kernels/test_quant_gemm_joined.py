"""quant_gemm_joined.py (int4 and int8 GEMMs, a step's nibble or byte tiles joined into one
operand against x permuted into their order) against float64 products of the dequantised weights, on fresh
random inputs: symmetric and zero points, steps inside one group and spanning groups, K past
the packing's padding, split-K; GPU cases at Llama shapes, each candidate the sweep may
pick, split-K determinism and a CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import check_deterministic_and_graph_replay, fresh_seed, int4_every_code, int4_zp_every_code, rel_err
from test_quant_gemm import DTYPES, TOL

from swiftinfer_core.kernels import quant_configs
from swiftinfer_core.kernels.quant_gemm import gemm_int4, gemm_int8
from swiftinfer_core.kernels.quant_gemm_joined import _column_of, permutation
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize


def _cfg(block_k: int, waves: int, **kw) -> dict:
    return dict(block_m=16, block_n=16, block_k=block_k, warps=4, stages=1, waves=waves, joined=True, **kw)


def _check(qw, m: int, dtype, dev, block_k: int, seed: int) -> None:
    x = torch.randn(m, qw.in_features).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    for waves in (0, 1000):  # 1000: split K down to one step per part
        if qw.fmt is QuantFormat.INT8:
            y = gemm_int8(x.to(dev), qw.qweight.to(dev), qw.scales.to(dev), cfg=_cfg(block_k, waves))
        else:
            y = gemm_int4(x.to(dev), qw.qweight.to(dev), qw.scales.to(dev), qw.in_features, qw.group,
                          cfg=_cfg(block_k, waves), mins=None if qw.mins is None else qw.mins.to(dev))
        assert y.shape == (m, qw.out_features) and y.dtype == dtype
        assert rel_err(y, want) < TOL[dtype], f"seed {seed} block_k {block_k} waves {waves}"


def test_permutation_visits_every_column_of_each_step_once():
    """The joined order is a permutation of each step's 32 * NBK columns (the kernel and the
    host compute it by the same formula; the products below check that formula is the packing's)."""
    for block_k in (32, 64, 128, 256):
        for int8 in (False, True):
            cols = _column_of(torch.arange(block_k), int8)
            assert sorted(cols.tolist()) == list(range(block_k))
    perm = permutation(300, 10, 128, torch.device("cpu"))  # K 300 packed as 10 blocks: 3 steps of 4 blocks
    assert perm.shape == (384,) and perm.max().item() == 299
    assert sorted(set(perm.tolist())) == list(range(300))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [2, 17])
# group 128: one group per step at block_k <= 128, spanning groups at 256; group 32: every
# step but block_k 32 spans groups; K = 300 pads to 320 / 384
@pytest.mark.parametrize("group,block_k", [(128, 32), (128, 128), (128, 256), (32, 32), (32, 64), (64, 128)])
def test_joined_matches_float64(group, block_k, m, dtype, dev):
    seed = fresh_seed()
    n, k = 37, 300
    qw = quantize(torch.randn(n, k) * torch.logspace(-2, 0, k)[None, :], QuantFormat.INT4, group)
    _check(qw, m, dtype, dev, block_k, seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [2, 17])
@pytest.mark.parametrize("block_k", [16, 64, 128])  # K = 300 pads to 304: 19 blocks of 16
def test_joined_int8_matches_float64(block_k, m, dtype, dev):
    seed = fresh_seed()
    qw = quantize(torch.randn(37, 300) * torch.logspace(-2, 0, 300)[None, :], QuantFormat.INT8, 128)
    _check(qw, m, dtype, dev, block_k, seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group,block_k", [(128, 64), (128, 256), (32, 32), (32, 128)])
def test_joined_zero_point_matches_float64(group, block_k, dtype, dev):
    seed = fresh_seed()
    n, k = 37, 300
    w = torch.randn(n, k) * torch.logspace(-2, 0, k)[None, :] + torch.rand(n, 1)  # rows off centre
    _check(quantize(w, QuantFormat.INT4, group, zero_point=True), 5, dtype, dev, block_k, seed)


@pytest.mark.parametrize("group", [32, 128])
def test_joined_reads_every_code(group, dev):
    """Codes -8..7 and, with zero points, nibbles 0..15 with signed mins, packed directly."""
    seed = fresh_seed()
    _check(int4_every_code(37, 300, group), 17, torch.float32, dev, 64, seed)
    _check(int4_zp_every_code(37, 300, group), 17, torch.float32, dev, 128, seed)


def test_joined_refusals(dev):
    qw = quantize(torch.randn(20, 256), QuantFormat.INT4, 128)
    x = torch.randn(3, 256, device=dev)
    with pytest.raises(ValueError, match="multiple of 32"):
        gemm_int4(x, qw.qweight.to(dev), qw.scales.to(dev), 256, 128, cfg=_cfg(48, 0))
    with pytest.raises(ValueError, match='"joined" must be a bool'):
        gemm_int4(x, qw.qweight.to(dev), qw.scales.to(dev), 256, 128, cfg=_cfg(64, 0) | {"joined": 1})
    q8 = quantize(torch.randn(20, 256), QuantFormat.INT8, 128)
    with pytest.raises(ValueError, match="multiple of 16"):
        gemm_int8(x, q8.qweight.to(dev), q8.scales.to(dev), cfg=_cfg(24, 0))


def _llama(m, n, k, zero_point=False, group=128, fmt=QuantFormat.INT4):
    dev = torch.device("cuda")
    qw = quantize(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02, fmt, group, zero_point)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)

    def run(out=None, cfg=None):
        if fmt is QuantFormat.INT8:
            return gemm_int8(x, qw.qweight, qw.scales, out=out, cfg=cfg)
        return gemm_int4(x, qw.qweight, qw.scales, k, group, out=out, cfg=cfg, mins=qw.mins)

    return qw, x, run


GPU_FORMATS = [(QuantFormat.INT4, False, 128), (QuantFormat.INT4, True, 128), (QuantFormat.INT4, True, 32),
               (QuantFormat.INT8, False, 128)]


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,zp,group", GPU_FORMATS)
@pytest.mark.parametrize("m", [2, 32, 128, 300])
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (28672, 4096)])  # 7B qkv/down, 8B gate-up
def test_joined_bf16_at_llama_shapes(fmt, zp, group, m, n, k):
    seed = fresh_seed()
    qw, x, run = _llama(m, n, k, zp, group, fmt)
    want = x.double() @ dequantize(qw).double().t()
    cfg = dict(block_m=min(128, max(16, 1 << (m - 1).bit_length())), block_n=128, block_k=128, warps=8, stages=3,
               waves=1, joined=True)
    assert rel_err(run(cfg=cfg), want) < TOL[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,zp,group", [(QuantFormat.INT4, False, 128), (QuantFormat.INT4, True, 32), (QuantFormat.INT8, False, 128)])
def test_joined_candidates_all_match(fmt, zp, group):
    """Every joined config the sweep may pick, at bucket 32 and each waves value."""
    seed = fresh_seed()
    qw, x, run = _llama(32, 4096, 4096, zp, group, fmt)
    want = x.double() @ dequantize(qw).double().t()
    for bn, bk, warps, stages in quant_configs.GEMM_JOINED[fmt.value]:
        for waves in (0, 4):
            cfg = dict(block_m=32, block_n=bn, block_k=bk, warps=warps, stages=stages, waves=waves, joined=True)
            assert rel_err(run(cfg=cfg), want) < TOL[torch.bfloat16], f"seed {seed} {cfg}"


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", [QuantFormat.INT4, QuantFormat.INT8])
def test_joined_split_k_is_deterministic_and_replays_in_a_cuda_graph(fmt):
    seed = fresh_seed()
    qw, x, run = _llama(32, 4096, 11008, fmt=fmt)
    cfg = dict(block_m=32, block_n=64, block_k=128, warps=4, stages=3, waves=4, joined=True)
    check_deterministic_and_graph_replay(lambda out=None: run(out, cfg), x, lambda x: x.double() @ dequantize(qw).double().t(),
                                         20, TOL[torch.bfloat16], seed)


@pytest.mark.gpu
def test_joined_first_call_inside_a_graph_capture_then_eager():
    """A shape first met inside a CUDA-graph capture: its x permutation is built in the graph (not
    cached unbuilt), so the replay and a later eager call both give the right product."""
    seed = fresh_seed()
    cfg = dict(block_m=16, block_n=64, block_k=128, warps=4, stages=3, waves=0, joined=True)
    _, _, warm = _llama(4, 256, 4096)
    warm(cfg=cfg)  # compiles the kernel outside the capture (K is a runtime argument)
    qw, x, run = _llama(4, 256, 4096 + 32 * 7)  # a K no earlier call used
    want = x.double() @ dequantize(qw).double().t()
    out = torch.full((4, 256), float("nan"), device="cuda", dtype=torch.bfloat16)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run(out, cfg)
    g.replay()
    assert rel_err(out, want) < TOL[torch.bfloat16], f"seed {seed}"
    assert rel_err(run(cfg=cfg), want) < TOL[torch.bfloat16], f"seed {seed}"
