"""The decode kernel's FP8-cache tiles in float16 (decode_attention.py, constexpr F16:
an e4m3 cache read with a bf16/fp16 query). Format: cache/kv_fp8.py.

Why float16 operands: every e4m3 value is exact in fp16, and sm_89+ converts a pair
of them in one instruction (cvt.rn.f16x2.e4m3x2), where e4m3 -> bf16 costs that plus
one f16 -> bf16 per value and e4m3 -> float32 one more per value. The offline sm_90
build (bench/attention_sass.py) counted those conversions, and V's byte-wise operand
reads, as most of the FP8 loop's extra instructions over bf16.

- :func:`load_v`: V [BLOCK_N keys, D] as four float16 tiles [BLOCK_N, D/4], tile j holding
  the dims 4c + j. tl.dot(p, v) wants V with keys along the MMA's K dim, but cache rows
  are D-contiguous; Triton reads an 8-bit operand in that orientation from shared
  memory one byte at a time (117 LDS per 64-key tile). So V is loaded as int32 words
  (four e4m3 neighbours along D), each converted by two packed conversions, and the
  four strided tiles go to four dots [G, D/4] (:func:`accumulate`), re-interleaved
  once after the loop (:func:`interleave`). Loaded as int16 pairs and joined (the
  previous form), Triton gave each thread 32 contiguous bytes in two 16-byte copies
  per row, so every L2 sector of V was requested twice, and the unswizzled buffer
  conflicted on banks: Nsight Compute on an H100 counted 33% excess L2 sectors and
  37% excess shared wavefronts in the loop (bench/results/ncu_attn_h100.txt). Int32
  words of 16 bytes per thread are contiguous across a warp. Needs D % 4 == 0
  (every Llama-family head size); decode_attention.py takes the float32 path otherwise.
- :func:`pv_weights`: the V row scales s_v = 2**k go into the weights, p * s_v, as in
  the float32 path, but p * s_v can leave fp16's range (k is anything from -126 up).
  So the weights are taken relative to R, the running max of the V scales seen:
  w = p * s_v * 2**15 / R <= 2**15 (fp16 holds 65504), and acc is kept in units of
  R * 2**-15 (rescaled by R_old / R_new, a power of two, whenever R grows). A weight
  then only leaves fp16's normal range (2**-14) when it is 2**-29 below the largest
  scale's: relative error 2**-11 per weight elsewhere, against bf16's 2**-8.
- :func:`rotate_tile_f16`: RoPE of the key halves in fp16 (|cos|, |sin| <= 1 and
  e4m3 keys <= 448, so no overflow; error ~2**-11 relative, below bf16's rounding
  of the rotated key in the bf16 kernel).
- :func:`q_f16`: the rotated query in fp16, divided by 2**k so that max |q| < 2
  (bf16 queries may exceed fp16's range); 2**k joins the K row scale in the score.

Scaling by powers of two is exact, so the only roundings are the fp16 ones above.
``FAST`` (a GPU build): the packed conversion as inline PTX; the interpreter and
FAST=False builds convert each byte with Triton's own cast, same values.
"""

from __future__ import annotations

import triton
import triton.language as tl

from swiftinfer_core.kernels import rope_tl


@triton.jit
def _cvt_quads(w, FAST: tl.constexpr):
    """w int32 [...]: four e4m3 values, byte i (from the lowest address) the i-th ->
    four float16 [...], exact. On a GPU two elements go to each conversion: in the MMA
    operand layout V's words reach a thread in pairs of neighbouring keys (k, k + 1),
    which is the pair one operand register holds, so the bytes are paired across the
    two words first (two prmt) and each packed conversion writes an operand register
    as is (no repacking of converted halves)."""
    if FAST:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 a, b; .reg .b16 al, ah, bl, bh; prmt.b32 a, $4, $5, 0x5140; prmt.b32 b, $4, $5, 0x7362; "
            "mov.b32 {al, ah}, a; mov.b32 {bl, bh}, b; cvt.rn.f16x2.e4m3x2 $0, al; cvt.rn.f16x2.e4m3x2 $1, ah; "
            "cvt.rn.f16x2.e4m3x2 $2, bl; cvt.rn.f16x2.e4m3x2 $3, bh; }", "=r,=r,=r,=r,r,r", [w],
            dtype=(tl.float16, tl.float16, tl.float16, tl.float16), is_pure=True, pack=2)
    else:
        b0 = (w & 0xFF).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float16)
        b1 = ((w >> 8) & 0xFF).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float16)
        b2 = ((w >> 16) & 0xFF).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float16)
        b3 = ((w >> 24) & 0xFF).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float16)
        return b0, b1, b2, b3


