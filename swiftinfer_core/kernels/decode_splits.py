"""Split-K for decode attention (decode_attention.py): how many splits a launch
takes, the partials' workspace, and the kernel that combines the partials when
the split programs do not combine themselves (fused_combine off), or the combine
the split programs run themselves (fused_combine on).

Partials: ACC [B, Hq, splits, D_PAD] float32 (unnormalised outputs), ML [B, Hq,
splits, 2] float32 (running max in the log2 domain, sum of weights)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.triton_common import padded


@triton.jit
def decode_combine_kernel(
    ACC, ML, OUT, so_b, so_h, NSPLIT,
    HQ: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, SPLIT_PAD: tl.constexpr,
):
    """One program per (b, query head): out = sum_s w_s acc_s / sum_s w_s l_s."""
    pid = tl.program_id(0)
    b = pid // HQ
    h = pid % HQ
    offs_s = tl.arange(0, SPLIT_PAD)
    offs_d = tl.arange(0, D_PAD)  # ACC rows are D_PAD wide
    smask = offs_s < NSPLIT
    idx = pid * NSPLIT + offs_s
    m = tl.load(ML + idx * 2, mask=smask, other=float("-inf"))
    l = tl.load(ML + idx * 2 + 1, mask=smask, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)  # 0 for empty splits
    den = tl.sum(w * l, 0)
    acc = tl.load(ACC + idx[:, None] * D_PAD + offs_d[None, :], mask=smask[:, None], other=0.0)
    o = tl.sum(w[:, None] * acc, 0) / tl.where(den > 0, den, 1.0)  # padding rows -> 0
    tl.store(OUT + b * so_b + h * so_h + offs_d, o.to(OUT.dtype.element_ty), mask=offs_d < D)


@triton.jit
def combine_group(ACC, ML, SEM, OUT, pid, b, kvh, nsplit, so_b, so_h, HKV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                  D_PAD: tl.constexpr, SPLIT_PAD: tl.constexpr):
    """The split kernel's fused combine (fused_combine): called by every split program
    of (b, kv head kvh) = program ``pid`` after storing its partials.
    The last of this (b, kv head)'s split programs to finish combines, so no
    second launch: all threads' partial stores are ordered before one
    acq_rel ticket (bar.sync, then the atomic), and the winner reads the
    others' partials after its acquire, through L2 (.cg). It then resets
    the counter for the next launch (next layer / step / graph replay)."""
    offs_d = tl.arange(0, D_PAD)
    tl.debug_barrier()
    ticket = tl.atomic_add(SEM + pid, 1, sem="acq_rel", scope="gpu")
    if ticket == nsplit - 1:
        offs_s = tl.arange(0, SPLIT_PAD)
        smask = offs_s < nsplit
        for g in tl.static_range(GROUP):
            idx = (b * (HKV * GROUP) + kvh * GROUP + g) * nsplit + offs_s
            m = tl.load(ML + idx * 2, mask=smask, other=float("-inf"), cache_modifier=".cg")
            l = tl.load(ML + idx * 2 + 1, mask=smask, other=0.0, cache_modifier=".cg")
            a = tl.load(ACC + idx[:, None] * D_PAD + offs_d[None, :], mask=smask[:, None], other=0.0, cache_modifier=".cg")
            m_max = tl.max(m, 0)
            m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
            w = tl.exp2(m - m_max)
            den = tl.sum(w * l, 0)
            o = tl.sum(w[:, None] * a, 0) / tl.where(den > 0, den, 1.0)
            tl.store(OUT + b * so_b + (kvh * GROUP + g) * so_h + offs_d, o.to(OUT.dtype.element_ty), mask=offs_d < D)
        tl.atomic_xchg(SEM + pid, 0, sem="relaxed", scope="gpu")


def decode_splits(batch: int, kv_heads: int, capacity: int, block_n: int, sms: int, waves: int | None = None) -> tuple[int, int]:
    """(splits, split_len) from shapes only: about ``waves`` programs per SM
    (default 2 when batch * kv_heads alone cannot fill the chip, else 1: the
    H200 sweep in bench/results/kernels_decode.json)."""
    if waves is None:
        waves = 2 if batch * kv_heads < sms else 1
    tiles = triton.cdiv(capacity, block_n)
    want = max(1, min(tiles, triton.cdiv(waves * sms, batch * kv_heads), 128))
    per = triton.cdiv(tiles, want)
    return triton.cdiv(tiles, per), per * block_n


def decode_workspace(B: int, hq: int, hkv: int, D: int, nsplit: int, device) -> tuple[torch.Tensor, ...]:
    """Split partials (head dim padded) and the fused-combine counters (zeros; kernels leave them zero)."""
    return (
        torch.empty((B, hq, nsplit, padded(D)), dtype=torch.float32, device=device),
        torch.empty((B, hq, nsplit, 2), dtype=torch.float32, device=device),
        torch.zeros((B * hkv,), dtype=torch.int32, device=device),
    )
