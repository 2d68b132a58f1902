"""Batch-1 decode GEMV over weight-only quantized weights: y [1, N] = x [1, K] @ W^T.

Batch-1 decode reads every weight once per token, so bytes are the time: int8
halves bf16's bytes, int4 quarters them (plus ~1.6% of bf16 scales at group 128).
The weights are dequantised in registers and never written back; the products
accumulate in float32; y is stored in x's dtype (bf16, fp16 or fp32).

Formats (model/quant.py packs them):
  int8  Q int8 [N, K], S [N] (per row)        y = S * sum_k Q[n, k] * x[k]
  int4  Q uint8 [N, Kp/2], S [N, Kp/G]        w = (nibble - 8) * S[n, k // G]
        byte [n, j] holds k = 2j (low nibble) and k = 2j + 1 (high nibble);
        Kp is K rounded up to G, and x beyond K is masked to 0.

Program p computes rows [p*BLOCK_N, (p+1)*BLOCK_N) like kernels/gemv.py, with
acc [BLOCK_N, BLOCK_K] reduced once at the end. For int4 a K step is exactly one
group (BLOCK_K = G): one scale per row per step, applied to the step's
dequantised products; the even and odd inputs are loaded as two strided vectors
(x is a few KB and stays in L1) instead of interleaving the nibbles.
Shapes alone fix the grid, so the launch is CUDA-graph capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _qgemv_kernel(
    X, Q, S, Y, N, K, NG,
    INT4: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    r64 = rows.to(tl.int64)
    if INT4:
        HALF: tl.constexpr = BLOCK_K // 2
        offs = tl.arange(0, HALF)
        acc = tl.zeros([BLOCK_N, HALF], tl.float32)
        q_ptr = Q + r64[:, None] * (NG * HALF)  # packed row stride: Kp / 2 bytes
        for g in tl.range(0, NG, num_stages=STAGES):
            jj = g * HALF + offs  # byte columns of group g
            b = tl.load(q_ptr + jj[None, :], mask=rmask[:, None], other=0)  # [BLOCK_N, HALF] uint8
            lo = (b & 15).to(tl.float32) - 8.0  # k = 2j
            hi = (b >> 4).to(tl.float32) - 8.0  # k = 2j + 1
            ke = 2 * jj
            xe = tl.load(X + ke, mask=ke < K, other=0.0).to(tl.float32)
            xo = tl.load(X + ke + 1, mask=ke + 1 < K, other=0.0).to(tl.float32)
            s = tl.load(S + r64 * NG + g, mask=rmask, other=0.0).to(tl.float32)  # [BLOCK_N]
            acc += (lo * xe[None, :] + hi * xo[None, :]) * s[:, None]
        y = tl.sum(acc, 1)
    else:
        offs = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        q_ptr = Q + r64[:, None] * K
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            kk = k0 + offs
            kmask = kk < K
            w = tl.load(q_ptr + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0)  # [BLOCK_N, BLOCK_K] int8
            x = tl.load(X + kk, mask=kmask, other=0.0).to(tl.float32)
            acc += w.to(tl.float32) * x[None, :]
        # one scale per row: applied once, after the row's sum
        y = tl.sum(acc, 1) * tl.load(S + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rmask)


def int8_shape(q: torch.Tensor, scales: torch.Tensor) -> tuple[int, int]:
    """(N, K) of int8 weights q [N, K] with scales [N] (this kernel's and quant_gemm's); ValueError if not."""
    n, k = q.shape
    if q.dtype != torch.int8 or scales.shape != (n,):
        raise ValueError(f"int8 weights must be int8 [N, K] with scales [N]; got {q.dtype} {tuple(scales.shape)}")
    return n, k


def int4_shape(packed: torch.Tensor, scales: torch.Tensor, k: int, group: int) -> tuple[int, int]:
    """(N, groups) of int4 weights packed uint8 [N, Kp/2] with scales [N, Kp/group]; ValueError if not."""
    n, half = packed.shape
    ng = -(-k // group)
    if packed.dtype != torch.uint8 or 2 * half != ng * group or scales.shape != (n, ng):
        raise ValueError(f"int4 weights for K={k}, group {group}: uint8 [N, {ng * group // 2}] and scales [N, {ng}]; "
                         f"got {packed.dtype} {tuple(packed.shape)} and {tuple(scales.shape)}")
    return n, ng


def check_operands(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> None:
    if not (q.is_contiguous() and scales.is_contiguous()) or q.device != x.device or scales.device != x.device:
        raise ValueError("weights and scales must be contiguous and on x's device")


def _check(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, k: int) -> None:
    if x.dim() != 2 or x.shape[0] != 1 or x.shape[1] != k or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous [1, {k}] tensor, got {tuple(x.shape)}")
    check_operands(x, q, scales)


def gemv_int8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None,
              block_n: int = 16, block_k: int = 256, num_warps: int = 4, stages: int = 3) -> torch.Tensor:
    """x [1, K], q int8 [N, K], scales [N] -> y [1, N] in x's dtype."""
    n, k = int8_shape(q, scales)
    _check(x, q, scales, k)
    out = torch.empty((1, n), dtype=x.dtype, device=x.device) if out is None else out
    _qgemv_kernel[(triton.cdiv(n, block_n),)](
        x, q, scales, out, n, k, 1, INT4=False, BLOCK_N=block_n, BLOCK_K=block_k, STAGES=stages, num_warps=num_warps,
    )
    return out


def gemv_int4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, k: int, group: int,
              out: torch.Tensor | None = None, block_n: int = 16, num_warps: int = 4, stages: int = 3) -> torch.Tensor:
    """x [1, K], packed uint8 [N, Kp/2], scales [N, Kp/group] -> y [1, N] in x's dtype."""
    n, ng = int4_shape(packed, scales, k, group)
    _check(x, packed, scales, k)
    out = torch.empty((1, n), dtype=x.dtype, device=x.device) if out is None else out
    _qgemv_kernel[(triton.cdiv(n, block_n),)](
        x, packed, scales, out, n, k, ng, INT4=True, BLOCK_N=block_n, BLOCK_K=group, STAGES=stages, num_warps=num_warps,
    )
    return out