@triton.jit
def load_v(v_base, row, valid, sc_r, D: tl.constexpr, D_PAD: tl.constexpr, FAST: tl.constexpr):
    """V rows ``row`` [BLOCK_N] of an e4m3 cache (v_base: the head's first byte, rows
    sc_r bytes apart, sc_r and D multiples of 4) -> four float16 [BLOCK_N, D_PAD/4],
    the j-th holding dims 4c + j; invalid rows and padding dims read as 0."""
    offs_w = tl.arange(0, D_PAD // 4)
    words = v_base.to(tl.pointer_type(tl.int32)) + row[:, None] * (sc_r // 4) + offs_w[None, :]
    w = tl.load(words, mask=valid[:, None] & (offs_w < D // 4)[None, :], other=0)  # [BLOCK_N, D_PAD/4]
    return _cvt_quads(w, FAST)


@triton.jit
def interleave(a0, a1, a2, a3, G: tl.constexpr, D_PAD: tl.constexpr):
    """Four [G, D_PAD/4] accumulators, the j-th of dims 4c + j -> [G, D_PAD]."""
    return tl.join(tl.join(a0, a2), tl.join(a1, a3)).reshape(G, D_PAD)  # [G, c, k, m] = a_(2k+m)


@triton.jit
def pv_weights(p, vs, r_i):
    """p [G, BLOCK_N] float32 softmax weights (<= 1), vs [BLOCK_N] V row scales (2**k;
    0 for invalid keys), r_i the running max of V scales (a power of two >= 2**-126)
    -> (weights p * vs * 2**15 / R float16, r_i / R to rescale acc by, R)."""
    r_new = tl.maximum(r_i, tl.max(vs, 0))
    inv = ((254 << 23) - r_new.to(tl.int32, bitcast=True)).to(tl.float32, bitcast=True)  # 1 / R, exact
    w = p * ((vs * inv) * 32768.0)[None, :]
    return w.to(tl.float16), r_i * inv, r_new


@triton.jit
def query_at(q1, q2, rel, f, BLOCK_N: tl.constexpr, FAST: tl.constexpr):
    """The query halves q1, q2 [G, HALF] float32 (unrotated) for the first tile: divided
    by 2**k (:func:`q_scaled`) and rotated by ``rel`` = query position - the tile's
    first key position; with 2**k and the step rotation to the next tile (by -BLOCK_N
    positions, [1, HALF] cos and sin). With keys rotated only by their offset in the
    tile (:func:`rotate_keys`), the score is q_rot(qpos) . k_rot(p0 + i) =
    R(qpos - p0) q . R(i) k: the tile's own angle goes on the G query rows instead of
    the BLOCK_N key rows, and from tile to tile by one float32 rotation (rounding
    error ~2**-24 per tile, against fp16's 2**-11 for the operand)."""
    q1, q2, pow2 = q_scaled(q1, q2)
    c, s = rope_tl.cos_sin(tl.zeros_like(f) + rel, f, FAST)
    r1, r2 = rope_tl.rotate(q1, q2, c[None, :], s[None, :])
    cb, sb = rope_tl.cos_sin(tl.zeros_like(f) - BLOCK_N, f, FAST)
    return r1, r2, pow2, cb[None, :], sb[None, :]


@triton.jit
def rotate_keys(k1, k2, ci, si):
    """Key halves k1, k2 [BLOCK_N, HALF] float16 (e4m3 values, <= 448) rotated by their
    row's offset in the tile, table ci, si [BLOCK_N, HALF] float16 (rope_tl.offset_table)."""
    return k1 * ci - k2 * si, k2 * ci + k1 * si


@triton.jit
def q_scaled(q1, q2):
    """Query halves [G, HALF] float32 -> (q1, q2 divided by 2**k, 2**k): 2**k <= max |q|
    < 2**(k+1), so any rotation of them stays below 3 in fp16."""
    amax = tl.maximum(tl.max(tl.max(tl.abs(q1), 1), 0), tl.max(tl.max(tl.abs(q2), 1), 0))
    e = tl.minimum(tl.maximum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, 1), 253)
    inv = ((254 - e) << 23).to(tl.float32, bitcast=True)
    return q1 * inv, q2 * inv, (e << 23).to(tl.float32, bitcast=True)


@triton.jit
def _op(x, FAST: tl.constexpr):
    """A float16 tl.dot operand: as is on a GPU; float32 (exact) in the interpreter,
    whose 16-bit dots are unreliable (triton_common.mma_dtype)."""
    if FAST:
        return x
    else:
        return x.to(tl.float32)


@triton.jit
def scores(qt1, qt2, k1, k2, ci, si, c_step, s_step, PREC: tl.constexpr, FAST: tl.constexpr):
    """One tile's raw scores [G, BLOCK_N] (times the K row scales and q's 2**k to be
    applied) from e4m3 key halves k1, k2 [BLOCK_N, HALF], and the query halves for the
    next tile (:func:`query_at`)."""
    kr1, kr2 = rotate_keys(k1.to(tl.float16), k2.to(tl.float16), ci, si)
    s = tl.dot(_op(qt1.to(tl.float16), FAST), tl.trans(_op(kr1, FAST)), input_precision=PREC)
    s += tl.dot(_op(qt2.to(tl.float16), FAST), tl.trans(_op(kr2, FAST)), input_precision=PREC)
    nq1, nq2 = rope_tl.rotate(qt1, qt2, c_step, s_step)  # BLOCK_N positions back
    return s, nq1, nq2


@triton.jit
def accumulate(a0, a1, a2, a3, alpha, p, vs, r_i, v_base, row, valid, sc_r, D: tl.constexpr, D_PAD: tl.constexpr,
               PREC: tl.constexpr, FAST: tl.constexpr):
    """The four accumulators [G, D_PAD/4] (dims 4c + j; units of r_i * 2**-15) rescaled by
    the softmax's alpha [G] and plus this tile's weights p [G, BLOCK_N] times its V rows
    (row scales vs) -> (a0, a1, a2, a3, r_i)."""
    w, r_ratio, r_new = pv_weights(p, vs, r_i)
    v0, v1, v2, v3 = load_v(v_base, row, valid, sc_r, D, D_PAD, FAST)
    c = (alpha * r_ratio)[:, None]
    w = _op(w, FAST)
    a0 = a0 * c + tl.dot(w, _op(v0, FAST), input_precision=PREC)
    a1 = a1 * c + tl.dot(w, _op(v1, FAST), input_precision=PREC)
    a2 = a2 * c + tl.dot(w, _op(v2, FAST), input_precision=PREC)
    a3 = a3 * c + tl.dot(w, _op(v3, FAST), input_precision=PREC)
    return a0, a1, a2, a3, r_new
