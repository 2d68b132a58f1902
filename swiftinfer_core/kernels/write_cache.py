"""Store a step's pre-RoPE K/V in each slot's ring: the Triton twin of
reference.write_cache_ref.

Packed step: token ``i`` of sequence ``b`` (rows cu[b]..cu[b+1]) is stream index
``u = n_b + i``. After the step the slot holds ``cached_after(n_b + c_b)``, so
the token survives iff ``u < sinks`` or ``u >= max(sinks, n_b + c_b - window)``
(a chunk longer than the window drops its own early tokens). A survivor goes to
``layout.row(u)``. Survivors of one sequence have distinct rows, so the
programs never collide: one program per token, all KV heads at once
([Hkv, D] tile). Run it after the step's attention has read the old rows.

FP8 caches (cache/kv_fp8.py; ``k_scale``/``v_scale`` [slots, Hkv, cap] float32
given): each head's row is quantised here with its power-of-two scale
(kernels/kv_fp8_tl.py), bit-identical to ``Fp8KV.quantize``. FP8 is a constexpr:
the other dtypes compile the same kernel as before.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels import kv_fp8_tl


@triton.jit
def _write_kv_kernel(
    K_NEW, V_NEW, K_CACHE, V_CACHE, K_SCALE, V_SCALE, TOK_SEQ, SLOTS, STARTS, CU,
    sn_t, sn_h, sc_s, sc_h, sc_r, ss_s, ss_h, SINKS, WINDOW,
    HKV: tl.constexpr, HKV_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, FP8: tl.constexpr,
):
    tok = tl.program_id(0)
    b = tl.load(TOK_SEQ + tok)
    slot = tl.load(SLOTS + b).to(tl.int64)
    n = tl.load(STARTS + b).to(tl.int64)
    r0 = tl.load(CU + b)
    c = tl.load(CU + b + 1) - r0
    u = n + (tok - r0)  # stream index of this token
    keep = (u < SINKS) | (u >= tl.maximum(n + c - WINDOW, SINKS))
    keep = keep & (slot >= 0)
    row = tl.where(u < SINKS, u, SINKS + tl.maximum(u - SINKS, 0) % WINDOW)
    offs_h = tl.arange(0, HKV_PAD)
    offs_d = tl.arange(0, D_PAD)  # head dim padded to a power of two (80, 96 -> 128)
    mask = (offs_h[:, None] < tl.where(keep, HKV, 0)) & (offs_d[None, :] < D)
    src = tok * sn_t + offs_h[:, None] * sn_h + offs_d[None, :]
    dst = tl.maximum(slot, 0) * sc_s + offs_h[:, None] * sc_h + row * sc_r + offs_d[None, :]
    if FP8:  # [HKV_PAD, D_PAD] -> e4m3 rows and one scale per head
        kq, ks = kv_fp8_tl.quantize_rows(tl.load(K_NEW + src, mask=mask, other=0.0).to(tl.float32))
        vq, vs = kv_fp8_tl.quantize_rows(tl.load(V_NEW + src, mask=mask, other=0.0).to(tl.float32))
        tl.store(K_CACHE + dst, kq, mask=mask)
        tl.store(V_CACHE + dst, vq, mask=mask)
        sdst = tl.maximum(slot, 0) * ss_s + offs_h * ss_h + row
        hmask = offs_h < tl.where(keep, HKV, 0)
        tl.store(K_SCALE + sdst, ks, mask=hmask)
        tl.store(V_SCALE + sdst, vs, mask=hmask)
    else:
        tl.store(K_CACHE + dst, tl.load(K_NEW + src, mask=mask), mask=mask)
        tl.store(V_CACHE + dst, tl.load(V_NEW + src, mask=mask), mask=mask)


def write_kv(
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tok_seq: torch.Tensor,
    slots: torch.Tensor,
    starts: torch.Tensor,
    cu_seqlens: torch.Tensor,
    sinks: int,
    window: int,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """k_new/v_new [T, Hkv, D]; tok_seq [T] int32 (sequence of each packed row);
    slots/starts/cu_seqlens as in AttnBatch. Writes in place, no host sync.
    k_scale/v_scale [slots, Hkv, cap] float32: the caches are e4m3 (cache/kv_fp8.py)."""
    T, hkv, D = k_new.shape
    fp8 = k_scale is not None
    assert k_new.stride() == v_new.stride() and k_new.stride(-1) == 1
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    assert not fp8 or (k_scale.stride() == v_scale.stride() and k_scale.stride(-1) == 1)
    if T == 0:
        return
    ks, vs = (k_scale, v_scale) if fp8 else (k_cache, v_cache)  # unused pointers without FP8
    _write_kv_kernel[(T,)](
        k_new, v_new, k_cache, v_cache, ks, vs, tok_seq, slots, starts, cu_seqlens,
        k_new.stride(0), k_new.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        ks.stride(0), ks.stride(1), sinks, window,
        HKV=hkv, HKV_PAD=max(2, triton.next_power_of_2(hkv)), D=D, D_PAD=triton.next_power_of_2(D), FP8=fp8, num_warps=4,
    )
