"""Batch-1 int4 GEMV on packed half pairs (f16x2): the "h2" math of
kernels/quant_gemv.py's symmetric int4 format (config "math": "h2").

Why. The float32 path spends ~4.6 SASS instructions per weight (an and + an fma to
decode each nibble, an fma to multiply), and the GEMV is issue-bound. Here every
instruction works on two weights, as in FasterTransformer / TensorRT-LLM:
  pair (nibble i, nibble i + 4) of a word w = 8 nibbles (i = 0..3):
    i = 0:  lop3 (w & 0x000F000F) | 0x64006400        = (1024 + n_lo, 1024 + n_hi) as f16x2
            sub.f16x2 - (1032, 1032)                  = (n_lo - 8, n_hi - 8), exact
    i = 1:  lop3 (w & 0x00F000F0) | 0x64006400        = (1024 + 16 n, ...)  (no shift)
            fma.rn.f16x2 * (1/16, 1/16) - (72, 72)    = n - 8, exact
    i = 2, 3: the same on w >> 8 (one shift per word)
  then fma.rn.f16x2 q * (x_lo, x_hi) + acc: 13 instructions per word of 8 weights.
The nibble-planar layout (nibble i of word j of block b is column 32 b + 4 i + j)
makes pair (i, i + 4) of word j the columns (32 b + 4 i + j, 32 b + 16 + 4 i + j);
the x pairs are built once per thread and block and reused by every row it holds.
The 4 words of a block (one row) chain into one f16x2 accumulator (16 products per
half); its halves then go to float32 and the block sum joins the float32
accumulator times the group scale, as in the float32 path.

Range. fp16 tops out at 65504 and activations do not (down_proj inputs reach
1e3-1e4), so each 32-column x block is scaled by a power of two 2**-e with
max |x_b| 2**-e in [1, 2) (e from the max's float32 exponent bits) before the
conversion to fp16, and 2**e is folded back in float32 with the group scale
(exact). Then |q x| < 16 and a block's half accumulator stays below 256.

Rounding (u = 2**-11, fp16's unit roundoff; bf16 activations already carry 2**-8):
  x -> fp16: exact for bf16 and fp16 x (but values below 2**-14 of the block max
    land on fp16's subnormal grid: absolute error <= 2**-25 in scaled units);
    float32 x rounds to nearest, relative u.
  each fma.rn.f16x2 rounds its partial sum once: error <= u |partial| (+ 2**-25 on
    the subnormal grid); 16 chained per half, so per block
    |error| <= 16 u sum_b |q x~| (first order) + 16 2**-25, in units of s 2**e.
  the rest is float32, as in the other path.
So per output |y - y_exact| <= (17 u) sum_k |w_k x_k| + small absolute terms +
its own rounding to out's dtype (tests/kernels/test_quant_gemv.py checks this
bound element by element). Typical errors are random-walk, ~u sqrt(16) per block.

FAST (a GPU build): the per-word decode + multiply-add as one inline-PTX block on
.b32 registers (so Triton cannot unpack the pairs into scalars), x pairs packed
with one cvt.rn.f16x2.f32 each. FAST=False (the CPU interpreter, which cannot run
inline asm): the same values from plain Triton ops, each fp16 fma done exactly in
float64 and rounded once to fp16 (bit for bit the fused op), in the same order
(words j = 0..3, then pairs i = 0..3), so both paths give the same block sums.
Non-finite x and |x| >= 2**127 are outside this path's range; x blocks with
max |x| < 2**-126 (float32 subnormal) contribute 0.

Offline sm_90 builds (bench/quant_sass.py, block_k 512, 4 warps, bf16 x): the loop
is 3.52 instructions per weight at 4 rows per thread (f32 math: 4.57; 80 registers
against 105) and 2.75 at 8 rows (f32: 4.18; 127 against 167), LOP3 / HADD2 / HFMA2
on pairs as above and no shared memory in the loop. What is left beyond the 13 per
word is mostly the x side (bf16 -> float32, the block max, the scaling and the pair
converts: ~120 instructions per thread and block, shared by the thread's rows), so
more rows per thread pay off more than in the f32 math.

Measured (one H100 80GB, bench/quant_h2_ab.py, docs/quantization.md): slower than the
f32 math, 0.88-0.92x per Llama shape at 4 rows per thread and 0.61-0.75x at 8, so
the table keeps "f32"; fewer instructions per weight was not what bound the GEMV.
"""

