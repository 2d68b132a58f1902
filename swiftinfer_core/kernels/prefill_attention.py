"""Chunked-prefill attention with the streaming mask (varlen, packed queries).

Shapes: q [T, Hq, D], k_new/v_new [T, Hkv, D] (this step's tokens, pre-RoPE,
rows cu_seqlens[b]:cu_seqlens[b+1] belong to sequence b, stream indices
n_b .. n_b+c_b-1), caches [slots, Hkv, cap, D] (pre-RoPE, still holding the
state before the step: the ring cannot take the step's tokens before every
query has read the old rows they replace; write_cache.py runs afterwards).

Matches reference.streaming_attention_ref. Query t sees key u iff u <= t and
(u < sinks or u >= t - window + 1). Rotation, the two-rotation trick of
layout.py with shift = rope_shift(n + c - 1):

    window key u at u - shift,   query for window keys at t - shift
    sink key u   at u,           query for sink keys   at min(t, cap - 1)

so every angle stays in [-chunk, cap). On a GPU the angles' sines and cosines come
from the hardware unit after rope_tl's exact reduction (FAST, as in decode): with
libdevice's ~100-instruction calls the three [BLOCK_M, D/2] / [BLOCK_N, D/2] tables
of every program made a 40-token chunk's attention ~60 us a layer on an H200
(bench/results/mixed_step_7b_r2.json). Keys come from four disjoint ranges,
each with one query rotation and one source, walked in BLOCK_N tiles of
consecutive stream indices (so consecutive positions: rope_tl.rotate_tile):

    1. cached sinks     u in [0, min(sinks, n))                 rows u
    2. cached window    u in [max(sinks, t0-window+1), n)       ring rows
    3. new sinks        u in [n, min(sinks, t1+1))              k_new rows
    4. new window       u in [max(n, sinks, t0-window+1), t1+1) k_new rows

(t0, t1: first and last query of this program's BLOCK_M tile.) Grid:
(query tiles of the longest sequence, B, Hq); a GQA head re-reads its KV tile
per query head, which the L2 absorbs.

FP8 caches (constexpr FP8; cache/kv_fp8.py): ranges 1 and 2 read e4m3 rows and
their scales (K_SCALE/V_SCALE [slots, Hkv, cap]), folded into the scores and the
softmax weights as in decode (kernels/kv_fp8_tl.py); ranges 3 and 4 are this step's
tokens, attended as computed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels import rope_tl
from swiftinfer_core.kernels.triton_shapes import check_triton_heads, fit_tiles, max_shared_memory
from swiftinfer_core.kernels.triton_common import LOG2E, dot_precision, interpreting, mma_dtype, padded, score


@triton.jit
def _attend(acc, m_i, l_i, q1, q2, k1, k2, v, visible, dist, slope, scale_log2, SCALE_CAP, CAP_LOG2,
            HAS_CAP: tl.constexpr, HAS_ALIBI: tl.constexpr, MMA: tl.constexpr, PREC: tl.constexpr,
            ks, vs, SCALED: tl.constexpr):
    """Online-softmax update with one key tile. q*: [BLOCK_M, HALF_PAD] (MMA dtype),
    k*: rotated [BLOCK_N, HALF_PAD] float32, v [BLOCK_N, D_PAD], visible [BLOCK_M, BLOCK_N],
    dist [BLOCK_M, BLOCK_N] query pos - key pos (ALiBi), slope * log2(e) of this head.
    SCALED: k and v are e4m3 rows, ks/vs [BLOCK_N] their scales."""
    s = tl.dot(q1, tl.trans(k1.to(MMA)), input_precision=PREC)
    s += tl.dot(q2, tl.trans(k2.to(MMA)), input_precision=PREC)
    if SCALED:
        s = s * ks[None, :]
    s = score(s, scale_log2, SCALE_CAP, CAP_LOG2, HAS_CAP)
    if HAS_ALIBI:
        s -= slope * dist.to(tl.float32)
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if SCALED:
        p = p * vs[None, :]
    acc = acc * alpha[:, None] + tl.dot(p.to(MMA), v.to(MMA), input_precision=PREC)
    return acc, m_new, l_i


@triton.jit
def _scales(ksc, vsc, row, valid, FP8: tl.constexpr):
    """Row scales [BLOCK_N] of K and V (FP8), else placeholders _attend ignores."""
    if FP8:
        return tl.load(ksc + row, mask=valid, other=0.0), tl.load(vsc + row, mask=valid, other=0.0)
    else:
        return 1.0, 1.0


@triton.jit
def _prefill_kernel(
    Q, K_NEW, V_NEW, K_CACHE, V_CACHE, K_SCALE, V_SCALE, OUT, SLOTS, STARTS, CU, FREQS, SLOPES,
    sq_t, sq_h, sn_t, sn_h, sc_s, sc_h, sc_r, ss_s, ss_h, so_t, so_h,
    scale_log2, SINKS, WINDOW, SLIDING, SCALE_CAP, CAP_LOG2,
    GROUP: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_CAP: tl.constexpr, HAS_ALIBI: tl.constexpr, MMA: tl.constexpr, PREC: tl.constexpr, FP8: tl.constexpr,
    FAST: tl.constexpr,
):
    mt = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    kvh = h // GROUP
    slot = tl.maximum(tl.load(SLOTS + b).to(tl.int64), 0)
    n = tl.load(STARTS + b).to(tl.int64)
    r0 = tl.load(CU + b)
    c = tl.load(CU + b + 1) - r0
    cap = SINKS + WINDOW
    shift = tl.maximum(n + c - cap, 0)  # layout.rope_shift(n + c - 1)

    m0 = mt * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)  # query offsets inside the chunk
    offs_n = tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, HALF_PAD)  # head dims padded to powers of two (80, 96 -> 128)
    offs_d = tl.arange(0, D_PAD)
    hmask = (offs_h < HALF)[None, :]
    dmask = (offs_d < 2 * HALF)[None, :]
    qmask = offs_m < c
    t0 = n + m0
    t1 = n + tl.minimum(m0 + BLOCK_M, c) - 1  # may be < t0: empty tile, loops run 0 times

    f = tl.load(FREQS + offs_h, mask=offs_h < HALF, other=0.0)
    q_ptr = Q + (r0 + offs_m)[:, None] * sq_t + h * sq_h + offs_h[None, :]
    q1 = tl.load(q_ptr, mask=qmask[:, None] & hmask, other=0.0).to(tl.float32)
    q2 = tl.load(q_ptr + HALF, mask=qmask[:, None] & hmask, other=0.0).to(tl.float32)
    slope = tl.load(SLOPES + h) * 1.4426950408889634 if HAS_ALIBI else 0.0
    t = n + offs_m  # stream index of each query
    reach = SLIDING  # a local (sliding-window) layer sees key u only while t - u < it (else 2**62)
    pw = ((n - shift).to(tl.int32) + offs_m).to(tl.float32)  # t - shift
    pk = tl.minimum(n + offs_m, cap - 1).to(tl.float32)  # min(t, cap-1)
    cw, sw = rope_tl.cos_sin(pw[:, None], f[None, :], FAST)
    ck, sk = rope_tl.cos_sin(pk[:, None], f[None, :], FAST)
    qw1, qw2 = rope_tl.rotate(q1, q2, cw, sw)
    qs1, qs2 = rope_tl.rotate(q1, q2, ck, sk)
    qw1, qw2, qs1, qs2 = qw1.to(MMA), qw2.to(MMA), qs1.to(MMA), qs2.to(MMA)
    ci, si = rope_tl.offset_table(f, BLOCK_N, FAST)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    kc = K_CACHE + slot * sc_s + kvh * sc_h
    vc = V_CACHE + slot * sc_s + kvh * sc_h
    ksc = K_SCALE + slot * ss_s + kvh * ss_h  # FP8 only: row scales
    vsc = V_SCALE + slot * ss_s + kvh * ss_h
    kn = K_NEW + r0 * sn_t + kvh * sn_h
    vn = V_NEW + r0 * sn_t + kvh * sn_h

    # 1. cached sinks: visible to every query of the step
    n_sink = tl.minimum(n, SINKS).to(tl.int32)
    for k0 in range(0, n_sink, BLOCK_N):
        u = k0 + offs_n
        valid = u < n_sink
        kp = kc + u[:, None] * sc_r + offs_h[None, :]
        k1 = tl.load(kp, mask=valid[:, None] & hmask, other=0.0).to(tl.float32)
        k2 = tl.load(kp + HALF, mask=valid[:, None] & hmask, other=0.0).to(tl.float32)
        v = tl.load(vc + u[:, None] * sc_r + offs_d[None, :], mask=valid[:, None] & dmask, other=0.0)
        k1, k2 = rope_tl.rotate_tile(k1, k2, k0, f, ci, si, FAST)
        vis = valid[None, :] & (t[:, None] - u[None, :] < reach)
        dist = pk[:, None] - u.to(tl.float32)[None, :]
        ks, vs = _scales(ksc, vsc, u, valid, FP8)
        acc, m_i, l_i = _attend(acc, m_i, l_i, qs1, qs2, k1, k2, v, vis, dist, slope, scale_log2, SCALE_CAP, CAP_LOG2,
                                HAS_CAP, HAS_ALIBI, MMA, PREC, ks, vs, FP8)

    # 2. cached window tokens still in reach of this query tile
    lo = tl.maximum(t0 - WINDOW + 1, SINKS)
    cnt = tl.maximum(n - lo, 0).to(tl.int32)
    ring0 = ((lo - SINKS) % WINDOW).to(tl.int32)
    du = (lo - n).to(tl.int32)  # key offset relative to n (negative)
    pos0 = (lo - shift).to(tl.int32)
    for k0 in range(0, cnt, BLOCK_N):
        i = k0 + offs_n
        valid = i < cnt
        r = ring0 + i
        row = SINKS + tl.where(r >= WINDOW, r - WINDOW, r)
        row = tl.where(valid, row, 0)
        kp = kc + row[:, None] * sc_r + offs_h[None, :]
        k1 = tl.load(kp, mask=valid[:, None] & hmask, other=0.0).to(tl.float32)
        k2 = tl.load(kp + HALF, mask=valid[:, None] & hmask, other=0.0).to(tl.float32)
        v = tl.load(vc + row[:, None] * sc_r + offs_d[None, :], mask=valid[:, None] & dmask, other=0.0)
        k1, k2 = rope_tl.rotate_tile(k1, k2, pos0 + k0, f, ci, si, FAST)
        # key u = n + du + i; query t = n + offs_m: distances need no stream index
        vis = valid[None, :] & ((du + i)[None, :] >= offs_m[:, None] - WINDOW + 1)
        vis = vis & (offs_m[:, None] - (du + i)[None, :] < reach)
        dist = (offs_m[:, None] - (du + i)[None, :]).to(tl.float32)
        ks, vs = _scales(ksc, vsc, row, valid, FP8)
        acc, m_i, l_i = _attend(acc, m_i, l_i, qw1, qw2, k1, k2, v, vis, dist, slope, scale_log2, SCALE_CAP, CAP_LOG2,
                                HAS_CAP, HAS_ALIBI, MMA, PREC, ks, vs, FP8)

    # 3. this step's sink tokens (only while the stream is shorter than sinks)
    cnt = tl.maximum(tl.minimum(t1 + 1, SINKS) - n, 0).to(tl.int32)
    for k0 in range(0, cnt, BLOCK_N):
        i = k0 + offs_n  # offset into the chunk
        valid = i < cnt
        kp = kn + i[:, None] * sn_t + offs_h[None, :]
        k1 = tl.load(kp, mask=valid[:, None] & hmask, other=0.0).to(tl.float32)
        k2 = tl.load(kp + HALF, mask=valid[:, None] & hmask, other=0.0).to(tl.float32)
        v = tl.load(vn + i[:, None] * sn_t + offs_d[None, :], mask=valid[:, None] & dmask, other=0.0)
        k1, k2 = rope_tl.rotate_tile(k1, k2, n.to(tl.int32) + k0, f, ci, si, FAST)
        vis = valid[None, :] & (i[None, :] <= offs_m[:, None]) & (offs_m[:, None] - i[None, :] < reach)
        dist = pk[:, None] - (n + i).to(tl.float32)[None, :]
        acc, m_i, l_i = _attend(acc, m_i, l_i, qs1, qs2, k1, k2, v, vis, dist, slope, scale_log2, SCALE_CAP, CAP_LOG2,
                                HAS_CAP, HAS_ALIBI, MMA, PREC, 1.0, 1.0, False)

    # 4. this step's window tokens, causal and within the window
    lo = tl.maximum(tl.maximum(t0 - WINDOW + 1, SINKS), n)
    cnt = tl.maximum(t1 + 1 - lo, 0).to(tl.int32)
    du = (lo - n).to(tl.int32)  # >= 0
    pos0 = (lo - shift).to(tl.int32)
    for k0 in range(0, cnt, BLOCK_N):
        i = k0 + offs_n
        valid = i < cnt
        ku = du + i
        kp = kn + ku[:, None] * sn_t + offs_h[None, :]
        k1 = tl.load(kp, mask=valid[:, None] & hmask, other=0.0).to(tl.float32)
        k2 = tl.load(kp + HALF, mask=valid[:, None] & hmask, other=0.0).to(tl.float32)
        v = tl.load(vn + ku[:, None] * sn_t + offs_d[None, :], mask=valid[:, None] & dmask, other=0.0)
        k1, k2 = rope_tl.rotate_tile(k1, k2, pos0 + k0, f, ci, si, FAST)
        vis = valid[None, :] & (ku[None, :] <= offs_m[:, None]) & (ku[None, :] >= offs_m[:, None] - WINDOW + 1)
        vis = vis & (offs_m[:, None] - ku[None, :] < reach)
        dist = (offs_m[:, None] - ku[None, :]).to(tl.float32)
        acc, m_i, l_i = _attend(acc, m_i, l_i, qw1, qw2, k1, k2, v, vis, dist, slope, scale_log2, SCALE_CAP, CAP_LOG2,
                                HAS_CAP, HAS_ALIBI, MMA, PREC, 1.0, 1.0, False)

    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_ptr = OUT + (r0 + offs_m)[:, None] * so_t + h * so_h + offs_d[None, :]
    tl.store(o_ptr, o.to(OUT.dtype.element_ty), mask=qmask[:, None] & dmask)


def prefill_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    starts: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_q_len: int,
    freqs: torch.Tensor,
    scale: float,
    sinks: int,
    window: int,
    *,
    out: torch.Tensor | None = None,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 8,  # 4 warps spill at 64x64 tiles, head_dim 128 (cuobjdump -res-usage)
    sliding_window: int = 0,
    alibi: torch.Tensor | None = None,
    softcap: float = 0.0,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Streaming attention of a packed step over old cache + new K/V; returns
    out [T, Hq, D]. Does not write the cache (write_cache.write_kv does).
    sliding_window / alibi [Hq] / softcap: as decode_attention (reference.LayerAttn).
    k_scale/v_scale [slots, Hkv, cap] float32: the caches are e4m3 (cache/kv_fp8.py)."""
    T, hq, D = q.shape
    hkv, cap = k_cache.shape[1], k_cache.shape[2]
    check_triton_heads(D, hq, hkv)
    assert cap == sinks + window  # the caller's cache and layout agree (invariant, not input)
    assert q.stride(-1) == 1 and k_new.stride() == v_new.stride() and k_new.stride(-1) == 1
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    if out is None:
        out = torch.empty((T, hq, D), dtype=q.dtype, device=q.device)
    B = slots.shape[0]
    if T == 0 or B == 0:
        return out
    fp8 = k_scale is not None
    assert not fp8 or (k_scale.stride() == v_scale.stride() and k_scale.stride(-1) == 1)
    ks, vs = (k_scale, v_scale) if fp8 else (k_cache, v_cache)  # unused pointers without FP8
    tile_bytes = max(k_cache.element_size(), q.element_size())  # fp8 tiles: sized as q's dtype (converted in registers)
    block_n, stages = fit_tiles(padded(D), tile_bytes, block_m, block_n, 3, max_shared_memory(q.device))
    _prefill_kernel[(triton.cdiv(max_q_len, block_m), B, hq)](
        q, k_new, v_new, k_cache, v_cache, ks, vs, out, slots, starts, cu_seqlens, freqs, alibi if alibi is not None else freqs,
        q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), ks.stride(0), ks.stride(1), out.stride(0), out.stride(1),
        scale * LOG2E, sinks, window, sliding_window or 1 << 62, scale / softcap if softcap > 0 else 0.0, softcap * LOG2E,
        GROUP=hq // hkv, HALF=D // 2, HALF_PAD=padded(D) // 2, D_PAD=padded(D), BLOCK_M=block_m, BLOCK_N=block_n,
        HAS_CAP=softcap > 0, HAS_ALIBI=alibi is not None,
        MMA=mma_dtype(q.dtype), PREC=dot_precision(q.dtype), FP8=fp8, FAST=not interpreting(), num_warps=num_warps, num_stages=stages,
    )
    return out
