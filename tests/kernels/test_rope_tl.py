"""rope_tl's in-kernel angles vs float64, at positions far from zero (|pos| up
to ~8k: a 4+4092 cache plus a long chunk), where a plain float32 ``pos * f``
is off by up to 5e-4 rad."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from kernels_naive import fresh_seed
from swiftinfer_core.kernels import rope_tl
from swiftinfer_core.kernels.rope import inv_freq


FAST = [False, True] if torch.cuda.is_available() else [False]  # MUFU sin/cos: GPU only


@triton.jit
def _cos_sin_kernel(P, F, C, S, N: tl.constexpr, H: tl.constexpr, FAST: tl.constexpr):
    p = tl.load(P + tl.arange(0, N)).to(tl.float32)
    f = tl.load(F + tl.arange(0, H))
    c, s = rope_tl.cos_sin(p[:, None], f[None, :], FAST)
    idx = tl.arange(0, N)[:, None] * H + tl.arange(0, H)[None, :]
    tl.store(C + idx, c)
    tl.store(S + idx, s)


@triton.jit
def _tile_kernel(X, F, O, p0, N: tl.constexpr, H: tl.constexpr, FAST: tl.constexpr):
    idx = tl.arange(0, N)[:, None] * (2 * H) + tl.arange(0, H)[None, :]
    x1 = tl.load(X + idx)
    x2 = tl.load(X + idx + H)
    f = tl.load(F + tl.arange(0, H))
    ci, si = rope_tl.offset_table(f, N, FAST)
    o1, o2 = rope_tl.rotate_tile(x1, x2, p0, f, ci, si, FAST)
    tl.store(O + idx, o1)
    tl.store(O + idx + H, o2)


@pytest.mark.parametrize("fast", FAST)
def test_cos_sin_exact_at_large_positions(dev, fast):
    fresh_seed()
    pos = torch.randint(-8192, 8192, (64,), dtype=torch.int32)
    f = inv_freq(128, 10000.0)
    c = torch.empty(64, 64)
    s = torch.empty(64, 64)
    pd, fd, cd, sd = pos.to(dev), f.to(dev), c.to(dev), s.to(dev)
    _cos_sin_kernel[(1,)](pd, fd, cd, sd, N=64, H=64, FAST=fast)
    ang = pos.double()[:, None] * f.double()[None, :]
    assert (cd.cpu().double() - ang.cos()).abs().max() < 2e-6
    assert (sd.cpu().double() - ang.sin()).abs().max() < 2e-6


@pytest.mark.parametrize("fast", FAST)
def test_rotate_tile_matches_float64(dev, fast):
    fresh_seed()
    f = inv_freq(64, 10000.0)
    x = torch.randn(32, 64)
    for p0 in (0, -100, 4095, 7000):
        o = torch.empty_like(x).to(dev)
        _tile_kernel[(1,)](x.to(dev), f.to(dev), o, p0, N=32, H=32, FAST=fast)
        ang = (p0 + torch.arange(32, dtype=torch.float64))[:, None] * f.double()[None, :]
        x1, x2 = x.double()[:, :32], x.double()[:, 32:]
        want = torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1)
        assert (o.cpu().double() - want).abs().max() < 1e-5 * want.abs().max(), p0
