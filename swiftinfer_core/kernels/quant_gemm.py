"""Batched GEMM over weight-only quantized weights: y [M, N] = x [M, K] @ W^T, for
M of 2 to a few hundred rows (decode batches, prefill chunks).

Same formats as kernels/quant_gemv.py (model/quant.py packs them). The product is
computed transposed, y^T tile [BLOCK_N, BLOCK_M] = W tile [BLOCK_N, BLOCK_K] @
x^T tile [BLOCK_K, BLOCK_M]: the dequantised weights are tl.dot's first operand,
which the tensor-core MMAs (mma.sync, and Hopper's wgmma) take straight from
registers, so a weight tile goes global -> registers -> dequantise -> MMA without
a trip through shared memory; x^T, the small operand, is the one staged in shared
memory (and software-pipelined). The batch is the MMA's N side, so BLOCK_M can
follow the batch (16..128) and a weight tile is read once per BLOCK_M rows.

  int8  the tile is BLOCK_K / 4 int32 words per row; byte position t of every
        word is the column set {16 b + 4 t + j}: 4 dots of K = BLOCK_K / 4, each
        A_t = q_t exactly in x's dtype (|q| <= 127 fits bf16/fp16) against its
        gather of x^T; at the end acc *= S[n] (float32, per row of W)
  int4  the tile is BLOCK_K / 8 int32 words per row; nibble position i of every
        word is the column set {32 b + 4 i + j}: 8 dots of K = BLOCK_K / 8 each,
        A_i = q_i against the matching gather of x^T (4-column contiguous pieces).
        When every step lies inside one group (G a multiple of BLOCK_K; G = 128),
        A_i = q_i exactly and the 8 dots' float32 sum is multiplied by the
        step's scale per row; else A_i = q_i * S[n, group] in float32, rounded
        to x's dtype (bf16: <= 2^-9 relative per weight, of the order of y's own
        rounding; fp16: exact for ordinary scales; float32 "ieee" dots: exact).
        With zero points (ZP; MN float16 [N, Kp/G], w = nibble S + MN) every group
        size takes the dequantising branch: A_i = fma(q_i, S, Z) with Z = MN + 8 S
        (q = nibble - 8 as decoded for the symmetric format), one fma per weight
        where the symmetric group-spanning branch has a multiply; at G >= BLOCK_K
        the step's S and Z are one per row, broadcast along the row. (The exact
        alternative, S (q . x) + Z sum(x), would need sum(x) over each step's
        columns per batch row: a cross-thread reduction of the staged x^T tile.)

The dequantisation chain (and, or, bitcast, fma, cast) has a single tensor
operand, so Triton loads the packed tile straight into the MMA operand layout
and dequantises there: no shared-memory round trip per nibble (a per-element
scale operand, the G < BLOCK_K path, costs one).
Split-K (kernels/quant_common.py) covers small M x N at long K. Under the CPU
interpreter every dot runs in float32 (its bf16 tl.dot is wrong, see
kernels/decode_attention.py mma_dtype). Shapes alone fix the grid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels import quant_configs, quant_dequant
from swiftinfer_core.kernels.triton_common import dot_precision, mma_dtype
from swiftinfer_core.kernels.quant_common import (
    check_operands,
    gemm_prepare,
    gemm_split,
    gemm_tile,
    int4_nibble,
    int4_shape,
    int4_sources,
    int4_table,
    int8_byte,
    int8_shape,
    int8_sources,
    splitk_store,
)


@triton.jit
def _gemm_int8_kernel(
    X, Q, S, Y, WS, CNT, M, N, K, KB, stride_xm, stride_ym, STEPS, SPLIT,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    MMA: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr,
):
    NBK: tl.constexpr = BLOCK_K // 16  # 16-byte blocks per step
    W: tl.constexpr = 4 * NBK  # words per row per step = each byte dot's K
    tile, pid_k, rm, rn = gemm_tile(M, N, BLOCK_M, BLOCK_N)
    mmask, nmask = rm < M, rn < N
    x_cols = X + rm.to(tl.int64)[None, :] * stride_xm  # x^T: column m is x's row m
    q_rows = Q + rn.to(tl.int64)[:, None] * (KB * 4)
    cw = tl.arange(0, W)
    b_start = pid_k * STEPS * NBK
    b_end = tl.minimum(b_start + STEPS * NBK, KB)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for b0 in tl.range(b_start, b_end, NBK, num_stages=STAGES):
        blk = b0 + cw // 4  # [W] 16-byte block of each word
        bmask = blk < b_end
        w = tl.load(q_rows + b0 * 4 + cw[None, :], mask=nmask[:, None] & bmask[None, :], other=0)  # [BLOCK_N, W] int32
        u, u_hi = int8_sources(w)
        for t in tl.static_range(4):
            kx = blk * 16 + 4 * t + cw % 4  # [W] columns of byte t
            xt = tl.load(x_cols + kx[:, None], mask=(bmask & (kx < K))[:, None] & mmask[None, :], other=0.0)  # [W, BLOCK_M]
            acc = tl.dot(int8_byte(u, u_hi, t).to(MMA), xt.to(MMA), acc, input_precision=PREC)
    acc = acc * tl.load(S + rn, mask=nmask, other=0.0).to(tl.float32)[:, None]
    splitk_store(acc, Y, rm[None, :] * stride_ym + rn[:, None], WS, rm[None, :] * N + rn[:, None],
                 mmask[None, :] & nmask[:, None], CNT, tile, pid_k, SPLIT, M * N)


@triton.jit
def _gemm_int4_kernel(
    X, Q, S, MN, Y, WS, CNT, M, N, K, KB, NG, stride_xm, stride_ym, STEPS, SPLIT,
    BPG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    MMA: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr, ZP: tl.constexpr,
):
    NBK: tl.constexpr = BLOCK_K // 32  # packed blocks per step
    W: tl.constexpr = 4 * NBK  # words per row per step = each nibble dot's K
    ONE_GROUP: tl.constexpr = BPG % NBK == 0  # every step lies inside one group (steps start at multiples of NBK)
    tile, pid_k, rm, rn = gemm_tile(M, N, BLOCK_M, BLOCK_N)
    mmask, nmask = rm < M, rn < N
    n64 = rn.to(tl.int64)
    x_cols = X + rm.to(tl.int64)[None, :] * stride_xm
    q_rows = Q + n64[:, None] * (KB * 4)
    cw = tl.arange(0, W)
    b_start = pid_k * STEPS * NBK
    b_end = tl.minimum(b_start + STEPS * NBK, KB)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for b0 in tl.range(b_start, b_end, NBK, num_stages=STAGES):
        blk = b0 + cw // 4  # [W] packed block of each word
        bmask = blk < b_end
        w = tl.load(q_rows + b0 * 4 + cw[None, :], mask=nmask[:, None] & bmask[None, :], other=0)  # [BLOCK_N, W] int32
        u, u_hi = int4_sources(w)
        if ZP:
            # w = q * S + Z per weight, dequantised into the 16-bit operand
            if ONE_GROUP:
                g = n64[:, None] * NG + b0 // BPG  # [BLOCK_N, 1]: the step's group
                gmask = nmask[:, None]
            else:
                g = n64[:, None] * NG + (blk // BPG)[None, :]  # [BLOCK_N, W]
                gmask = nmask[:, None] & bmask[None, :]
            s = tl.load(S + g, mask=gmask, other=0.0).to(tl.float32)
            z = tl.fma(s, 8.0, tl.load(MN + g, mask=gmask, other=0.0).to(tl.float32))  # min + 8 scale
            for i in tl.static_range(8):
                kx = blk * 32 + 4 * i + cw % 4
                xt = tl.load(x_cols + kx[:, None], mask=(bmask & (kx < K))[:, None] & mmask[None, :], other=0.0)
                a = tl.fma(int4_nibble(u, u_hi, i), s, z).to(MMA)  # [BLOCK_N, W]
                acc = tl.dot(a, xt.to(MMA), acc, input_precision=PREC)
        elif ONE_GROUP:
            # exact: q is exact in the 16-bit operand, the step's one scale per row
            # multiplies the float32 partial product
            part = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
            for i in tl.static_range(8):
                kx = blk * 32 + 4 * i + cw % 4  # [W] columns of nibble i
                xt = tl.load(x_cols + kx[:, None], mask=(bmask & (kx < K))[:, None] & mmask[None, :], other=0.0)
                part = tl.dot(int4_nibble(u, u_hi, i).to(MMA), xt.to(MMA), part, input_precision=PREC)
            s = tl.load(S + n64 * NG + b0 // BPG, mask=nmask, other=0.0).to(tl.float32)  # [BLOCK_N]
            acc += part * s[:, None]
        else:
            # the step spans groups: each weight carries its scale into the 16-bit operand
            s = tl.load(S + n64[:, None] * NG + (blk // BPG)[None, :], mask=nmask[:, None] & bmask[None, :], other=0.0)
            s = s.to(tl.float32)
            for i in tl.static_range(8):
                kx = blk * 32 + 4 * i + cw % 4
                xt = tl.load(x_cols + kx[:, None], mask=(bmask & (kx < K))[:, None] & mmask[None, :], other=0.0)
                a = (int4_nibble(u, u_hi, i) * s).to(MMA)  # [BLOCK_N, W]
                acc = tl.dot(a, xt.to(MMA), acc, input_precision=PREC)
    splitk_store(acc, Y, rm[None, :] * stride_ym + rn[:, None], WS, rm[None, :] * N + rn[:, None],
                 mmask[None, :] & nmask[:, None], CNT, tile, pid_k, SPLIT, M * N)


def gemm_int8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None,
              cfg: dict | None = None) -> torch.Tensor:
    """x [M, K], q int8 [N, K16], scales [N] -> y [M, N] in x's dtype. cfg: a
    kernels/quant_configs.py config (default: the table's for this M and shape)."""
    k = x.shape[-1]
    n = int8_shape(q, scales, k)
    m, out, cfg = gemm_prepare(x, q, scales, k, out, n, "int8", cfg)
    if mib := quant_configs.dequant_mib(cfg):
        return quant_dequant.matmul("int8", x, q.view(torch.int32), scales, None, k, 0, out, mib)
    if cfg["block_k"] % 64:
        raise ValueError(f"int8 GEMM block_k must be a multiple of 64 (4 dots of >= 16), got {cfg['block_k']}")
    kb = q.shape[1] // 16
    grid, split, per, ws, cnt = gemm_split(x, m, n, triton.cdiv(kb, cfg["block_k"] // 16), cfg)
    _gemm_int8_kernel[grid](
        x, q.view(torch.int32), scales, out, ws, cnt, m, n, k, kb, x.stride(0), out.stride(0), per, split,
        BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"],
        MMA=mma_dtype(x.dtype), PREC=dot_precision(x.dtype), STAGES=cfg["stages"], num_warps=cfg["warps"],
    )
    return out


def gemm_int4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, k: int, group: int,
              out: torch.Tensor | None = None, cfg: dict | None = None, mins: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K], packed uint8 [N, Kp/2], scales [N, Kp/group] -> y [M, N] in x's dtype.
    ``mins`` [N, Kp/group]: the zero-point format (w = nibble * scale + min)."""
    n, ng = int4_shape(packed, scales, k, group, mins)
    zp = mins is not None
    if zp:
        check_operands(x, packed, mins)
    m, out, cfg = gemm_prepare(x, packed, scales, k, out, n, int4_table(zp), cfg)
    if mib := quant_configs.dequant_mib(cfg):
        return quant_dequant.matmul("int4", x, packed.view(torch.int32), scales, mins, k, group, out, mib)
    if cfg["block_k"] % 128:
        raise ValueError(f"int4 GEMM block_k must be a multiple of 128 (8 dots of >= 16), got {cfg['block_k']}")
    kb = ng * group // 32
    grid, split, per, ws, cnt = gemm_split(x, m, n, triton.cdiv(kb, cfg["block_k"] // 32), cfg)
    _gemm_int4_kernel[grid](
        x, packed.view(torch.int32), scales, mins if zp else scales, out, ws, cnt, m, n, k, kb, ng, x.stride(0),
        out.stride(0), per, split, BPG=group // 32, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"],
        BLOCK_K=cfg["block_k"], MMA=mma_dtype(x.dtype), PREC=dot_precision(x.dtype), STAGES=cfg["stages"], ZP=zp,
        num_warps=cfg["warps"],
    )
    return out
