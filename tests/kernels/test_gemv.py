"""gemv.py (batch-1 matrix-vector with fused RMSNorm / SiLU*up / residual) vs float64."""

from __future__ import annotations

import pytest
import torch

from kernels_naive import fresh_seed, rel_err
from swiftinfer_core.kernels.gemv import gemv
from swiftinfer_core.kernels.gemv_fusion import Fusion, Prologue, fused_ref

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("prologue", [Prologue.NONE, Prologue.RMSNORM, Prologue.SILU_MUL])  # NORMED: test_gemv_fusion
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_matches_float64(prologue, dtype, dev):
    seed = fresh_seed()
    N, K = 52, 576  # N not a multiple of the block, K not of BLOCK_K
    W = (torch.randn(N, K) / K**0.5).to(dtype)
    x = torch.randn(1, 2 * K if prologue is Prologue.SILU_MUL else K).to(dtype)
    nw = (torch.rand(K) + 0.5).to(dtype) if prologue is Prologue.RMSNORM else None
    res = torch.randn(1, N).to(dtype)
    want = fused_ref(x, W, Fusion(prologue, nw, 1e-5, res))
    Wd, xdv, resd = W.to(dev), x.to(dev), res.clone().to(dev)
    nwd = None if nw is None else nw.to(dev)
    y = gemv(xdv, Wd, Fusion(prologue, nwd, 1e-5, resd), out=resd, block_n=8, block_k=256)  # in place
    assert y.data_ptr() == resd.data_ptr()
    assert rel_err(y, want) < TOL[dtype], f"seed {seed}"
    y2 = gemv(xdv, Wd, Fusion(prologue, nwd), out_dtype=torch.float32, block_n=16, block_k=128)
    assert y2.dtype == torch.float32 and rel_err(y2, want - res.double()) < TOL[dtype], f"seed {seed}"
