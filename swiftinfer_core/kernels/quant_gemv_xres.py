"""Batch-1 int4 GEMV with x held in registers: the "x_resident" kernel of
kernels/quant_gemv.py (config "x_resident": true), same formats and results.

Why. The default GEMV gives each program a block of rows and walks K, so every K
step loads new x pieces: per thread 32 bytes of weights and 64 bytes of x (L1 hit
rate 64% under Nsight Compute, the rest from L2), and its warps wait on those
loads (long scoreboard). Here the loops are the other way round: a program owns
one chunk of K (NB packed blocks = 32 NB columns) and loads x for it once, into
registers (32 float32 per thread and block it owns); it then walks rows, BLOCK_N
at a time, so each loop step loads only weight words (16 bytes per row and block)
and one scale per row and block. The sum over K runs across the lanes that share
a row (warp shuffles); the chunks' partial sums meet in the split-K workspace of
kernels/quant_common.py (one arrival counter per row range, the last arrival adds
the chunks in a fixed order: deterministic).

Layout. A step's words are a [BLOCK_N, NB, 4] int32 tile whose last axis is one
block's 16 contiguous bytes; Triton's blocked layout puts that axis in one thread
(a 16-byte load), NB across the lanes and the rows across warps, so x [NB, 32] is
split over the lanes and repeated per warp. Per weight: one and + one fma to
decode (quant_common.int4_nibble), one fma to multiply; per row and block one
2-byte scale load; no x load in the loop.

Grid: (row ranges, K chunks). A row range is ROWS rows (a multiple of BLOCK_N)
chosen so that the programs number about waves * SMs; waves 0 makes each range
BLOCK_N rows. Shapes alone fix the grid, so the launch is CUDA-graph capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels import quant_gemv_h2 as h2
from swiftinfer_core.kernels.quant_common import (
    int4_nibble,
    prefetch_l2,
    split_buffers,
    splitk_arrive,
    splitk_release,
    splitk_sum,
)
from swiftinfer_core.kernels.triton_common import interpreting, sm_count

ONE_BITS = 0x3F800000  # 1.0f


@triton.jit
def _x_piece(X, kx, K, bmask, I: tl.constexpr):
    """x's columns of nibble I of blocks kx // 32 -> [1, NB, 4] float32, 0 past K."""
    cols = kx + 4 * I
    return tl.load(X + cols, mask=bmask[:, None] & (cols < K), other=0.0).to(tl.float32)[None, :, :]