from __future__ import annotations

import triton
import triton.language as tl

from swiftinfer_core.kernels.quant_common import gemv_tile, load_block_words, splitk_store

_WORD_ASM = tl.constexpr("""{
.reg .b32 t, q0, q1, q2, q3, k, m, a, z;
lop3.b32 q0, $1, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 q1, $1, 0x00F000F0, 0x64006400, 0xEA;
shr.u32 t, $1, 8;
lop3.b32 q2, t, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 q3, t, 0x00F000F0, 0x64006400, 0xEA;
mov.b32 k, 0x64086408;
sub.f16x2 q0, q0, k;
sub.f16x2 q2, q2, k;
mov.b32 m, 0x2C002C00;
mov.b32 z, 0xD480D480;
fma.rn.f16x2 q1, q1, m, z;
fma.rn.f16x2 q3, q3, m, z;
fma.rn.f16x2 a, q0, $2, $6;
fma.rn.f16x2 a, q1, $3, a;
fma.rn.f16x2 a, q2, $4, a;
fma.rn.f16x2 a, q3, $5, a;
mov.b32 $0, a;
}""")  # $0 = acc' (f16x2), $1 = word, $2..$5 = x pairs of nibble pairs 0..3, $6 = acc
# 0x6408 = 1032, 0x2C00 = 1/16, 0xD480 = -72 in fp16; lop3 0xEA = (a & b) | c


@triton.jit
def split4(t):
    """t [A, B, 4] -> t[..., 0], t[..., 1], t[..., 2], t[..., 3] ([A, B] each; in-thread)."""
    even, odd = tl.split(tl.reshape(t, (t.shape[0], t.shape[1], 2, 2)))
    t0, t2 = tl.split(even)
    t1, t3 = tl.split(odd)
    return t0, t1, t2, t3


