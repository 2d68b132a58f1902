"""Plain PyTorch streaming attention: the semantics every kernel must match, and
the CPU engine's attention. See ``cache/layout.py`` for the rules.

Shapes: q [T, Hq, D], k_new/v_new [T, Hkv, D] (pre-RoPE, this step's tokens),
k_cache/v_cache [slots, Hkv, capacity, D] (pre-RoPE, one layer), or FP8 caches
(cache/kv_fp8.Fp8KV): old rows are read dequantised, written rows quantised; this
step's own tokens are attended as computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swiftinfer_core.cache import kv_fp8
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.rope import rotate


@dataclass(frozen=True)
class LayerAttn:
    """How one layer attends over the shared streaming cache (see cache/layout.py);
    built once per model, read on every call."""

    freqs: torch.Tensor  # [D/2] float32; a 0 leaves that pair of dims unrotated (partial rotary, ALiBi)
    scale: float
    sliding_window: int = 0  # > 0: key u is also visible only if t - u < sliding_window (local layers)
    alibi: torch.Tensor | None = None  # [Hq] float32 slopes: score -= slope * (query pos - key pos)
    softcap: float = 0.0  # > 0: score = softcap * tanh(score / softcap), before masking and ALiBi


@dataclass
class _SeqPlan:
    slot: int
    r0: int
    c: int
    u: torch.Tensor  # [K] stream index of each key
    t: torch.Tensor  # [C] stream index of each query
    rows: torch.Tensor  # [K_old] cache rows to gather
    k_pos: torch.Tensor  # [K] rotation position of each key
    q_win_pos: torch.Tensor  # [C]
    q_sink_pos: torch.Tensor  # [C]
    is_sink: torch.Tensor  # [K] bool
    visible: torch.Tensor  # [C, K] bool


def plan_step(batch: AttnBatch, layout: StreamLayout, device) -> list[_SeqPlan]:
    """Index work shared by every layer of one step."""
    plans, r0 = [], 0
    for slot, n, c in zip(batch.slots_list, batch.starts_list, batch.q_lens_list):
        # keys any query n..n+c-1 may see: cached sinks, cached window still in reach, this step
        old = [u for u in layout.cached_after(n) if u < layout.sinks or u >= layout.window_start(n)]
        u = torch.tensor(old + list(range(n, n + c)), dtype=torch.long, device=device)
        t = torch.arange(n, n + c, device=device)
        shift = layout.rope_shift(n + c - 1)
        is_sink = u < layout.sinks
        visible = (u[None, :] <= t[:, None]) & (is_sink[None, :] | (u[None, :] >= t[:, None] - layout.window + 1))
        plans.append(
            _SeqPlan(
                slot=slot, r0=r0, c=c, u=u, t=t,
                rows=torch.tensor([layout.row(x) for x in old], dtype=torch.long, device=device),
                k_pos=torch.where(is_sink, u, u - shift),
                q_win_pos=t - shift,
                q_sink_pos=torch.clamp(t, max=layout.capacity - 1),
                is_sink=is_sink,
                visible=visible,
            )
        )
        r0 += c
    return plans


def streaming_attention_ref(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plans: list[_SeqPlan],
    freqs: torch.Tensor,
    scale: float,
    spec: LayerAttn | None = None,
) -> torch.Tensor:
    """Attention of this step's queries over sinks + window, before the step's
    K/V are written to the cache (see :func:`write_cache_ref`). Computes in float32
    (float64 inputs stay float64). ``spec`` adds a layer's sliding window, ALiBi
    slopes and soft-cap (its freqs and scale are not used: pass them as the others)."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_new.shape[1]
    for p in plans:
        sl = slice(p.r0, p.r0 + p.c)
        old = (p.slot, slice(None), p.rows)
        k = torch.cat([kv_fp8.read(k_cache, old, k_new.dtype).transpose(0, 1), k_new[sl]], dim=0)  # [K, Hkv, D]
        v = torch.cat([kv_fp8.read(v_cache, old, v_new.dtype).transpose(0, 1), v_new[sl]], dim=0)
        k_rot = rotate(k, p.k_pos, freqs).float().repeat_interleave(group, dim=1)  # [K, Hq, D]
        v = v.float().repeat_interleave(group, dim=1)
        q_win = rotate(q[sl], p.q_win_pos, freqs).float()
        q_sink = rotate(q[sl], p.q_sink_pos, freqs).float()
        s_win = torch.einsum("chd,khd->hck", q_win, k_rot)
        s_sink = torch.einsum("chd,khd->hck", q_sink, k_rot)
        scores = torch.where(p.is_sink[None, None, :], s_sink, s_win) * scale  # [Hq, C, K]
        visible = p.visible
        if spec is not None and spec.softcap > 0:
            scores = spec.softcap * torch.tanh(scores / spec.softcap)
        if spec is not None and spec.alibi is not None:
            # distance inside the cache, by the same rule as the rotations (layout.py)
            dist = torch.where(p.is_sink[None, :], p.q_sink_pos[:, None] - p.u[None, :], p.q_win_pos[:, None] - p.k_pos[None, :])
            scores = scores - spec.alibi.to(scores)[:, None, None] * dist[None].to(scores)
        if spec is not None and spec.sliding_window > 0:
            visible = visible & (p.t[:, None] - p.u[None, :] < spec.sliding_window)
        scores = scores.masked_fill(~visible[None], float("-inf"))
        out[sl] = torch.einsum("hck,khd->chd", torch.softmax(scores, dim=-1), v).to(q.dtype)
    return out


def surviving_rows(layout: StreamLayout, n: int, c: int) -> tuple[list[int], list[int]]:
    """For a step feeding stream tokens n..n+c-1: (offsets into the step, cache rows)
    of the tokens that are still cached after it, oldest first."""
    keep = [u for u in layout.cached_after(n + c) if u >= n]
    return [u - n for u in keep], [layout.row(u) for u in keep]


def write_cache_ref(
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: AttnBatch,
    layout: StreamLayout,
) -> None:
    """Store this step's pre-RoPE K/V in each slot's ring (O(1) per token); an
    Fp8KV cache quantises them as it stores them."""
    dev = k_new.device
    r0 = 0
    for slot, n, c in zip(batch.slots_list, batch.starts_list, batch.q_lens_list):
        offs, rows = surviving_rows(layout, n, c)
        src = torch.tensor(offs, dtype=torch.long, device=dev) + r0
        dst = torch.tensor(rows, dtype=torch.long, device=dev)
        k_cache[slot, :, dst] = k_new[src].transpose(0, 1)
        v_cache[slot, :, dst] = v_new[src].transpose(0, 1)
        r0 += c
