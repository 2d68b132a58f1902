"""Batched GEMM over FP8 (e4m3) weights, weight-only, in Triton: y [M, N] = x [M, K] @ W^T.

The fallback of the batched FP8 path (model/fp8_linear.py). The first choice for
M > 1 is torch._scaled_mm (kernels/fp8_scaled_mm.py: cuBLAS/CUTLASS FP8 tensor
cores over per-row quantized activations); this kernel runs where that cannot:
activations in fp16 or float32 (row-wise _scaled_mm writes bf16 only on every
device), K or N not a multiple of 16, a torch or device whose _scaled_mm refuses
row-wise scales, and the CPU interpreter (tests). It changes no activation: x
stays in its dtype, so its numbers are the GEMV's (kernels/fp8_gemv.py) up to
summation order, and it is the exact reference of the weight format.

Program (pid_m, pid_n) owns y[BLOCK_M rows, BLOCK_N cols], as kernels/quant_gemm.py's
int8 path: each K step loads the tile of W^T [BLOCK_K, BLOCK_N] (column n of the
tile is row n of q, BLOCK_K contiguous bytes), converts e4m3 to x's dtype in
registers (exact: e4m3 fits bf16, fp16 and float32) and feeds tl.dot with a
float32 accumulator; the per-column scale multiplies the float32 sums at the end.
float32 x uses tl.dot's "ieee" precision; under the CPU interpreter every dot runs
in float32 (its bf16 tl.dot is wrong: kernels/decode_attention.py mma_dtype),
exact for these operands. Shapes alone fix the grid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.triton_common import dot_precision, mma_dtype
from swiftinfer_core.kernels.fp8_gemv import fp8_shape


@triton.jit
def _fp8_gemm_kernel(
    X, Q, S, Y, M, N, K, stride_xm, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    MMA: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask, nmask = rm < M, rn < N
    offs = tl.arange(0, BLOCK_K)
    x_rows = X + rm.to(tl.int64)[:, None] * stride_xm
    q_cols = Q + rn.to(tl.int64)[None, :] * K  # W^T tile: row n of q is column n
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        kk = k0 + offs
        kmask = kk < K
        x = tl.load(x_rows + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0).to(MMA)  # [BLOCK_M, BLOCK_K]
        w = tl.load(q_cols + kk[:, None], mask=kmask[:, None] & nmask[None, :], other=0.0)  # [BLOCK_K, BLOCK_N] e4m3
        acc = tl.dot(x, w.to(tl.float32).to(MMA), acc, input_precision=PREC)
    acc = acc * tl.load(S + rn, mask=nmask, other=0.0)[None, :]
    y_ptr = Y + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
    tl.store(y_ptr, acc.to(Y.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def _block_m(m: int) -> int:
    """Rows per tile: tl.dot needs >= 16; more rows reuse each weight tile more."""
    return min(64, max(16, triton.next_power_of_2(m)))


def gemm_fp8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None,
             block_n: int = 64, block_k: int = 64, num_warps: int = 4, stages: int = 3) -> torch.Tensor:
    """x [M, K] (bf16, fp16 or fp32; rows contiguous), q float8_e4m3fn [N, K], scales float32 [N]
    -> y [M, N] in x's dtype."""
    n, k = fp8_shape(q, scales)
    if x.dim() != 2 or x.shape[1] != k or x.stride(1) != 1:
        raise ValueError(f"x must be [M, {k}] with contiguous rows, got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"activations must be float32, bfloat16 or float16, got {x.dtype}")
    if q.device != x.device or scales.device != x.device:
        raise ValueError("FP8 weights and scales must be on x's device")
    m = x.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device) if out is None else out
    bm = _block_m(m)
    _fp8_gemm_kernel[(triton.cdiv(m, bm), triton.cdiv(n, block_n))](
        x, q, scales, out, m, n, k, x.stride(0), out.stride(0),
        BLOCK_M=bm, BLOCK_N=block_n, BLOCK_K=block_k,
        MMA=mma_dtype(x.dtype), PREC=dot_precision(x.dtype), STAGES=stages, num_warps=num_warps,
    )
    return out
