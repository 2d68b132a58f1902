"""Batched int4/int8/fp8 products through dequantised chunks and cuBLAS (quant_configs key ``dequant_mib``).

From ~128 rows on, the fused GEMMs of kernels/quant_gemm.py run the tensor cores far below
cuBLAS. On one H100 at Llama-2-7B shapes, int4 took 0.36-0.43x of bf16's time per weight at 128
rows (bench/results/quant_gemm_joined_h100.json). The whole step's weight products at 1,024 rows
took 66.7 ms in int4 and 40.1 in int8 against bf16's 19.2 (quant_decode_gemm_joined_h100_table.json).
On one H100 at those shapes (bench/results/quant_sweep_dequant_h100.json) this path took 0.56-0.60x
of the fused GEMM's time for int4 and 0.75-0.80x for int8 at 1,024 rows, but 1.5-2.9x (int4) and
1.2-2.8x (int8) at 128 rows: the tables send products of more than 256 rows here.
Here the weight is dequantised, ``dequant_mib`` MiB of rows at a time, into a scratch buffer in
x's dtype, and each chunk multiplies through torch.mm (cuBLAS): y[:, rows] = x @ W[rows]^T.
A chunk that fits L2 is read back by the product from L2, so HBM sees about the packed bytes
plus x and y, and the product runs at cuBLAS's rate. Weights are the formats of model/quant.py:

  int4  nibble-planar: nibble i of word j of a 32-column block is column 4i + j; q = nibble - 8,
        w = q * S[n, group] (with zero points w = nibble * S + MN = q * S + (MN + 8 S))
  int8  byte-planar: byte t of word j of a 16-column block is column 4t + j; w = q * S[n]
  fp8   float8_e4m3fn [N, K] as stored (model/fp8.py); w = q * S[n]. The weight-only batched
        path of model/fp8_linear.py (``batched="dequant"``): x keeps its dtype, unlike _scaled_mm's
        e4m3 rows, and cuBLAS does the sums. On an H100 it was the slower (0.36-0.48x of bf16's
        step time at 8-512 rows against the split-K GEMM's 0.64-1.59x;
        bench/results/fp8_decode_splitk_h100.json), so nothing selects it.

The dequantised values are the fused kernels' operands (float32 q * S, rounded once to x's
dtype), so the two paths agree to that rounding; the sums are cuBLAS's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.quant_common import int4_nibble, int4_sources, int8_byte, int8_sources

ROWS = 32  # weight rows per program
BLOCKS = 4  # packed blocks per program (int4: 128 columns; int8: 64)


@triton.jit
def _block_words(Q, N, KB, ROWS: tl.constexpr, BLOCKS: tl.constexpr):
    """This program's ROWS weight rows and BLOCKS packed blocks (4 int32 words each, KB per row):
    (rows as int64, their mask, word index cw [4 BLOCKS], each word's block, the [ROWS, 4 BLOCKS]
    mask, the words with 0 outside it)."""
    rn = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cw = tl.arange(0, 4 * BLOCKS)
    blk = tl.program_id(1) * BLOCKS + cw // 4
    nmask = rn < N
    n64 = rn.to(tl.int64)
    mask = nmask[:, None] & (blk < KB)[None, :]
    return n64, nmask, cw, blk, mask, tl.load(Q + n64[:, None] * (KB * 4) + (blk * 4 + cw % 4)[None, :], mask=mask, other=0)


@triton.jit
def _dequant_int4_kernel(Q, S, MN, OUT, N, K, KB, NG, BPG: tl.constexpr, ROWS: tl.constexpr, BLOCKS: tl.constexpr,
                         ZP: tl.constexpr):
    n64, nmask, cw, blk, mask, words = _block_words(Q, N, KB, ROWS, BLOCKS)
    u, u_hi = int4_sources(words)
    g = n64[:, None] * NG + (blk // BPG)[None, :]
    s = tl.load(S + g, mask=mask, other=0.0).to(tl.float32)
    z = s
    if ZP:
        z = tl.fma(s, 8.0, tl.load(MN + g, mask=mask, other=0.0).to(tl.float32))
    for i in tl.static_range(8):
        q = int4_nibble(u, u_hi, i)
        w = tl.fma(q, s, z) if ZP else q * s
        col = blk * 32 + 4 * i + cw % 4
        tl.store(OUT + n64[:, None] * K + col[None, :], w.to(OUT.dtype.element_ty), mask=nmask[:, None] & (col < K)[None, :])


@triton.jit
def _dequant_int8_kernel(Q, S, OUT, N, K, KB, ROWS: tl.constexpr, BLOCKS: tl.constexpr):
    n64, nmask, cw, blk, mask, words = _block_words(Q, N, KB, ROWS, BLOCKS)
    u, u_hi = int8_sources(words)
    s = tl.load(S + n64, mask=nmask, other=0.0).to(tl.float32)[:, None]
    for t in tl.static_range(4):
        col = blk * 16 + 4 * t + cw % 4
        w = int8_byte(u, u_hi, t) * s
        tl.store(OUT + n64[:, None] * K + col[None, :], w.to(OUT.dtype.element_ty), mask=nmask[:, None] & (col < K)[None, :])


@triton.jit
def _dequant_fp8_kernel(Q, S, OUT, N, K, ROWS: tl.constexpr, COLS: tl.constexpr):
    rn = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    col = tl.program_id(1) * COLS + tl.arange(0, COLS)
    nmask = rn < N
    n64 = rn.to(tl.int64)
    mask = nmask[:, None] & (col < K)[None, :]
    q = tl.load(Q + n64[:, None] * K + col[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(S + n64, mask=nmask, other=0.0)[:, None]
    tl.store(OUT + n64[:, None] * K + col[None, :], (q * s).to(OUT.dtype.element_ty), mask=mask)


FP8_COLS = 128  # e4m3 columns per program: 128 contiguous bytes per row


def dequantize_rows(fmt: str, q32: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, k: int, group: int,
                    lo: int, hi: int, out: torch.Tensor) -> torch.Tensor:
    """Weight rows [lo, hi) of int4 ("int4": q32 [N, Kp/8] int32 words, scales [N, Kp/group]),
    int8 ("int8": q32 [N, K16/4], scales [N]) or fp8 ("fp8": q32 is the float8_e4m3fn [N, k]
    weight itself, scales [N]) dequantised into out[: hi - lo] ([>= hi - lo, k])."""
    rows = hi - lo
    dst = out[:rows]
    if fmt == "fp8":
        grid = (triton.cdiv(rows, ROWS), triton.cdiv(k, FP8_COLS))
        _dequant_fp8_kernel[grid](q32[lo:hi], scales[lo:hi], dst, rows, k, ROWS=ROWS, COLS=FP8_COLS)
        return dst
    kb = q32.shape[1] // 4
    grid = (triton.cdiv(rows, ROWS), triton.cdiv(kb, BLOCKS))
    if fmt == "int8":
        _dequant_int8_kernel[grid](q32[lo:hi], scales[lo:hi], dst, rows, k, kb, ROWS=ROWS, BLOCKS=BLOCKS)
    else:
        s = scales[lo:hi]
        _dequant_int4_kernel[grid](q32[lo:hi], s, s if mins is None else mins[lo:hi], dst, rows, k, kb, scales.shape[1],
                                   BPG=group // 32, ROWS=ROWS, BLOCKS=BLOCKS, ZP=mins is not None)
    return dst


def chunk_rows(n: int, k: int, elem: int, mib: int) -> int:
    """Rows per dequantised chunk: ``mib`` MiB of [rows, k] in elem-byte values, a multiple of 64, at most n."""
    return min(n, max(64, (mib * 2**20 // (k * elem)) // 64 * 64))


def matmul(fmt: str, x: torch.Tensor, q32: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, k: int,
           group: int, out: torch.Tensor, mib: int) -> torch.Tensor:
    """out [M, N] = x [M, k] @ W^T, W dequantised ``mib`` MiB of rows at a time into one scratch buffer."""
    n = out.shape[1]
    step = chunk_rows(n, k, x.element_size(), mib)
    scratch = torch.empty(step, k, dtype=x.dtype, device=x.device)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        w = dequantize_rows(fmt, q32, scales, mins, k, group, lo, hi, scratch)
        torch.mm(x, w.t(), out=out[:, lo:hi])
    return out
