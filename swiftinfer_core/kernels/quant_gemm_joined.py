"""The int4 and int8 GEMMs with one dequantised operand per K step (quant_configs key ``joined``).

kernels/quant_gemm.py multiplies a K step of BLOCK_K columns as 8 dots, one per nibble
position, each of K = BLOCK_K / 8 against x^T gathered in 4-column pieces (the packing is
nibble-planar: nibble i of word j of a 32-column block is column 4i + j, model/quant.py).
Here the 8 nibble tiles a_0..a_7 [BLOCK_N, W] (W = BLOCK_K / 8 words) are joined into one
[BLOCK_N, BLOCK_K] operand, and x is permuted once per call into the joined order, so each
step is one contiguous x^T tile (software-pipelined like any tile load) and one dot of
K = BLOCK_K.

Joined order. join(join(join(a0, a1), join(a2, a3)), join(join(a4, a5), join(a6, a7))) is
[BLOCK_N, W, 2, 2, 2] with [c, m, k, h] = a_(4h + 2k + m), each join adding a trailing
dimension held in one thread's registers; reshaped, operand column p = 8c + r (r = 4m + 2k + h)
is nibble i = 4(r & 1) + (r & 2) + (r >> 2) of word c, the weight of input column
(b0 + c // 4) * 32 + 4i + c % 4 for the step starting at packed block b0 (:func:`column_of`).
So x_perm[:, 32 b0 + p] = x[:, that column]; steps start at multiples of BLOCK_K / 32 blocks,
which makes the permutation the same in every BLOCK_K chunk (:func:`permutation`). Positions
whose column is past K (the packing's padding) read any column and are masked in the kernel.

int8 the same way: its 4 byte tiles (byte t of word j of a 16-column block is column 4t + j)
joined as join(join(b0, b1), join(b2, b3)), so operand column p = 4c + r is byte
t = 2(r & 1) + (r >> 1) of word c (:func:`column_of_int8`), and the row scale multiplies the end.

Scales as in quant_gemm.py: a step inside one group (symmetric) multiplies the float32 partial
by the row's scale; a step spanning groups scales each weight in the operand; zero points give
q * S + (min + 8 S) per weight. Cost: one index_select over x [M, K] per call, which next to
the weight's bytes is small from a few rows on (the path is for M > 1; the GEMV takes M = 1).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.quant_common import int4_nibble, int4_sources, int8_byte, int8_sources, splitk_store


@triton.jit
def column_of(p, b0):
    """Input column of joined operand column ``p`` (int32 tensor, within a step) of the step at packed block b0."""
    r = p % 8
    i = 4 * (r & 1) + (r & 2) + (r >> 2)
    c = p // 8
    return (b0 + c // 4) * 32 + 4 * i + c % 4


@triton.jit
def column_of_int8(p, b0):
    """Input column of joined int8 operand column ``p`` of the step at 16-byte block b0."""
    r = p % 4
    c = p // 4
    return (b0 + c // 4) * 16 + 4 * (2 * (r & 1) + (r >> 1)) + c % 4


@triton.jit
def _join8(a0, a1, a2, a3, a4, a5, a6, a7, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Eight [BLOCK_N, BLOCK_K / 8] nibble tiles -> the joined [BLOCK_N, BLOCK_K] operand."""
    lo = tl.join(tl.join(a0, a1), tl.join(a2, a3))
    hi = tl.join(tl.join(a4, a5), tl.join(a6, a7))
    return tl.join(lo, hi).reshape(BLOCK_N, BLOCK_K)