@triton.jit
def pair(lo, hi):
    """float32 lo, hi (fp16 range) -> int32 words of the f16x2 pair (lo in the low half), rn."""
    return tl.inline_asm_elementwise("cvt.rn.f16x2.f32 $0, $2, $1;", "=r,r,r", [lo, hi],
                                     dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def halves_sum(acc):
    """int32 words of f16x2 pairs -> float32 lo + hi."""
    return tl.inline_asm_elementwise(
        "{ .reg .f16 l, h; .reg .f32 fl, fh; mov.b32 {l, h}, $1; cvt.f32.f16 fl, l; cvt.f32.f16 fh, h; "
        "add.f32 $0, fl, fh; }", "=r,r", [acc], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def x_pieces(X, blk, bmask, K, I: tl.constexpr):
    """x at columns 32 b + 4 I + j of the blocks blk [NB], as 4 float32 [1, NB] tensors (j = 0..3).
    Loaded 3-D like the weight tile and split at once, so that Triton gives x the tile's
    layout (each thread holds its blocks' columns): no layout conversion in the loop."""
    kx = blk[None, :, None] * 32 + 4 * I + tl.arange(0, 4)[None, None, :]  # [1, NB, 4]
    return split4(tl.load(X + kx, mask=bmask[None, :, None] & (kx < K), other=0.0).to(tl.float32))


@triton.jit
def _amax4(a, b, c, d):
    return tl.maximum(tl.maximum(tl.abs(a), tl.abs(b)), tl.maximum(tl.abs(c), tl.abs(d)))


@triton.jit
def amax32(x0a, x0b, x0c, x0d, x1a, x1b, x1c, x1d, x2a, x2b, x2c, x2d, x3a, x3b, x3c, x3d,
           x4a, x4b, x4c, x4d, x5a, x5b, x5c, x5d, x6a, x6b, x6c, x6d, x7a, x7b, x7c, x7d):
    """max |x| over a block's 32 columns, given as x_pieces' 8 x 4 pieces."""
    return tl.maximum(tl.maximum(tl.maximum(_amax4(x0a, x0b, x0c, x0d), _amax4(x1a, x1b, x1c, x1d)),
                                 tl.maximum(_amax4(x2a, x2b, x2c, x2d), _amax4(x3a, x3b, x3c, x3d))),
                      tl.maximum(tl.maximum(_amax4(x4a, x4b, x4c, x4d), _amax4(x5a, x5b, x5c, x5d)),
                                 tl.maximum(_amax4(x6a, x6b, x6c, x6d), _amax4(x7a, x7b, x7c, x7d))))


@triton.jit
def _f16(v):
    """float64 -> the nearest fp16 value, as float64 (the interpreter's stand-in for one fp16 rounding)."""
    return v.to(tl.float16).to(tl.float64)


@triton.jit
def _fma16(w, SHIFT: tl.constexpr, x, down, acc):
    """One fp16 fma of the interpreter's path: (nibble at SHIFT of w - 8) * fp16(x 2**-e) + acc,
    rounded once to fp16. In float64 the product (4 x 11 bits) and the sum (exponents
    2**-24..2**8) are exact, so this is fma.rn.f16x2's single rounding, bit for bit."""
    q = (((w >> SHIFT) & 15) - 8).to(tl.float64)
    return _f16(q * _f16((x * down).to(tl.float64)) + acc)


@triton.jit
def x_pairs(x0, x1, x2, x3, x4, x5, x6, x7, down):
    """x of nibbles 0..7 of one word position (float32, unscaled), down = 2**-e -> the 4 f16x2
    x pairs of nibble pairs (i, i + 4) that word_pairs takes: one cvt.rn.f16x2.f32 each."""
    return pair(x0 * down, x4 * down), pair(x1 * down, x5 * down), pair(x2 * down, x6 * down), pair(x3 * down, x7 * down)


@triton.jit
def word_pairs(w, p0, p1, p2, p3, h):
    """FAST: word w [BN, NB] int32 of each row's block, its x pairs (x_pairs), h [BN, NB]
    the f16x2 accumulator -> the new h (13 instructions per word of 8 weights)."""
    return tl.inline_asm_elementwise(_WORD_ASM, "=r,r,r,r,r,r,r", [w, p0, p1, p2, p3, h],
                                     dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def block_exponents(m):
    """max |x| of each 32-column block -> (down, up) = (2**-e, 2**e) with max |x| 2**-e in [1, 2)
    (e from the max's float32 exponent bits; up is 0 for an all-zero block)."""
    ebits = m.to(tl.int32, bitcast=True) & 0x7F800000
    return ((254 << 23) - ebits).to(tl.float32, bitcast=True), ebits.to(tl.float32, bitcast=True)


@triton.jit
def _word_asm(w, x0, x1, x2, x3, x4, x5, x6, x7, down, h):
    """FAST: word w [BN, NB] int32 of each row's block, x of its nibbles 0..7 [1, NB] (float32,
    unscaled), down [1, NB] = 2**-e, h [BN, NB] the f16x2 accumulator -> the new h."""
    p0, p1, p2, p3 = x_pairs(x0, x1, x2, x3, x4, x5, x6, x7, down)
    return word_pairs(w, p0, p1, p2, p3, h)


@triton.jit
def word_ref(w, x0, x1, x2, x3, x4, x5, x6, x7, down, lo, hi):
    """FAST=False twin of _word_asm with the f16x2 accumulator as two float64 halves (lo, hi)
    holding fp16 values: the same products in the same order and the same roundings."""
    lo = _fma16(w, 0, x0, down, lo)
    hi = _fma16(w, 16, x4, down, hi)
    lo = _fma16(w, 4, x1, down, lo)
    hi = _fma16(w, 20, x5, down, hi)
    lo = _fma16(w, 8, x2, down, lo)
    hi = _fma16(w, 24, x6, down, hi)
    lo = _fma16(w, 12, x3, down, lo)
    hi = _fma16(w, 28, x7, down, hi)
    return lo, hi


@triton.jit
def gemv_int4_h2_kernel(
    X, Q, S, Y, WS, CNT, N, K, KB, NG, STEPS, SPLIT,
    BPG: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr, STAGES: tl.constexpr, FAST: tl.constexpr,
):
    rows, rmask, q_rows, b_start, b_end = gemv_tile(Q, N, KB, STEPS, BLOCK_N, NB)
    r64 = rows.to(tl.int64)
    nb = tl.arange(0, NB)
    acc = tl.zeros([BLOCK_N, NB], tl.float32)
    for b0 in tl.range(b_start, b_end, NB, num_stages=STAGES):
        blk = b0 + nb  # [NB] packed blocks of this step
        bmask = blk < b_end
        w = load_block_words(q_rows, rmask, blk, bmask)  # [BLOCK_N, NB, 4] int32
        w0, w1, w2, w3 = split4(w)  # [BLOCK_N, NB]: word j of each block
        # x[32 b + 4 i + j] as x{i}{a,b,c,d} for j = 0..3: [1, NB] float32 each
        x0a, x0b, x0c, x0d = x_pieces(X, blk, bmask, K, 0)
        x1a, x1b, x1c, x1d = x_pieces(X, blk, bmask, K, 1)
        x2a, x2b, x2c, x2d = x_pieces(X, blk, bmask, K, 2)
        x3a, x3b, x3c, x3d = x_pieces(X, blk, bmask, K, 3)
        x4a, x4b, x4c, x4d = x_pieces(X, blk, bmask, K, 4)
        x5a, x5b, x5c, x5d = x_pieces(X, blk, bmask, K, 5)
        x6a, x6b, x6c, x6d = x_pieces(X, blk, bmask, K, 6)
        x7a, x7b, x7c, x7d = x_pieces(X, blk, bmask, K, 7)
        m = amax32(x0a, x0b, x0c, x0d, x1a, x1b, x1c, x1d, x2a, x2b, x2c, x2d, x3a, x3b, x3c, x3d,
                   x4a, x4b, x4c, x4d, x5a, x5b, x5c, x5d, x6a, x6b, x6c, x6d, x7a, x7b, x7c, x7d)
        down, up = block_exponents(m)  # [1, NB] 2**-e, 2**e: max |x| 2**-e in [1, 2)
        if FAST:  # the 4 words chained into one f16x2 accumulator per row and block
            h = _word_asm(w0, x0a, x1a, x2a, x3a, x4a, x5a, x6a, x7a, down, tl.zeros([BLOCK_N, NB], tl.int32))
            h = _word_asm(w1, x0b, x1b, x2b, x3b, x4b, x5b, x6b, x7b, down, h)
            h = _word_asm(w2, x0c, x1c, x2c, x3c, x4c, x5c, x6c, x7c, down, h)
            h = _word_asm(w3, x0d, x1d, x2d, x3d, x4d, x5d, x6d, x7d, down, h)
            blk_sum = halves_sum(h)  # [BLOCK_N, NB] float32
        else:
            lo = tl.zeros([BLOCK_N, NB], tl.float64)
            lo, hi = word_ref(w0, x0a, x1a, x2a, x3a, x4a, x5a, x6a, x7a, down, lo, lo)
            lo, hi = word_ref(w1, x0b, x1b, x2b, x3b, x4b, x5b, x6b, x7b, down, lo, hi)
            lo, hi = word_ref(w2, x0c, x1c, x2c, x3c, x4c, x5c, x6c, x7c, down, lo, hi)
            lo, hi = word_ref(w3, x0d, x1d, x2d, x3d, x4d, x5d, x6d, x7d, down, lo, hi)
            blk_sum = lo.to(tl.float32) + hi.to(tl.float32)  # as halves_sum: exact converts, one float32 add
        s = tl.load(S + r64[:, None] * NG + (blk // BPG)[None, :], mask=rmask[:, None] & bmask[None, :], other=0.0)
        acc = tl.fma(blk_sum, s.to(tl.float32) * up, acc)  # [BLOCK_N, NB]: one scale per block
    y = tl.sum(acc, 1)
    splitk_store(y, Y, rows, WS, rows, rmask, CNT, tl.program_id(0), tl.program_id(1), SPLIT, N)
