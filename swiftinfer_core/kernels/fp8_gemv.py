"""Batch-1 decode GEMV over FP8 (e4m3) weights: y [1, N] = x [1, K] @ W^T.

W is q float8_e4m3fn [N, K] with one float32 scale per row (model/fp8.py):
W[n, k] = q[n, k] * S[n]. One decode token reads every weight once, so bytes are
the time: one byte a weight, half of bf16's.

Program (pid_n, pid_k) owns rows [pid_n*BLOCK_N, +BLOCK_N) and the K chunk
[pid_k*K_CHUNK, +K_CHUNK). Each K step loads a [BLOCK_N, BLOCK_K] tile of q, each
row a contiguous run of BLOCK_K bytes (by default 8 rows x 512 bytes, 4 warps,
4 pipelining stages: the fastest tile, or within 2% of it, at every 7B/8B layer
shape on an H100, bench/results/fp8_gemv_sweep_h100.json), converts it to float32 in
registers (exact: e4m3 is a subset of float32) and multiply-accumulates with x
(bf16/fp16/fp32, read as float32) into acc [BLOCK_N, BLOCK_K]; acc is reduced
once at the end and the row's scale applied to the row's sum (one multiply per
row, not per weight).

Split-K: a [576, 576] layer of the default model has 72 row blocks of 8, far
fewer programs than an H200's 132 SMs, and most of the GPU would idle. Where
row blocks are fewer than 2 x SMs, K is cut into SPLIT chunks (whole BLOCK_K
steps each); every program stores its scaled partial sums to P float32
[SPLIT, N], and the SPLIT partials of a row are added in a fixed order
(deterministic) and cast to y's dtype, either by a second kernel or, with
``one_launch``, by the last part of the row tile to arrive (an atomic counter:
kernels/quant_common.py splitk_arrive), saving a launch. SPLIT 1 stores y directly.
On the H100 sweep any split of the 7B/8B shapes (whose 8-row blocks fill the GPU)
was slower than none, and one_launch slower than the second kernel, so neither
is the default there.

Shapes alone fix the grid and SPLIT (the SM count is a device property, read on
the host once), so the launch is CUDA-graph capturable and has no host syncs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.gemv_fusion import NO_FUSION, Fusion, fused_store, pro_load, split_epilogue
from swiftinfer_core.kernels.quant_common import split_buffers
from swiftinfer_core.kernels.triton_common import sm_count

MAX_SPLIT = 16
SUM_BLOCK = 1024  # rows per program of the split-K sum kernel


@triton.jit
def _fp8_gemv_kernel(
    X, Q, S, Y, P, CNT, N, K, K_CHUNK, NW, RES, eps, SSI, NPARTS, NWN, XN, SSO,
    SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
    PRO: tl.constexpr, HAS_RES: tl.constexpr, HANDOFF: tl.constexpr, ONE_LAUNCH: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    offs = tl.arange(0, BLOCK_K)
    q_ptr = Q + rows.to(tl.int64)[:, None] * K  # row n starts at n * K bytes
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    ssv = tl.zeros([BLOCK_K], tl.float32)  # RMSNORM, one part: x^2 (kernels/gemv_fusion.py)
    k_lo = pid_k * K_CHUNK
    k_hi = tl.minimum(k_lo + K_CHUNK, K)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
        kk = k0 + offs
        kmask = kk < k_hi
        w = tl.load(q_ptr + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)  # [BLOCK_N, BLOCK_K] e4m3
        x, xr = pro_load(X, NW, kk, kmask, K, PRO)  # [BLOCK_K] float32
        if PRO == 1:
            ssv += xr * xr
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, 1) * tl.load(S + rows, mask=rmask, other=0.0)  # [BLOCK_N] float32, scaled once per row
    if SPLIT == 1 or ONE_LAUNCH:
        fused_store(y, tl.sum(ssv, 0), Y, rows, rmask, P, CNT, pid_n, pid_k, SPLIT, N, X, K, eps, RES,
                    SSI, NPARTS, NWN, XN, SSO, PRO, HAS_RES, HANDOFF)
    else:
        tl.store(P + pid_k * N + rows, y, mask=rmask)


@triton.jit
def _sum_splits_kernel(P, Y, X, N, K, NW, RES, eps, SSI, NPARTS, NWN, XN, SSO, SPLIT: tl.constexpr, BLOCK: tl.constexpr,
                       PRO: tl.constexpr, HAS_RES: tl.constexpr, HANDOFF: tl.constexpr):
    """y[n] = sum over s of P[s, n], s in order, with the epilogue (a handoff's partial sums per BLOCK rows),
    cast to Y's dtype."""
    pid = tl.program_id(0)
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    acc = tl.zeros([BLOCK], tl.float32)
    for s in tl.static_range(SPLIT):
        acc += tl.load(P + s * N + cols, mask=mask, other=0.0)
    acc = split_epilogue(acc, cols, mask, X, K, eps, RES, SSI, NPARTS, NWN, XN, SSO, pid, PRO, HAS_RES, HANDOFF)
    tl.store(Y + cols, acc.to(Y.dtype.element_ty), mask=mask)


def fp8_shape(q: torch.Tensor, scales: torch.Tensor) -> tuple[int, int]:
    """(N, K) of FP8 weights q float8_e4m3fn [N, K] with float32 scales [N]; ValueError if not."""
    if q.dim() != 2 or q.dtype != torch.float8_e4m3fn or scales.dtype != torch.float32 or scales.shape != (q.shape[0],):
        raise ValueError(f"FP8 weights must be float8_e4m3fn [N, K] with float32 scales [N]; got {q.dtype} "
                         f"{tuple(q.shape)} and {scales.dtype} {tuple(scales.shape)}")
    if not (q.is_contiguous() and scales.is_contiguous()):
        raise ValueError("FP8 weights and scales must be contiguous")
    return q.shape[0], q.shape[1]


def choose_split(n: int, k: int, device: torch.device, block_n: int, block_k: int) -> int:
    """K chunks per row block: enough programs for 2 per SM where N alone gives fewer,
    each chunk at least one BLOCK_K step. 1 off CUDA (the interpreter: no SMs to fill)."""
    if device.type != "cuda":
        return 1
    blocks, target = triton.cdiv(n, block_n), 2 * sm_count(device)
    if blocks >= target:
        return 1
    return max(1, min(MAX_SPLIT, triton.cdiv(target, blocks), triton.cdiv(k, block_k)))


def gemv_fp8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None,
             split_k: int | None = None, block_n: int = 8, block_k: int = 512, num_warps: int = 4,
             stages: int = 4, fusion: Fusion = NO_FUSION, one_launch: bool = False) -> torch.Tensor:
    """x [1, K] (bf16, fp16 or fp32), q float8_e4m3fn [N, K], scales float32 [N] -> y [1, N] in out's
    dtype (default x's). ``split_k``: K chunks per row block (None: choose_split). ``fusion``: the norm,
    SiLU*up and residual folded in (kernels/gemv_fusion.py; x [1, 2K] for SILU_MUL). ``one_launch``: the
    last part of a row tile sums the split-K partials (no second kernel)."""
    n, k = fp8_shape(q, scales)
    fusion.check(x, n, k)
    if q.device != x.device or scales.device != x.device:
        raise ValueError("FP8 weights and scales must be on x's device")
    out = torch.empty((1, n), dtype=x.dtype, device=x.device) if out is None else out
    split = choose_split(n, k, x.device, block_n, block_k) if split_k is None else split_k
    # whole BLOCK_K steps per chunk; the last chunk may be shorter, and with rounding fewer chunks may suffice
    k_chunk = triton.cdiv(triton.cdiv(k, block_k), split) * block_k
    split = triton.cdiv(k, k_chunk)
    tiles = triton.cdiv(n, block_n)
    part, cnt = split_buffers(x.device, split, 1, n, tiles)
    args, flags = fusion.args(x, out), fusion.flags()
    _fp8_gemv_kernel[(tiles, split)](
        x, q, scales, out, part, cnt, n, k, k_chunk, *args,
        SPLIT=split, BLOCK_N=block_n, BLOCK_K=block_k, STAGES=stages, **flags, ONE_LAUNCH=one_launch, num_warps=num_warps,
    )
    if split > 1 and not one_launch:
        tiles = triton.cdiv(n, SUM_BLOCK)  # the sum kernel's programs store y (and a handoff's parts)
        _sum_splits_kernel[(tiles,)](part, out, x, n, k, *args, SPLIT=split, BLOCK=SUM_BLOCK, **flags, num_warps=4)
    fusion.stored(tiles)
    return out
