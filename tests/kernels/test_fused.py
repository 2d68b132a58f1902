"""fused.py kernels vs float64 math and vs their torch references."""

from __future__ import annotations

import pytest
import torch

from kernels_naive import fresh_seed, rel_err
from swiftinfer_core.kernels.fused import add_rmsnorm, add_rmsnorm_ref, silu_mul, silu_mul_ref

TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N", [576, 4096])
def test_add_rmsnorm(dtype, N, dev):
    seed = fresh_seed()
    x, r = torch.randn(3, N).to(dtype), torch.randn(3, N).to(dtype)
    w = (torch.rand(N) + 0.5).to(dtype)
    h64 = x.double() + r.double()
    want = h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()
    y = torch.full_like(x, float("nan")).to(dev)
    y, h = add_rmsnorm(x.to(dev), r.to(dev), w.to(dev), 1e-5, out=y)
    assert rel_err(y, want) < TOL[dtype] and rel_err(h, h64) < TOL[dtype], f"seed {seed}"
    assert rel_err(y, add_rmsnorm_ref(x, r, w, 1e-5)[0]) < TOL[dtype], f"seed {seed}"
    y2, h2 = add_rmsnorm(x.to(dev), None, w.to(dev), 1e-5)  # no residual: plain RMSNorm
    x64 = x.double()
    want2 = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()
    assert rel_err(y2, want2) < TOL[dtype], f"seed {seed}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("I", [1536, 1000])
def test_silu_mul(dtype, I, dev):
    seed = fresh_seed()
    gu = (torch.randn(2, 2 * I) * 3).to(dtype)
    g, u = gu.double().chunk(2, -1)
    want = g * torch.sigmoid(g) * u
    out = torch.full((2, I), float("nan"), dtype=dtype, device=dev)
    silu_mul(gu.to(dev), out=out)
    assert rel_err(out, want) < TOL[dtype], f"seed {seed}"
    assert rel_err(out, silu_mul_ref(gu)) < TOL[dtype], f"seed {seed}"


@pytest.mark.parametrize("N", [576, 4096])
def test_add_rmsnorm_on_a_float32_stream_rounds_as_the_model_norm(N, dev):
    """The engine's batched layers: float32 residual x, bf16 projection r, bf16 weight, bf16 out."""
    from swiftinfer_core.model.layers import RMSNorm

    seed = fresh_seed()
    x, r = torch.randn(5, N) * 4, torch.randn(5, N).to(torch.bfloat16)
    w = (torch.rand(N) + 0.5).to(torch.bfloat16)
    h64 = x.double() + r.double()
    want = h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()
    y, h = add_rmsnorm(x.to(dev), r.to(dev), w.to(dev), 1e-5, out_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert rel_err(h, h64) < 1e-6 and rel_err(y, want) < 1e-2, f"seed {seed}"
    norm = RMSNorm(N, 1e-5).to(torch.bfloat16)
    norm.weight.data.copy_(w)
    model = norm(x + r).to(torch.bfloat16)  # llama.Block's torch path
    # the same one rounding to bf16: at most one bf16 step apart where float32 sums differ in order
    step = model.float().abs() * 2**-7
    assert ((y.cpu().float() - model.float()).abs() <= step + 1e-30).all(), f"seed {seed}"
