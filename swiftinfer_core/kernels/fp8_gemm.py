"""Batched GEMM over FP8 (e4m3) weights, weight-only, in Triton: y [M, N] = x [M, K] @ W^T.

x stays in its dtype: the numbers are the GEMV's (kernels/fp8_gemv.py) up to summation
order, the exact reference of the weight format. model/fp8_linear.py runs it for batches
where torch._scaled_mm (e4m3 activations) is not wanted or cannot run: fp16/float32
activations, K or N not a multiple of 16, ``fp8_activations: false``, the CPU interpreter.

The layout is kernels/quant_gemm.py's int8 GEMM with plain e4m3 bytes in place of packed
words. Program (tile, part) owns the transposed output tile y^T [BLOCK_N, BLOCK_M]: the
weight tile [BLOCK_N, BLOCK_K] (BLOCK_K contiguous bytes per row) is tl.dot's first operand,
converted e4m3 -> x's dtype in registers (exact: e4m3 fits bf16, fp16 and float32), x^T
[BLOCK_K, BLOCK_M] the second, so a decode batch of 8-32 rows is the narrow side of the
MMA. Split-K (kernels/quant_common.py) cuts K until the programs fill the SMs: at a
batch's few output tiles the earlier one-tile-per-program kernel left most SMs idle (0.58-0.65x
of bf16's time per decode step at 8-32 rows, H200, bench/results/fp8_decode.json "fp8 triton").
The per-row scale multiplies each part's float32 sums. Configs: kernels/quant_configs.py's
int8 table (the same byte per weight; the "fp8" format falls back to it). Under the CPU
interpreter every dot runs in float32 (its bf16 tl.dot is wrong: kernels/decode_attention.py
mma_dtype), exact for these operands. Shapes alone fix the grid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.fp8_gemv import fp8_shape
from swiftinfer_core.kernels.quant_common import gemm_prepare, gemm_split, gemm_tile, splitk_store
from swiftinfer_core.kernels.triton_common import dot_precision, mma_dtype


@triton.jit
def _fp8_gemm_kernel(
    X, Q, S, Y, WS, CNT, M, N, K, stride_xm, stride_ym, STEPS, SPLIT,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    MMA: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr,
):
    tile, pid_k, rm, rn = gemm_tile(M, N, BLOCK_M, BLOCK_N)
    mmask, nmask = rm < M, rn < N
    x_cols = X + rm.to(tl.int64)[None, :] * stride_xm  # x^T: column m is x's row m
    q_rows = Q + rn.to(tl.int64)[:, None] * K
    offs = tl.arange(0, BLOCK_K)
    k_start = pid_k * STEPS * BLOCK_K
    k_end = tl.minimum(k_start + STEPS * BLOCK_K, K)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for k0 in tl.range(k_start, k_end, BLOCK_K, num_stages=STAGES):
        kk = k0 + offs
        kmask = kk < k_end
        w = tl.load(q_rows + kk[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)  # [BLOCK_N, BLOCK_K] e4m3
        xt = tl.load(x_cols + kk[:, None], mask=kmask[:, None] & mmask[None, :], other=0.0)  # [BLOCK_K, BLOCK_M]
        acc = tl.dot(w.to(tl.float32).to(MMA), xt.to(MMA), acc, input_precision=PREC)
    acc = acc * tl.load(S + rn, mask=nmask, other=0.0)[:, None]
    splitk_store(acc, Y, rm[None, :] * stride_ym + rn[:, None], WS, rm[None, :] * N + rn[:, None],
                 mmask[None, :] & nmask[:, None], CNT, tile, pid_k, SPLIT, M * N)


def gemm_fp8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None,
             cfg: dict | None = None) -> torch.Tensor:
    """x [M, K] (bf16, fp16 or fp32; rows contiguous), q float8_e4m3fn [N, K], scales float32 [N]
    -> y [M, N] in x's dtype. cfg: a kernels/quant_configs.py GEMM config (block_m, block_n,
    block_k (a multiple of 16), warps, stages, waves); default: the table's for this M and shape."""
    n, k = fp8_shape(q, scales)
    m, out, cfg = gemm_prepare(x, q, scales, k, out, n, "fp8", cfg)
    if cfg["block_k"] % 16:
        raise ValueError(f"fp8 GEMM block_k must be a multiple of 16, got {cfg['block_k']}")
    grid, split, per, ws, cnt = gemm_split(x, m, n, triton.cdiv(k, cfg["block_k"]), cfg)
    _fp8_gemm_kernel[grid](
        x, q, scales, out, ws, cnt, m, n, k, x.stride(0), out.stride(0), per, split,
        BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"],
        MMA=mma_dtype(x.dtype), PREC=dot_precision(x.dtype), STAGES=cfg["stages"], num_warps=cfg["warps"],
    )
    return out