@triton.jit
def _planes(u, u_hi, s, z, SCALED: tl.constexpr, ZP: tl.constexpr):
    """The 8 nibble tiles of words (u, u_hi): q, q * s, or q * s + z (float32)."""
    a0 = int4_nibble(u, u_hi, 0)
    a1 = int4_nibble(u, u_hi, 1)
    a2 = int4_nibble(u, u_hi, 2)
    a3 = int4_nibble(u, u_hi, 3)
    a4 = int4_nibble(u, u_hi, 4)
    a5 = int4_nibble(u, u_hi, 5)
    a6 = int4_nibble(u, u_hi, 6)
    a7 = int4_nibble(u, u_hi, 7)
    if ZP:
        return (tl.fma(a0, s, z), tl.fma(a1, s, z), tl.fma(a2, s, z), tl.fma(a3, s, z),
                tl.fma(a4, s, z), tl.fma(a5, s, z), tl.fma(a6, s, z), tl.fma(a7, s, z))
    elif SCALED:
        return a0 * s, a1 * s, a2 * s, a3 * s, a4 * s, a5 * s, a6 * s, a7 * s
    else:
        return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _gemm_int4_joined_kernel(
    XP, Q, S, MN, Y, WS, CNT, M, N, K, KB, NG, stride_xm, stride_ym, STEPS, SPLIT,
    BPG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    MMA: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr, ZP: tl.constexpr,
):
    NBK: tl.constexpr = BLOCK_K // 32  # packed blocks per step
    W: tl.constexpr = 4 * NBK  # words per row per step
    ONE_GROUP: tl.constexpr = BPG % NBK == 0  # every step lies inside one group
    tile = tl.program_id(0)
    pid_k = tl.program_id(1)
    tiles_m = tl.cdiv(M, BLOCK_M)
    rm = (tile % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)  # n-major tiles: a weight tile's programs run together
    rn = (tile // tiles_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask, nmask = rm < M, rn < N
    n64 = rn.to(tl.int64)
    x_cols = XP + rm.to(tl.int64)[None, :] * stride_xm  # x_perm^T
    q_rows = Q + n64[:, None] * (KB * 4)
    cw = tl.arange(0, W)
    p = tl.arange(0, BLOCK_K)
    b_start = pid_k * STEPS * NBK
    b_end = tl.minimum(b_start + STEPS * NBK, KB)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for b0 in tl.range(b_start, b_end, NBK, num_stages=STAGES):
        bmask = (b0 + cw // 4) < b_end
        w = tl.load(q_rows + b0 * 4 + cw[None, :], mask=nmask[:, None] & bmask[None, :], other=0)  # [BLOCK_N, W] int32
        kmask = ((b0 + p // 32) < b_end) & (column_of(p, b0) < K)
        xt = tl.load(x_cols + (b0 * 32 + p)[:, None], mask=kmask[:, None] & mmask[None, :], other=0.0)  # [BLOCK_K, BLOCK_M]
        u, u_hi = int4_sources(w)
        if ONE_GROUP:
            g = n64 * NG + b0 // BPG  # [BLOCK_N]: the step's group
            s = tl.load(S + g, mask=nmask, other=0.0).to(tl.float32)
            if ZP:
                z = tl.fma(s, 8.0, tl.load(MN + g, mask=nmask, other=0.0).to(tl.float32))[:, None]  # min + 8 scale
                a0, a1, a2, a3, a4, a5, a6, a7 = _planes(u, u_hi, s[:, None], z, True, True)
                a = _join8(a0, a1, a2, a3, a4, a5, a6, a7, BLOCK_N, BLOCK_K).to(MMA)
                acc = tl.dot(a, xt.to(MMA), acc, input_precision=PREC)
            else:  # q exact in the 16-bit operand; the scale on the float32 partial
                a0, a1, a2, a3, a4, a5, a6, a7 = _planes(u, u_hi, 0.0, 0.0, False, False)
                a = _join8(a0, a1, a2, a3, a4, a5, a6, a7, BLOCK_N, BLOCK_K).to(MMA)
                acc += tl.dot(a, xt.to(MMA), input_precision=PREC) * s[:, None]
        else:  # the step spans groups: each word's group scale (and min) per weight
            g = n64[:, None] * NG + ((b0 + cw // 4) // BPG)[None, :]  # [BLOCK_N, W]
            gmask = nmask[:, None] & bmask[None, :]
            s = tl.load(S + g, mask=gmask, other=0.0).to(tl.float32)
            z = s
            if ZP:
                z = tl.fma(s, 8.0, tl.load(MN + g, mask=gmask, other=0.0).to(tl.float32))
            a0, a1, a2, a3, a4, a5, a6, a7 = _planes(u, u_hi, s, z, True, ZP)
            a = _join8(a0, a1, a2, a3, a4, a5, a6, a7, BLOCK_N, BLOCK_K).to(MMA)
            acc = tl.dot(a, xt.to(MMA), acc, input_precision=PREC)
    splitk_store(acc, Y, rm[None, :] * stride_ym + rn[:, None], WS, rm[None, :] * N + rn[:, None],
                 mmask[None, :] & nmask[:, None], CNT, tile, pid_k, SPLIT, M * N)


@triton.jit
def _gemm_int8_joined_kernel(
    XP, Q, S, Y, WS, CNT, M, N, K, KB, stride_xm, stride_ym, STEPS, SPLIT,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    MMA: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr,
):
    NBK: tl.constexpr = BLOCK_K // 16  # 16-byte blocks per step
    W: tl.constexpr = 4 * NBK  # words per row per step
    tile = tl.program_id(0)
    pid_k = tl.program_id(1)
    tiles_m = tl.cdiv(M, BLOCK_M)
    rm = (tile % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = (tile // tiles_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask, nmask = rm < M, rn < N
    x_cols = XP + rm.to(tl.int64)[None, :] * stride_xm
    q_rows = Q + rn.to(tl.int64)[:, None] * (KB * 4)
    cw = tl.arange(0, W)
    p = tl.arange(0, BLOCK_K)
    b_start = pid_k * STEPS * NBK
    b_end = tl.minimum(b_start + STEPS * NBK, KB)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for b0 in tl.range(b_start, b_end, NBK, num_stages=STAGES):
        bmask = (b0 + cw // 4) < b_end
        w = tl.load(q_rows + b0 * 4 + cw[None, :], mask=nmask[:, None] & bmask[None, :], other=0)  # [BLOCK_N, W] int32
        kmask = ((b0 + p // 16) < b_end) & (column_of_int8(p, b0) < K)
        xt = tl.load(x_cols + (b0 * 16 + p)[:, None], mask=kmask[:, None] & mmask[None, :], other=0.0)  # [BLOCK_K, BLOCK_M]
        u, u_hi = int8_sources(w)
        lo = tl.join(int8_byte(u, u_hi, 0), int8_byte(u, u_hi, 1))
        hi = tl.join(int8_byte(u, u_hi, 2), int8_byte(u, u_hi, 3))
        a = tl.join(lo, hi).reshape(BLOCK_N, BLOCK_K).to(MMA)  # q exact in the 16-bit operand
        acc = tl.dot(a, xt.to(MMA), acc, input_precision=PREC)
    acc = acc * tl.load(S + rn, mask=nmask, other=0.0).to(tl.float32)[:, None]
    splitk_store(acc, Y, rm[None, :] * stride_ym + rn[:, None], WS, rm[None, :] * N + rn[:, None],
                 mmask[None, :] & nmask[:, None], CNT, tile, pid_k, SPLIT, M * N)


def _column_of(p: torch.Tensor, int8: bool = False) -> torch.Tensor:
    """column_of (int8: column_of_int8) for b0 = 0, on the host (p int64)."""
    if int8:
        r, c = p % 4, p // 4
        return (c // 4) * 16 + 4 * (2 * (r & 1) + (r >> 1)) + c % 4
    r, c = p % 8, p // 8
    return (c // 4) * 32 + 4 * (4 * (r & 1) + (r & 2) + (r >> 2)) + c % 4


def permutation(k: int, kb: int, block_k: int, device: torch.device, int8: bool = False) -> torch.Tensor:
    """Indices [ceil(kb / (block_k / block)) * block_k] into x's K columns, for kb packed blocks of
    32 columns (int4) or 16 (int8): x_perm = x.index_select(1, perm). Columns past K (padding)
    point at column K - 1; the kernel masks them. Cached, except inside a CUDA-graph capture,
    where the kernels that build it only run at replay: there it is built in the graph."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _permutation.__wrapped__(k, kb, block_k, device, int8)
    return _permutation(k, kb, block_k, device, int8)


@functools.lru_cache(maxsize=64)
def _permutation(k: int, kb: int, block_k: int, device: torch.device, int8: bool) -> torch.Tensor:
    steps = triton.cdiv(kb, block_k // (16 if int8 else 32))
    p = torch.arange(block_k, dtype=torch.int64, device=device)  # built on the device: no copy inside a graph capture
    cols = torch.arange(steps, dtype=torch.int64, device=device)[:, None] * block_k + _column_of(p, int8)[None, :]
    return cols.reshape(-1).clamp(max=k - 1)


def launch_int8(x: torch.Tensor, q32: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, ws: torch.Tensor,
                cnt: torch.Tensor, grid: tuple[int, int], per: int, split: int, kb: int, cfg: dict, mma, prec: str) -> None:
    """Permute x and run the int8 kernel (arguments as kernels/quant_gemm.gemm_int8 prepares them)."""
    m, k = x.shape
    xp = x.index_select(1, permutation(k, kb, cfg["block_k"], x.device, int8=True))
    _gemm_int8_joined_kernel[grid](
        xp, q32, scales, out, ws, cnt, m, out.shape[1], k, kb, xp.stride(0), out.stride(0), per, split,
        BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"], MMA=mma, PREC=prec,
        STAGES=cfg["stages"], num_warps=cfg["warps"],
    )


def launch(x: torch.Tensor, q32: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, out: torch.Tensor,
           ws: torch.Tensor, cnt: torch.Tensor, grid: tuple[int, int], per: int, split: int, kb: int, ng: int,
           group: int, cfg: dict, mma, prec: str) -> None:
    """Permute x and run the int4 kernel (arguments as kernels/quant_gemm.gemm_int4 prepares them)."""
    m, k = x.shape
    xp = x.index_select(1, permutation(k, kb, cfg["block_k"], x.device))
    _gemm_int4_joined_kernel[grid](
        xp, q32, scales, scales if mins is None else mins, out, ws, cnt, m, out.shape[1], k, kb, ng, xp.stride(0),
        out.stride(0), per, split, BPG=group // 32, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"],
        BLOCK_K=cfg["block_k"], MMA=mma, PREC=prec, STAGES=cfg["stages"], ZP=mins is not None,
        num_warps=cfg["warps"],
    )
