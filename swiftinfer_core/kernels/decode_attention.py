"""Decode attention over the streaming cache, position shift fused in (flash-decoding).

One new token per sequence: q [B, Hq, D] (pre-RoPE) for stream index ``t = n``
(``n`` = tokens fed before it), cache [slots, Hkv, capacity, D] (pre-RoPE, one
layer). The kernel walks the attended keys in *stream order*: logical index
``j`` in ``[0, fill)``, ``fill = min(t+1, capacity)``. That index is also the
key's cache position (layout.cache_positions), so positions inside a tile are
consecutive and rotate with the cheap angle-addition table (rope_tl.py), and the
query rotates at ``fill - 1`` = ``query_position(t)``. Logical index -> row:

    j <  ns = min(sinks, fill):  row j                           (a sink)
    j >= ns:                     row sinks + (base + j - ns) % window
                                 base = (window_start(t) - sinks) % window

i.e. a gather that is contiguous except at one ring wrap: each row is D
contiguous elements, so loads stay coalesced. Nothing is re-rotated in memory.

The new token's K/V: with ``fuse_write`` (default) the kernel takes k_new/v_new
[B, Hkv, D], scores it directly (it sits at the query's own position, so its
rotation cancels: score = q . k unrotated), and the program that owns logical
index ``fill-1`` stores it in its ring row. That row held the token that just
fell out of the window, which no program reads, so there is no race. Without
``fuse_write`` the caller has written it already (write_cache.py) and it is read
from the cache like any key.

Split-K: grid (B * Hkv, splits); split ``s`` covers logical [s*L, (s+1)*L).
``splits`` depends only on shapes (B, Hkv, capacity, SM count), so the launch is
CUDA-graph capturable; splits past a sequence's fill run zero loop iterations
and write m = -inf, l = 0. A second kernel combines the splits. One program
handles all ``G = Hq/Hkv`` query heads of its KV head, so each K/V tile is read
once per group (GQA); the group is padded to 16 rows for tl.dot.
A slot id < 0 marks a padding row (static batch in a graph): output zeros.

FP8 caches (constexpr FP8; cache/kv_fp8.py): e4m3 rows with a float32 scale per
row and head in K_SCALE/V_SCALE [slots, Hkv, cap]. The scales are folded into
the scores and the softmax weights (kernels/kv_fp8_tl.py: exact for power-of-two
scales), the new token is scored from k_new as computed and stored quantised.
With a bf16/fp16 query (constexpr F16) the tiles run in float16 instead
(kernels/kv_fp8_decode_tl.py: V converted in registers as int32 words, the tile's
RoPE angle on the query rows); a float32 query, or a head_dim not a multiple of 4,
keeps the float32 path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels import kv_fp8_tl, rope_tl
from swiftinfer_core.kernels import kv_fp8_decode_tl as f16
from swiftinfer_core.kernels.decode_splits import combine_group, decode_combine_kernel, decode_splits, decode_workspace
from swiftinfer_core.kernels.triton_common import LOG2E, dot_precision, interpreting, mma_dtype, padded, score, sm_count
from swiftinfer_core.kernels.triton_shapes import check_triton_heads, fit_tiles, max_shared_memory


@triton.jit
def _load_k(k_base, j0, hi, ns, base, SINKS, WINDOW, sc_r, offs_n, offs_h, HALF: tl.constexpr):
    """K halves [BLOCK_N, HALF_PAD] x2 of logical keys j0 .. j0+BLOCK_N-1 (masked at
    hi: rows past it cost no memory traffic; padded head dims read as 0), in the
    cache dtype; their rows and validity [BLOCK_N]."""
    j = j0 + offs_n
    valid = j < hi
    r = (base + j0 - ns) + offs_n  # ring offset: < 2 * WINDOW (rows past hi are masked, never read)
    r = tl.where(r >= WINDOW, r - WINDOW, r)
    row = tl.where(j < ns, j, SINKS + r)
    kmask = valid[:, None] & (offs_h < HALF)[None, :]
    kp = k_base + row[:, None] * sc_r + offs_h[None, :]
    k1 = tl.load(kp, mask=kmask, other=0.0)
    k2 = tl.load(kp + HALF, mask=kmask, other=0.0)
    return k1, k2, row, valid


@triton.jit
def _decode_split_kernel(
    Q, K_NEW, V_NEW, K_CACHE, V_CACHE, K_SCALE, V_SCALE, SLOTS, STARTS, FREQS, SLOPES, ACC, ML, SEM, OUT,
    sq_b, sq_h, sn_b, sn_h, sc_s, sc_h, sc_r, ss_s, ss_h, so_b, so_h,
    scale_log2, SINKS, WINDOW, SPLIT_LEN, SLIDING, SCALE_CAP, CAP_LOG2,
    HKV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HALF: tl.constexpr,
    HALF_PAD: tl.constexpr, D_PAD: tl.constexpr, HAS_CAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_SLIDING: tl.constexpr,
    BLOCK_N: tl.constexpr, FUSE_NEW: tl.constexpr, MMA: tl.constexpr, PREC: tl.constexpr,
    STAGES: tl.constexpr, FAST: tl.constexpr, FUSED_COMBINE: tl.constexpr, SPLIT_PAD: tl.constexpr, FP8: tl.constexpr,
    F16: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    nsplit = tl.num_programs(1)
    b = pid // HKV
    kvh = pid % HKV

    slot = tl.load(SLOTS + b).to(tl.int64)
    t = tl.load(STARTS + b).to(tl.int64)  # stream index of the query
    cap = SINKS + WINDOW
    fill = tl.minimum(t + 1, cap).to(tl.int32)
    fill = tl.where(slot >= 0, fill, 0)
    slot = tl.maximum(slot, 0)
    ns = tl.minimum(SINKS, fill)  # sink tokens present
    ws = tl.maximum(t - WINDOW + 1, SINKS)  # first window token in reach
    base = ((ws - SINKS) % WINDOW).to(tl.int32)  # its ring offset

    offs_g = tl.arange(0, GROUP_PAD)
    offs_h = tl.arange(0, HALF_PAD)  # head dims padded to powers of two (80, 96 -> 128)
    offs_d = tl.arange(0, D_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    gmask = offs_g < GROUP
    hmask = offs_h < HALF
    qh = kvh * GROUP + offs_g  # query heads of this group

    f = tl.load(FREQS + offs_h, mask=hmask, other=0.0)
    q_ptr = Q + b * sq_b + qh[:, None] * sq_h + offs_h[None, :]
    qmask = gmask[:, None] & hmask[None, :]
    q1 = tl.load(q_ptr, mask=qmask, other=0.0).to(tl.float32)  # [G_PAD, HALF_PAD]
    q2 = tl.load(q_ptr + HALF, mask=qmask, other=0.0).to(tl.float32)
    if HAS_ALIBI:  # slope * log2(e) of each query head: score -= slope * (query pos - key pos)
        slope = tl.load(SLOPES + qh, mask=gmask, other=0.0) * 1.4426950408889634
    cq, sq = rope_tl.cos_sin((fill - 1).to(tl.float32), f, FAST)
    qr1, qr2 = rope_tl.rotate(q1, q2, cq[None, :], sq[None, :])
    ci, si = rope_tl.offset_table(f, BLOCK_N, FAST)  # [BLOCK_N, D/2]
    if F16:  # e4m3 cache, 16-bit query: fp16 operands (kv_fp8_decode_tl.py); q's 2**k joins the K row scales
        qt1, qt2, q_pow2, c_step, s_step = f16.query_at(q1, q2, (fill - 1 - split * SPLIT_LEN).to(tl.float32), f, BLOCK_N, FAST)
        ci = ci.to(tl.float16)
        si = si.to(tl.float16)
        r_i = tl.full([], 2.0**-126, tl.float32)  # running max of the V row scales: acc in units of r_i * 2**-15
    else:
        qr1 = qr1.to(MMA)
        qr2 = qr2.to(MMA)
        q_pow2 = 1.0

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    if F16:  # V as four strided tiles (kv_fp8_decode_tl.load_v): four accumulators, dims 4c + j
        a0 = tl.zeros([GROUP_PAD, D_PAD // 4], tl.float32)
        a1 = tl.zeros([GROUP_PAD, D_PAD // 4], tl.float32)
        a2 = tl.zeros([GROUP_PAD, D_PAD // 4], tl.float32)
        a3 = tl.zeros([GROUP_PAD, D_PAD // 4], tl.float32)
    else:
        acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)

    k_base = K_CACHE + slot * sc_s + kvh * sc_h
    v_base = V_CACHE + slot * sc_s + kvh * sc_h
    ks_base = K_SCALE + slot * ss_s + kvh * ss_h  # FP8 only: row scales
    vs_base = V_SCALE + slot * ss_s + kvh * ss_h
    lo = split * SPLIT_LEN
    if FUSE_NEW:
        n_cached = fill - 1  # logical fill-1 is the new token, taken from k_new
    else:
        n_cached = fill
    hi = tl.minimum(lo + SPLIT_LEN, n_cached)
    # STAGES > 1: Triton pipelines the K/V tile loads (cp.async into shared memory,
    # STAGES-1 tiles in flight while one computes). Without it each program waits
    # a full memory latency per tile and decode reaches only ~45% of bandwidth.
    for j0 in tl.range(lo, hi, BLOCK_N, num_stages=STAGES):
        k1, k2, row, in_tile = _load_k(k_base, j0, hi, ns, base, SINKS, WINDOW, sc_r, offs_n, offs_h, HALF)
        j = j0 + offs_n
        if HAS_SLIDING:  # a local (sliding-window) layer sees key u (its stream index) only while t - u < SLIDING
            u = tl.where(j < ns, j, ws + (j - ns))
            valid = (j < hi) & (t - u < SLIDING)
        else:
            valid = j < hi
        if F16:
            s, qt1, qt2 = f16.scores(qt1, qt2, k1, k2, ci, si, c_step, s_step, PREC, FAST)
        else:
            kr1, kr2 = rope_tl.rotate_tile(k1.to(tl.float32), k2.to(tl.float32), j0, f, ci, si, FAST)
            s = tl.dot(qr1, tl.trans(kr1.to(MMA)), input_precision=PREC)
            s += tl.dot(qr2, tl.trans(kr2.to(MMA)), input_precision=PREC)  # [G_PAD, BLOCK_N]
        if FP8 and not HAS_CAP:  # row scale (and q's) with the softmax scale in one multiply per key (all 2**k: exact)
            s = s * (tl.load(ks_base + row, mask=in_tile, other=0.0) * (q_pow2 * scale_log2))[None, :]
        elif FP8:
            s = score(s * (tl.load(ks_base + row, mask=in_tile, other=0.0) * q_pow2)[None, :], scale_log2, SCALE_CAP, CAP_LOG2, HAS_CAP)
        else:
            s = score(s, scale_log2, SCALE_CAP, CAP_LOG2, HAS_CAP)
        if HAS_ALIBI:  # query at cache position fill-1, key j at j
            s -= slope[:, None] * (fill - 1 - j).to(tl.float32)[None, :]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a local layer's tile may see nothing
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if F16:
            a0, a1, a2, a3, r_i = f16.accumulate(a0, a1, a2, a3, alpha, p, tl.load(vs_base + row, mask=in_tile, other=0.0), r_i,
                                                 v_base, row, in_tile, sc_r, 2 * HALF, D_PAD, PREC, FAST)
        else:
            v = tl.load(v_base + row[:, None] * sc_r + offs_d[None, :], mask=in_tile[:, None] & (offs_d < 2 * HALF)[None, :], other=0.0)
            if FP8:
                p = p * tl.load(vs_base + row, mask=in_tile, other=0.0)[None, :]
            acc = acc * alpha[:, None] + tl.dot(p.to(MMA), v.to(MMA), input_precision=PREC)
        m_i = m_new
    if F16:
        acc = (f16.interleave(a0, a1, a2, a3, GROUP_PAD, D_PAD) * 2.0**-15) * r_i  # to plain units

    if FUSE_NEW:
        t_log = fill - 1
        own = (fill > 0) & (t_log >= lo) & (t_log < lo + SPLIT_LEN)
        kn_ptr = K_NEW + b * sn_b + kvh * sn_h
        vn_ptr = V_NEW + b * sn_b + kvh * sn_h
        kn1 = tl.load(kn_ptr + offs_h, mask=hmask, other=0.0).to(tl.float32)
        kn2 = tl.load(kn_ptr + HALF + offs_h, mask=hmask, other=0.0).to(tl.float32)
        dmask = offs_d < 2 * HALF
        vn = tl.load(vn_ptr + offs_d, mask=dmask, other=0.0)
        s_new = score(tl.sum(q1 * kn1[None, :] + q2 * kn2[None, :], 1), scale_log2, SCALE_CAP, CAP_LOG2, HAS_CAP)  # [G_PAD]
        s_new = tl.where(own, s_new, float("-inf"))
        m_new = tl.maximum(m_i, s_new)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s_new - m_safe)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * vn.to(tl.float32)[None, :]
        m_i = m_new
        # store the new token in its ring row (= the row of the evicted token)
        row_t = tl.where(t < SINKS, t, SINKS + (tl.maximum(t - SINKS, 0) % WINDOW))
        wmask = offs_d < tl.where(own, 2 * HALF, 0)
        if FP8:
            kn = tl.load(kn_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
            kv_fp8_tl.store_row(k_base + row_t * sc_r + offs_d, ks_base + row_t, kn, wmask, own)
            kv_fp8_tl.store_row(v_base + row_t * sc_r + offs_d, vs_base + row_t, vn.to(tl.float32), wmask, own)
        else:
            tl.store(k_base + row_t * sc_r + offs_d, tl.load(kn_ptr + offs_d, mask=dmask), mask=wmask)
            tl.store(v_base + row_t * sc_r + offs_d, vn, mask=wmask)

    # partials: ACC [B, Hq, splits, D] (unnormalised), ML [B, Hq, splits, 2] (max, sum)
    part = (b * (HKV * GROUP) + qh) * nsplit + split  # [G_PAD]
    tl.store(ACC + part[:, None] * D_PAD + offs_d[None, :], acc, mask=gmask[:, None])
    tl.store(ML + part * 2, m_i, mask=gmask)
    tl.store(ML + part * 2 + 1, l_i, mask=gmask)

    if FUSED_COMBINE:
        combine_group(ACC, ML, SEM, OUT, pid, b, kvh, nsplit, so_b, so_h, HKV, GROUP, 2 * HALF, D_PAD, SPLIT_PAD)


def f16_tiles(q_dtype: torch.dtype, fp8: bool, head_dim: int) -> bool:
    """Whether the kernel runs its float16 tiles (kernels/kv_fp8_decode_tl.py): an FP8
    cache read with a bf16/fp16 query, head_dim a multiple of 4 (V's int32 words)."""
    return fp8 and q_dtype != torch.float32 and head_dim % 4 == 0


def decode_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    starts: torch.Tensor,
    freqs: torch.Tensor,
    scale: float,
    sinks: int,
    window: int,
    *,
    fuse_write: bool = True,
    out: torch.Tensor | None = None,
    block_n: int = 64,
    num_warps: int = 4,
    waves: int | None = None,
    stages: int = 3,
    splits: tuple[int, int] | None = None,
    workspace: tuple[torch.Tensor, ...] | None = None,
    fused_combine: bool = False,
    sliding_window: int = 0,
    alibi: torch.Tensor | None = None,
    softcap: float = 0.0,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    maxnreg: int | None = None,
) -> torch.Tensor:
    """q [B, Hq, D], k_new/v_new [B, Hkv, D] (ignored unless fuse_write),
    caches [slots, Hkv, cap, D]; slots [B] int32, starts [B] int64 (= n).
    k_scale/v_scale [slots, Hkv, cap] float32: the caches are e4m3 (cache/kv_fp8.py).
    Returns out [B, Hq, D] in q's dtype. No host sync; shapes fix the grid.

    workspace: (acc [B,Hq,S,D] f32, ml [B,Hq,S,2] f32[, sem [B*Hkv] int32 zeros]).
    fused_combine: the last split program of each group combines (one launch
    instead of two; needs sem, which it leaves zeroed).
    sliding_window > 0: a local layer (key u seen only while t - u < it);
    alibi [Hq] float32 slopes (score -= slope * cache distance); softcap > 0:
    score = softcap * tanh(score / softcap). See reference.LayerAttn.
    maxnreg: registers per thread cap for the split kernel (ptxas may spill below it),
    to trade spills for more programs per SM (bench/kernels_decode.py --sweep)."""
    B, hq, D = q.shape
    hkv, cap = k_cache.shape[1], k_cache.shape[2]
    check_triton_heads(D, hq, hkv)
    assert cap == sinks + window  # the caller's cache and layout agree (invariant, not input)
    assert q.stride(-1) == 1 and k_new.stride(-1) == 1 and v_new.stride(-1) == 1
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    assert k_new.stride() == v_new.stride()
    fp8 = k_scale is not None
    assert not fp8 or (k_scale.stride() == v_scale.stride() and k_scale.stride(-1) == 1)
    ks, vs = (k_scale, v_scale) if fp8 else (k_cache, v_cache)  # unused pointers without FP8
    group = hq // hkv
    group_pad = max(16, triton.next_power_of_2(group))
    tile_bytes = max(k_cache.element_size(), q.element_size())  # fp8 tiles: sized as q's dtype (converted in registers)
    block_n, stages = fit_tiles(padded(D), tile_bytes, group_pad, block_n, stages, max_shared_memory(q.device))
    if splits is None:
        splits = decode_splits(B, hkv, cap, block_n, sm_count(q.device), waves)
    nsplit, split_len = splits
    assert nsplit * split_len >= cap and split_len % block_n == 0
    if workspace is None:
        workspace = decode_workspace(B, hq, hkv, D, nsplit, q.device)
    acc, ml = workspace[0], workspace[1]
    sem = workspace[2] if len(workspace) > 2 else None
    assert not fused_combine or sem is not None
    if out is None:
        out = torch.empty((B, hq, D), dtype=q.dtype, device=q.device)
    split_pad = max(2, triton.next_power_of_2(nsplit))
    assert acc.shape[-1] == padded(D)
    _decode_split_kernel[(B * hkv, nsplit)](
        q, k_new, v_new, k_cache, v_cache, ks, vs, slots, starts, freqs, alibi if alibi is not None else freqs,
        acc, ml, sem if sem is not None else ml, out,
        q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), ks.stride(0), ks.stride(1), out.stride(0), out.stride(1),
        scale * LOG2E, sinks, window, split_len, sliding_window or 1 << 62, scale / softcap if softcap > 0 else 0.0, softcap * LOG2E,
        HKV=hkv, GROUP=group, GROUP_PAD=group_pad, HALF=D // 2,
        HALF_PAD=padded(D) // 2, D_PAD=padded(D), HAS_CAP=softcap > 0, HAS_ALIBI=alibi is not None, HAS_SLIDING=sliding_window > 0,
        BLOCK_N=block_n, FUSE_NEW=fuse_write, MMA=mma_dtype(q.dtype), STAGES=stages, FAST=not interpreting(),
        PREC=dot_precision(q.dtype), FUSED_COMBINE=fused_combine, SPLIT_PAD=split_pad, FP8=fp8,
        F16=f16_tiles(q.dtype, fp8, D),
        num_warps=num_warps, maxnreg=maxnreg,
    )
    if not fused_combine:
        decode_combine_kernel[(B * hq,)](
            acc, ml, out, out.stride(0), out.stride(1), nsplit, HQ=hq, D=D, D_PAD=padded(D), SPLIT_PAD=split_pad, num_warps=4,
        )
    return out
