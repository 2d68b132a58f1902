"""Batch-1 decode matrix-vector products with the layer's small ops fused in.

At batch 1 a decoder layer is four weight reads (qkv, o, gate-up, down); what
sits between them (RMSNorm, SiLU*up, residual adds) is a few KB of work but a
kernel launch each. Here each weight read carries its neighbours:

    y = W @ prologue(x)  (+ residual)

    PRO 0: x as is                                   (o projection)
    PRO 1: rmsnorm(x) * norm_weight                  (qkv, gate-up, lm_head)
    PRO 2: silu(gu[:K]) * gu[K:]   (gu = [gate, up]) (down projection)

For PRO 1 the sum of squares is accumulated in the same pass as the product and
applied at the end (y = inv_rms * W @ (x * nw)): one pass over x, no prologue
latency. With a residual, ``y`` may be the residual tensor itself (in place):
each program reads and writes only its own rows.

W [N, K] row-major (nn.Linear layout). Program p computes rows
[p*BLOCK_N, (p+1)*BLOCK_N), walking K in BLOCK_K chunks that Triton pipelines
(cp.async, STAGES deep); acc is kept [BLOCK_N, BLOCK_K] and reduced once.
Memory bound: bytes = N*K*2. Shapes fix the grid (CUDA-graph capturable).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(
    X, W, Y, RES, NW, N, K, eps,
    PRO: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    ss = tl.zeros([BLOCK_K], tl.float32)
    w_ptr = W + rows.to(tl.int64)[:, None] * K
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        kk = k0 + offs_k
        kmask = kk < K
        w = tl.load(w_ptr + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        if PRO == 2:
            g = tl.load(X + kk, mask=kmask, other=0.0).to(tl.float32)
            u = tl.load(X + K + kk, mask=kmask, other=0.0).to(tl.float32)
            a = g / (1.0 + tl.exp(-g)) * u
        else:
            a = tl.load(X + kk, mask=kmask, other=0.0).to(tl.float32)
            if PRO == 1:
                ss += a * a
                a = a * tl.load(NW + kk, mask=kmask, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * a[None, :]
    y = tl.sum(acc, 1)
    if PRO == 1:
        y = y * tl.rsqrt(tl.sum(ss, 0) / K + eps)
    if HAS_RES:
        y = y + tl.load(RES + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rmask)


def gemv_ref(x, weight, prologue: str = "none", norm_weight=None, eps: float = 1e-5, residual=None, out_dtype=None):
    """Torch reference (float32 math): same contract as :func:`gemv`."""
    xf = x.float()
    if prologue == "rmsnorm":
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.float()
    elif prologue == "silu_mul":
        g, u = xf.chunk(2, dim=-1)
        xf = torch.nn.functional.silu(g) * u
    y = xf @ weight.float().t()
    if residual is not None:
        y = y + residual.float()
    return y.to(out_dtype or x.dtype)


_PRO = {"none": 0, "rmsnorm": 1, "silu_mul": 2}


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    prologue: str = "none",
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    block_n: int = 8,
    block_k: int = 512,
    num_warps: int = 4,
    stages: int = 3,
) -> torch.Tensor:
    """x [1, K] (or [1, 2K] for silu_mul), weight [N, K] -> y [1, N].
    ``out`` may be ``residual`` (in-place residual update)."""
    N, K = weight.shape
    assert x.shape[0] == 1 and x.shape[-1] == (2 * K if prologue == "silu_mul" else K)
    assert weight.is_contiguous() and x.is_contiguous()
    if out is None:
        out = torch.empty((1, N), dtype=out_dtype or x.dtype, device=x.device)
    res = residual if residual is not None else out
    nw = norm_weight if norm_weight is not None else weight
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, weight, out, res, nw, N, K, eps,
        PRO=_PRO[prologue], HAS_RES=residual is not None, BLOCK_N=block_n, BLOCK_K=block_k, STAGES=stages,
        num_warps=num_warps,
    )
    return out
