"""quant_gemm_joined.py (int4 GEMM, the 8 nibble tiles joined into one operand against x
permuted into their order) against float64 products of the dequantised weights, on fresh
random inputs: symmetric and zero points, steps inside one group and spanning groups, K past
the packing's padding, split-K; GPU cases at Llama shapes, each candidate the sweep may
pick, split-K determinism and a CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import check_deterministic_and_graph_replay, fresh_seed, int4_every_code, int4_zp_every_code, rel_err
from test_quant_gemm import DTYPES, TOL

from swiftinfer_core.kernels import quant_configs
from swiftinfer_core.kernels.quant_gemm import gemm_int4
from swiftinfer_core.kernels.quant_gemm_joined import _column_of, permutation
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize


def _cfg(block_k: int, waves: int, **kw) -> dict:
    return dict(block_m=16, block_n=16, block_k=block_k, warps=4, stages=1, waves=waves, joined=True, **kw)


def _check(qw, m: int, dtype, dev, block_k: int, seed: int) -> None:
    x = torch.randn(m, qw.in_features).to(dtype)
    want = x.double() @ dequantize(qw).double().t()
    for waves in (0, 1000):  # 1000: split K down to one step per part
        y = gemm_int4(x.to(dev), qw.qweight.to(dev), qw.scales.to(dev), qw.in_features, qw.group,
                      cfg=_cfg(block_k, waves), mins=None if qw.mins is None else qw.mins.to(dev))
        assert y.shape == (m, qw.out_features) and y.dtype == dtype
        assert rel_err(y, want) < TOL[dtype], f"seed {seed} block_k {block_k} waves {waves}"


def test_permutation_visits_every_column_of_each_step_once():
    """The joined order is a permutation of each step's 32 * NBK columns (the kernel and the
    host compute it by the same formula; the products below check that formula is the packing's)."""
    for block_k in (32, 64, 128, 256):
        cols = _column_of(torch.arange(block_k))
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


def _llama(m, n, k, zero_point=False, group=128):
    dev = torch.device("cuda")
    qw = quantize(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02, QuantFormat.INT4, group, zero_point)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)

    def run(out=None, cfg=None):
        return gemm_int4(x, qw.qweight, qw.scales, k, group, out=out, cfg=cfg, mins=qw.mins)

    return qw, x, run


@pytest.mark.gpu
@pytest.mark.parametrize("zp,group", [(False, 128), (True, 128), (True, 32)])
@pytest.mark.parametrize("m", [2, 32, 128, 300])
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (28672, 4096)])  # 7B qkv/down, 8B gate-up
def test_joined_bf16_at_llama_shapes(zp, group, m, n, k):
    seed = fresh_seed()
    qw, x, run = _llama(m, n, k, zp, group)
    want = x.double() @ dequantize(qw).double().t()
    cfg = dict(block_m=min(128, max(16, 1 << (m - 1).bit_length())), block_n=128, block_k=128, warps=8, stages=3,
               waves=1, joined=True)
    assert rel_err(run(cfg=cfg), want) < TOL[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("zp,group", [(False, 128), (True, 32)])
def test_joined_candidates_all_match(zp, group):
    """Every joined config the sweep may pick, at bucket 32 and each waves value."""
    seed = fresh_seed()
    qw, x, run = _llama(32, 4096, 4096, zp, group)
    want = x.double() @ dequantize(qw).double().t()
    for bn, bk, warps, stages in quant_configs.GEMM_JOINED["int4"]:
        for waves in (0, 4):
            cfg = dict(block_m=32, block_n=bn, block_k=bk, warps=warps, stages=stages, waves=waves, joined=True)
            assert rel_err(run(cfg=cfg), want) < TOL[torch.bfloat16], f"seed {seed} {cfg}"


@pytest.mark.gpu
def test_joined_split_k_is_deterministic_and_replays_in_a_cuda_graph():
    seed = fresh_seed()
    qw, x, run = _llama(32, 4096, 11008)
    cfg = dict(block_m=32, block_n=64, block_k=128, warps=4, stages=3, waves=4, joined=True)
    check_deterministic_and_graph_replay(lambda out=None: run(out, cfg), x, lambda x: x.double() @ dequantize(qw).double().t(),
                                         20, TOL[torch.bfloat16], seed)
