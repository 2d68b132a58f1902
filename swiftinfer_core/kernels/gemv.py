"""Batch-1 decode matrix-vector products with the layer's small ops fused in.

At batch 1 a decoder layer is four weight reads (qkv, o, gate-up, down); what
sits between them (RMSNorm, SiLU*up, residual adds) is a few KB of work but a
kernel launch each. Here each weight read carries its neighbours:

    y = W @ prologue(x)  (+ residual)

    PRO (kernels/gemv_fusion.Prologue) NONE: x as is         (o projection)
    RMSNORM: rmsnorm(x) * norm_weight                         (qkv, gate-up, lm_head)
    SILU_MUL: silu(gu[:K]) * gu[K:]   (gu = [gate, up])       (down projection)

For RMSNORM the sum of squares is accumulated in the same pass as the product and
applied at the end (y = inv_rms * W @ (x * nw)): one pass over x, no prologue
latency; NORMED takes x normed already by the GEMV before (a handoff,
kernels/gemv_fusion.py). With a residual, ``y`` may be the residual tensor itself
(in place): each program reads and writes only its own rows.

W [N, K] row-major (nn.Linear layout). Program p computes rows
[p*BLOCK_N, (p+1)*BLOCK_N), walking K in BLOCK_K chunks that Triton pipelines
(cp.async, STAGES deep); acc is kept [BLOCK_N, BLOCK_K] and reduced once.
Memory bound: bytes = N*K*2. Shapes fix the grid (CUDA-graph capturable).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.gemv_fusion import NO_FUSION, Fusion, epilogue, pro_load


@triton.jit
def _gemv_kernel(
    X, W, Y, N, K, NW, RES, eps, SSI, NPARTS, NWN, XN, SSO,
    PRO: tl.constexpr, HAS_RES: tl.constexpr, HANDOFF: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
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
        a, xr = pro_load(X, NW, kk, kmask, K, PRO)
        if PRO == 1:
            ss += xr * xr
        acc += w.to(tl.float32) * a[None, :]
    y = epilogue(tl.sum(acc, 1), rows, rmask, tl.sum(ss, 0), K, eps, RES, SSI, NPARTS, NWN, XN, SSO, pid,
                 PRO, HAS_RES, HANDOFF)
    tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rmask)


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    fusion: Fusion = NO_FUSION,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    block_n: int = 8,
    block_k: int = 512,
    num_warps: int = 4,
    stages: int = 3,
) -> torch.Tensor:
    """x [1, K] (or [1, 2K] for SILU_MUL), weight [N, K] -> y [1, N] in ``out``'s dtype (default
    ``out_dtype``, else x's). ``fusion`` (kernels/gemv_fusion.py): what is folded in;
    ``out`` may be its residual (in-place residual update)."""
    N, K = weight.shape
    fusion.check(x, N, K)
    if not weight.is_contiguous() or weight.device != x.device:
        raise ValueError("weight must be contiguous and on x's device")
    if out is None:
        out = torch.empty((1, N), dtype=out_dtype or x.dtype, device=x.device)
    tiles = triton.cdiv(N, block_n)
    _gemv_kernel[(tiles,)](x, weight, out, N, K, *fusion.args(x, out), **fusion.flags(), BLOCK_N=block_n, BLOCK_K=block_k,
                           STAGES=stages, num_warps=num_warps)
    fusion.stored(tiles)
    return out