@triton.jit
def gemv_int4_xres_kernel(
    X, Q, S, MN, Y, WS, CNT, N, K, KB, NG, ROWS, SPLIT, ONE,
    BPG: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr, STAGES: tl.constexpr, ZP: tl.constexpr,
    PREFETCH: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    H2: tl.constexpr, FAST: tl.constexpr, PDL: tl.constexpr, L2PF: tl.constexpr,
):
    if PDL:  # programmatic dependent launch: the next kernel may start its own weight loads now
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    blk = pid_k * NB + tl.arange(0, NB)  # [NB] packed blocks of this K chunk
    bmask = blk < KB
    r_start = pid_n * ROWS
    r_end = tl.minimum(r_start + ROWS, N)
    rows = r_start + tl.arange(0, BLOCK_N)
    # pointers walk down the rows: one 64-bit add per pointer and step, no per-row index math
    q_ptrs = Q + rows.to(tl.int64)[:, None, None] * (KB * 4) + (blk * 4)[None, :, None] + tl.arange(0, 4)[None, None, :]
    s_ptrs = rows.to(tl.int64)[:, None] * NG + (blk // BPG)[None, :]  # [BLOCK_N, NB] each block's group
    q_step = BLOCK_N * KB * 4
    s_step = BLOCK_N * NG
    if PREFETCH:  # the next step's words ride in registers: one more load per row in flight
        nxt = _words(q_ptrs, rows < r_end, bmask, False, EVEN_K)
    if L2PF:  # the program's whole weight range on its way to L2 before the wait
        for r0 in range(r_start, r_end, BLOCK_N):
            prefetch_l2(Q, r0 + tl.arange(0, BLOCK_N), N, pid_k * NB + 4 * tl.arange(0, NB // 4), KB)
    if PDL:  # x, the workspace and the counters belong to the previous kernel until it completes
        tl.extra.cuda.gdc_wait()
    if H2:  # x as 8 x 4 pieces [1, NB] (h2.x_pieces: nibble i, word j), scaled per block by 2**-e
        x0a, x0b, x0c, x0d = h2.x_pieces(X, blk, bmask, K, 0)
        x1a, x1b, x1c, x1d = h2.x_pieces(X, blk, bmask, K, 1)
        x2a, x2b, x2c, x2d = h2.x_pieces(X, blk, bmask, K, 2)
        x3a, x3b, x3c, x3d = h2.x_pieces(X, blk, bmask, K, 3)
        x4a, x4b, x4c, x4d = h2.x_pieces(X, blk, bmask, K, 4)
        x5a, x5b, x5c, x5d = h2.x_pieces(X, blk, bmask, K, 5)
        x6a, x6b, x6c, x6d = h2.x_pieces(X, blk, bmask, K, 6)
        x7a, x7b, x7c, x7d = h2.x_pieces(X, blk, bmask, K, 7)
        down, up = h2.block_exponents(h2.amax32(x0a, x0b, x0c, x0d, x1a, x1b, x1c, x1d, x2a, x2b, x2c, x2d,
                                                x3a, x3b, x3c, x3d, x4a, x4b, x4c, x4d, x5a, x5b, x5c, x5d,
                                                x6a, x6b, x6c, x6d, x7a, x7b, x7c, x7d))
        if FAST:  # the f16x2 x pairs of each word position, built once: 16 registers per block
            pa0, pa1, pa2, pa3 = h2.x_pairs(x0a, x1a, x2a, x3a, x4a, x5a, x6a, x7a, down)
            pb0, pb1, pb2, pb3 = h2.x_pairs(x0b, x1b, x2b, x3b, x4b, x5b, x6b, x7b, down)
            pc0, pc1, pc2, pc3 = h2.x_pairs(x0c, x1c, x2c, x3c, x4c, x5c, x6c, x7c, down)
            pd0, pd1, pd2, pd3 = h2.x_pairs(x0d, x1d, x2d, x3d, x4d, x5d, x6d, x7d, down)
        if ZP:
            xsum = (x0a + x0b + x0c + x0d + x1a + x1b + x1c + x1d + x2a + x2b + x2c + x2d + x3a + x3b + x3c + x3d
                    + x4a + x4b + x4c + x4d + x5a + x5b + x5c + x5d + x6a + x6b + x6c + x6d + x7a + x7b + x7c + x7d)
    else:
        kx = blk[:, None] * 32 + tl.arange(0, 4)[None, :]  # [NB, 4] columns of nibble 0
        x0 = _x_piece(X, kx, K, bmask, 0)
        x1 = _x_piece(X, kx, K, bmask, 1)
        x2 = _x_piece(X, kx, K, bmask, 2)
        x3 = _x_piece(X, kx, K, bmask, 3)
        x4 = _x_piece(X, kx, K, bmask, 4)
        x5 = _x_piece(X, kx, K, bmask, 5)
        x6 = _x_piece(X, kx, K, bmask, 6)
        x7 = _x_piece(X, kx, K, bmask, 7)
        if ZP:  # sum(x) per block, for the min term (once, not per row)
            xsum = tl.sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7, 2)  # [1, NB]
    for r0 in tl.range(r_start, r_end, BLOCK_N, num_stages=STAGES):
        rmask = rows < r_end
        if PREFETCH:
            w = nxt
            nxt = _words(q_ptrs + q_step, rows + BLOCK_N < r_end, bmask, False, EVEN_K)  # masked: past the range
        else:
            w = _words(q_ptrs, rmask, bmask, EVEN_N, EVEN_K)  # [BLOCK_N, NB, 4] int32
        if H2:  # the 4 words of a row's block chained into one f16x2 accumulator (h2's math)
            w0, w1, w2, w3 = h2.split4(w)  # [BLOCK_N, NB]
            if FAST:
                h = h2.word_pairs(w0, pa0, pa1, pa2, pa3, tl.zeros([BLOCK_N, NB], tl.int32))
                h = h2.word_pairs(w1, pb0, pb1, pb2, pb3, h)
                h = h2.word_pairs(w2, pc0, pc1, pc2, pc3, h)
                h = h2.word_pairs(w3, pd0, pd1, pd2, pd3, h)
                blk_sum = h2.halves_sum(h) * up
            else:
                lo = tl.zeros([BLOCK_N, NB], tl.float64)
                lo, hi = h2.word_ref(w0, x0a, x1a, x2a, x3a, x4a, x5a, x6a, x7a, down, lo, lo)
                lo, hi = h2.word_ref(w1, x0b, x1b, x2b, x3b, x4b, x5b, x6b, x7b, down, lo, hi)
                lo, hi = h2.word_ref(w2, x0c, x1c, x2c, x3c, x4c, x5c, x6c, x7c, down, lo, hi)
                lo, hi = h2.word_ref(w3, x0d, x1d, x2d, x3d, x4d, x5d, x6d, x7d, down, lo, hi)
                blk_sum = (lo.to(tl.float32) + hi.to(tl.float32)) * up
        else:
            u, u_hi = w | ONE, (w >> 16) | ONE  # quant_common.int4_sources with 1.0f's bits from a
            # launch argument: as an immediate, ptxas folds the or into every nibble's and and keeps
            # re-materialising the constant into registers (offline sm_90: ~0.5 more instructions per weight)
            part = int4_nibble(u, u_hi, 0) * x0
            part = tl.fma(int4_nibble(u, u_hi, 1), x1, part)
            part = tl.fma(int4_nibble(u, u_hi, 2), x2, part)
            part = tl.fma(int4_nibble(u, u_hi, 3), x3, part)
            part = tl.fma(int4_nibble(u, u_hi, 4), x4, part)
            part = tl.fma(int4_nibble(u, u_hi, 5), x5, part)
            part = tl.fma(int4_nibble(u, u_hi, 6), x6, part)
            part = tl.fma(int4_nibble(u, u_hi, 7), x7, part)
            blk_sum = tl.sum(part, 2)  # [BLOCK_N, NB]
        s = _group_vals(S + s_ptrs, rmask, bmask, EVEN_N and EVEN_K)
        if ZP:
            mn = _group_vals(MN + s_ptrs, rmask, bmask, EVEN_N and EVEN_K)
            y = tl.sum(blk_sum * s + tl.fma(s, 8.0, mn) * xsum, 1)  # min + 8 scale times sum(x)
        else:
            y = tl.sum(blk_sum * s, 1)  # [BLOCK_N]: across the lanes sharing a row
        if SPLIT_K:
            tl.store(WS + pid_k * N + rows, y, mask=rmask)
        else:
            tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rmask)
        rows += BLOCK_N
        q_ptrs += q_step
        s_ptrs += s_step
    if SPLIT_K:
        if splitk_arrive(CNT, pid_n, SPLIT):  # the last chunk to arrive sums the range, step by step
            for r0 in range(r_start, r_end, BLOCK_N):
                rows = r0 + tl.arange(0, BLOCK_N)
                splitk_sum(Y, rows, WS, rows, rows < r_end, SPLIT, N)
            splitk_release(CNT, pid_n)


@triton.jit
def _words(q_ptrs, rmask, bmask, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr):
    """One step's words [BLOCK_N, NB, 4] int32; masks only where the shapes need them."""
    if EVEN_N and EVEN_K:
        return tl.load(q_ptrs)
    return tl.load(q_ptrs, mask=rmask[:, None, None] & bmask[None, :, None], other=0)


@triton.jit
def _group_vals(ptrs, rmask, bmask, EVEN: tl.constexpr):
    """One step's scales (or mins) [BLOCK_N, NB] as float32; masked only where the shapes need it."""
    if EVEN:
        return tl.load(ptrs).to(tl.float32)
    return tl.load(ptrs, mask=rmask[:, None] & bmask[None, :], other=0.0).to(tl.float32)


def row_ranges(n: int, block_n: int, split: int, sms: int, waves: int) -> tuple[int, int]:
    """(rows per program, row programs) so that row programs x split is about waves x sms
    (waves 0: block_n rows each); the rows per program are a multiple of block_n."""
    tiles = triton.cdiv(n, block_n)
    per = 1 if waves <= 0 else max(1, tiles // max(1, triton.cdiv(waves * sms, split)))
    rows = per * block_n
    return rows, triton.cdiv(n, rows)


def gemv_int4_xres(x: torch.Tensor, q32: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None,
                   out: torch.Tensor, n: int, k: int, group: int, cfg: dict, prefetch: int, math: str,
                   pdl: bool = False, l2_prefetch: bool = False) -> torch.Tensor:
    """Launch on checked operands (kernels/quant_gemv.py gemv_int4): x [1, K], q32 the packed
    weight viewed as int32 [N, Kp/8], scales (and mins) [N, Kp/group], out [1, N]; math "f32" or
    "h2" (kernels/quant_gemv_h2.py's packed-half products, its error bound); pdl: programmatic
    dependent launch (kernels/quant_configs.py "pdl")."""
    if prefetch not in (0, 1):
        raise ValueError(f'the x_resident int4 GEMV takes "prefetch" 0 or 1, got {prefetch!r}')
    nb = cfg["block_k"] // 32
    ng = scales.shape[1]
    kb = ng * group // 32  # packed blocks per row
    split = triton.cdiv(kb, nb)
    rows, programs = row_ranges(n, cfg["block_n"], split, sm_count(x.device), cfg["waves"])
    even_n, even_k = n % rows == 0, kb % nb == 0  # no masks on full tiles (the Llama shapes)
    ws, cnt = split_buffers(x.device, split, 1, n, programs)
    gemv_int4_xres_kernel[(programs, split)](
        x, q32, scales, scales if mins is None else mins, out, ws, cnt, n, k, kb, ng, rows, split, ONE_BITS,
        BPG=group // 32, BLOCK_N=cfg["block_n"], NB=nb, STAGES=cfg["stages"], ZP=mins is not None,
        PREFETCH=prefetch, SPLIT_K=split > 1, EVEN_N=even_n, EVEN_K=even_k,
        H2=math == "h2", FAST=not interpreting(), PDL=pdl, L2PF=l2_prefetch, num_warps=cfg["warps"], **({"launch_pdl": True} if pdl else {}),
    )
    return out
