"""Batched GEMM over weight-only quantized weights: y [M, N] = x [M, K] @ W^T, for
M of 2 to a few hundred rows (decode batches, prefill chunks).

Same formats as kernels/quant_gemv.py (model/quant.py packs them). Program
(pid_m, pid_n) owns the tile y[BLOCK_M rows, BLOCK_N cols]: each K step loads
the quantized tile of W^T [BLOCK_K, BLOCK_N], converts the integers to x's dtype
in registers (exact: |q| <= 127 fits bf16's and fp16's 8+ mantissa bits) and
feeds tl.dot with a float32 accumulator; scales are applied to float32 partial
sums, never to the 16-bit operands:

  int8  acc += x_tile @ q_tile; at the end acc *= S[n]                (per column)
  int4  one K step = one group G: part = x_even @ lo + x_odd @ hi    [BLOCK_M, BLOCK_N]
        acc += part * S[n, g]; x_even/x_odd are x's even/odd columns,
        lo/hi the low/high nibbles minus 8 (so no interleave is needed)

float32 activations use tl.dot's "ieee" precision (not TF32), so an fp32 model
stays fp32. Under the CPU interpreter every dot runs in float32 (MMA): its bf16
tl.dot is wrong (kernels/decode_attention.py mma_dtype); the integer operands and
bf16/fp16 x are exact in float32, so the numbers are the GPU's. y is stored in
x's dtype. Shapes alone fix the grid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.decode_attention import dot_precision, mma_dtype
from swiftinfer_core.kernels.quant_gemv import check_operands, int4_shape, int8_shape


@triton.jit
def _qgemm_kernel(
    X, Q, S, Y, M, N, K, NG, stride_xm, stride_ym,
    INT4: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    MMA: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask, nmask = rm < M, rn < N
    x_rows = X + rm.to(tl.int64)[:, None] * stride_xm
    n64 = rn.to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if INT4:
        HALF: tl.constexpr = BLOCK_K // 2
        offs = tl.arange(0, HALF)
        q_cols = Q + n64[None, :] * (NG * HALF)  # W^T tile: packed row n is column n
        for g in tl.range(0, NG, num_stages=STAGES):
            jj = g * HALF + offs  # byte columns of group g
            ke = 2 * jj
            xe = tl.load(x_rows + ke[None, :], mask=mmask[:, None] & (ke < K)[None, :], other=0.0).to(MMA)  # [BLOCK_M, HALF]
            xo = tl.load(x_rows + ke[None, :] + 1, mask=mmask[:, None] & (ke + 1 < K)[None, :], other=0.0).to(MMA)
            b = tl.load(q_cols + jj[:, None], mask=nmask[None, :], other=0)  # [HALF, BLOCK_N] uint8
            # int -> float32 -> MMA: Triton 3.9's interpreter turns int -> bf16 into a bit cast
            lo = ((b & 15).to(tl.float32) - 8.0).to(MMA)
            hi = ((b >> 4).to(tl.float32) - 8.0).to(MMA)
            part = tl.dot(xe, lo, input_precision=PREC)
            part = tl.dot(xo, hi, part, input_precision=PREC)
            s = tl.load(S + n64 * NG + g, mask=nmask, other=0.0).to(tl.float32)  # [BLOCK_N]
            acc += part * s[None, :]
    else:
        offs = tl.arange(0, BLOCK_K)
        q_cols = Q + n64[None, :] * K
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            kk = k0 + offs
            kmask = kk < K
            x = tl.load(x_rows + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0).to(MMA)  # [BLOCK_M, BLOCK_K]
            w = tl.load(q_cols + kk[:, None], mask=kmask[:, None] & nmask[None, :], other=0)  # [BLOCK_K, BLOCK_N] int8
            acc = tl.dot(x, w.to(tl.float32).to(MMA), acc, input_precision=PREC)  # via float32: as above
        acc = acc * tl.load(S + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    y_ptr = Y + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
    tl.store(y_ptr, acc.to(Y.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def _block_m(m: int) -> int:
    """Rows per tile: tl.dot needs >= 16; more rows reuse each weight tile more."""
    return min(64, max(16, triton.next_power_of_2(m)))


def _launch(x, q, scales, out, n, k, ng, int4, block_n, block_k, num_warps, stages):
    if x.dim() != 2 or x.shape[1] != k or x.stride(1) != 1:
        raise ValueError(f"x must be [M, {k}] with contiguous rows, got {tuple(x.shape)}")
    check_operands(x, q, scales)
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"activations must be float32, bfloat16 or float16, got {x.dtype}")
    m = x.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device) if out is None else out
    bm = _block_m(m)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, block_n))
    _qgemm_kernel[grid](
        x, q, scales, out, m, n, k, ng, x.stride(0), out.stride(0),
        INT4=int4, BLOCK_M=bm, BLOCK_N=block_n, BLOCK_K=block_k,
        MMA=mma_dtype(x.dtype), PREC=dot_precision(x.dtype), STAGES=stages, num_warps=num_warps,
    )
    return out


def gemm_int8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None,
              block_n: int = 64, block_k: int = 64, num_warps: int = 4, stages: int = 3) -> torch.Tensor:
    """x [M, K], q int8 [N, K], scales [N] -> y [M, N] in x's dtype."""
    n, k = int8_shape(q, scales)
    return _launch(x, q, scales, out, n, k, 1, False, block_n, block_k, num_warps, stages)


def gemm_int4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, k: int, group: int,
              out: torch.Tensor | None = None, block_n: int = 64, num_warps: int = 4, stages: int = 3) -> torch.Tensor:
    """x [M, K], packed uint8 [N, Kp/2], scales [N, Kp/group] -> y [M, N] in x's dtype."""
    n, ng = int4_shape(packed, scales, k, group)
    return _launch(x, packed, scales, out, n, k, ng, True, block_n, group, num_warps, stages)
