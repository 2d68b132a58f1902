"""Small fusions for the decode step: each saves launches and a round trip of the
activations through memory. At batch 1 a 7B layer's step is ~95 us of weight
reads; eager RMSNorm is ~6 kernels and SiLU*up 2, a few us each, so fusing
them matters (bench/decode_latency.py measures with and without).

* add_rmsnorm(x, residual, w): h = x + residual (stored, the new residual
  stream), y = rmsnorm(h) * w. One read of x and residual, one write of h and y.
* silu_mul(gate_up): [M, 2I] -> [M, I], silu(gate) * up.

Rounding follows the torch references below step for step (bf16 stores between
ops), so swapping them changes no bits that matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


def add_rmsnorm_ref(x, residual, weight, eps):
    """Torch reference: (normed, h) with h = x + residual (or x if residual is None)."""
    h = x if residual is None else x + residual
    hf = h.float()
    return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype) * weight, h


def silu_mul_ref(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _add_rmsnorm_kernel(X, R, W, Y, H, sx, sr, sy, sh, N, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    """One program per row of [M, N]; the whole row in registers (N <= 16k)."""
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + row * sx + offs, mask=mask, other=0.0)
    if HAS_RES:
        x = (x.to(tl.float32) + tl.load(R + row * sr + offs, mask=mask, other=0.0).to(tl.float32)).to(X.dtype.element_ty)
        tl.store(H + row * sh + offs, x, mask=mask)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, 0) / N + eps)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    y = (xf * inv).to(X.dtype.element_ty).to(tl.float32) * w
    tl.store(Y + row * sy + offs, y.to(Y.dtype.element_ty), mask=mask)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None,
                h_out: torch.Tensor | None = None, out_dtype: torch.dtype | None = None):
    """x, residual [M, N] -> (rmsnorm(x + residual) * weight, x + residual).

    h keeps x's dtype; y is ``out_dtype`` (default x's). The engine's batched path passes its
    float32 residual stream as x, the bf16 projection as residual and out_dtype bf16:
    exactly model/layers.RMSNorm's rounding (one rounding, of the product with the weight)."""
    M, N = x.shape
    assert x.stride(-1) == 1 and weight.is_contiguous()
    y = out if out is not None else torch.empty((M, N), dtype=out_dtype or x.dtype, device=x.device)
    h = x if residual is None else (h_out if h_out is not None else torch.empty_like(x))
    r = residual if residual is not None else x
    _add_rmsnorm_kernel[(M,)](
        x, r, weight, y, h, x.stride(0), r.stride(0), y.stride(0), h.stride(0), N, eps,
        HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(N), num_warps=4 if N <= 2048 else 8,
    )
    return y, h


@triton.jit
def _silu_mul_kernel(GU, OUT, sg, so, I, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < I
    g = tl.load(GU + row * sg + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + row * sg + I + offs, mask=mask, other=0.0).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty).to(tl.float32)
    tl.store(OUT + row * so + offs, (s * u).to(OUT.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """gate_up [M, 2I] (gate first, as the fused w13 projection) -> [M, I]."""
    M, I2 = gate_up.shape
    I = I2 // 2
    assert gate_up.stride(-1) == 1
    out = out if out is not None else torch.empty((M, I), dtype=gate_up.dtype, device=gate_up.device)
    BLOCK = 1024
    _silu_mul_kernel[(M, triton.cdiv(I, BLOCK))](gate_up, out, gate_up.stride(0), out.stride(0), I, BLOCK=BLOCK, num_warps=4)
    return out
