"""Test helpers: float64 streaming attention written straight from layout.py's
definitions (one query at a time, keys at their cache positions), plus input
builders that poison every cache row a kernel must not read."""

from __future__ import annotations

import os

import torch

from swiftinfer_core.cache.layout import StreamLayout


def fresh_seed() -> int:
    """A new seed every run (printed by the tests on failure)."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed


def rotate64(x: torch.Tensor, pos: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x [N, H, D] float64, pos [N]: HF rotate_half RoPE with float64 angles."""
    ang = pos.double()[:, None] * freqs.double()[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def rotate_partial64(x: torch.Tensor, pos: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """transformers' partial rotary: rotate-half over the first 2 * len(freqs) dims, the rest passed through."""
    r = 2 * freqs.shape[0]
    return torch.cat([rotate64(x[..., :r], pos, freqs), x[..., r:]], -1)


def naive_attention(q, k_new, v_new, k_cache, v_cache, slots, starts, q_lens, layout: StreamLayout, freqs, scale,
                    sliding: int = 0, slopes=None, softcap: float = 0.0):
    """float64 [T, Hq, D]. Query t attends to layout.attended(t) at positions
    layout.cache_positions(t), query at layout.query_position(t). Cached keys
    (u < n) come from row layout.row(u) of the old cache, the rest from k_new.
    ``freqs`` shorter than D/2: a partial rotary over the first 2 * len(freqs)
    dims (transformers' layout). ``sliding``: key u only while t - u < sliding;
    ``slopes`` [Hq]: ALiBi, score -= slope * (query position - key position);
    ``softcap``: score = softcap * tanh(score / softcap)."""
    rot = rotate64 if 2 * freqs.shape[0] == q.shape[-1] else rotate_partial64
    q, k_new, v_new = q.double().cpu(), k_new.double().cpu(), v_new.double().cpu()
    k_cache, v_cache = k_cache.double().cpu(), v_cache.double().cpu()
    group = q.shape[1] // k_new.shape[1]
    out = torch.zeros_like(q)
    r0 = 0
    for slot, n, c in zip(slots, starts, q_lens):
        for i in range(c):
            t = n + i
            keys = layout.attended(t)
            K = torch.stack([k_new[r0 + u - n] if u >= n else k_cache[slot, :, layout.row(u)] for u in keys])
            V = torch.stack([v_new[r0 + u - n] if u >= n else v_cache[slot, :, layout.row(u)] for u in keys])
            pos = torch.tensor(layout.cache_positions(t))
            K = rot(K, pos, freqs).repeat_interleave(group, 1)
            V = V.repeat_interleave(group, 1)
            qpos = layout.query_position(t)
            qr = rot(q[r0 + i][None], torch.tensor([qpos]), freqs)[0]  # [Hq, D]
            s = torch.einsum("hd,khd->hk", qr, K) * scale
            if softcap > 0:
                s = softcap * torch.tanh(s / softcap)
            if slopes is not None:
                s = s - slopes.double().cpu()[:, None] * (qpos - pos).double()[None, :]
            if sliding > 0:
                s = s.masked_fill((t - torch.tensor(keys) >= sliding)[None, :], float("-inf"))
            out[r0 + i] = torch.einsum("hk,khd->hd", torch.softmax(s, -1), V)
        r0 += c
    return out


def needed_rows(layout: StreamLayout, n: int, c: int) -> set[int]:
    """Rows of the old cache that queries n..n+c-1 may read."""
    return {layout.row(u) for t in range(n, n + c) for u in layout.attended(t) if u < n}


def make_inputs(layout, slots, starts, q_lens, hq, hkv, D, dtype, dev, num_slots=None):
    """Random q/k_new/v_new and caches; every cache row that is not needed is NaN."""
    T = sum(q_lens)
    num_slots = num_slots or max(slots) + 2
    q = torch.randn(T, hq, D, dtype=torch.float32).to(dtype)
    k_new = torch.randn(T, hkv, D).to(dtype)
    v_new = torch.randn(T, hkv, D).to(dtype)
    k_cache = torch.full((num_slots, hkv, layout.capacity, D), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    for slot, n, c in zip(slots, starts, q_lens):
        for r in needed_rows(layout, n, c):
            k_cache[slot, :, r] = torch.randn(hkv, D).to(dtype)
            v_cache[slot, :, r] = torch.randn(hkv, D).to(dtype)
    return [x.to(dev) for x in (q, k_new, v_new, k_cache, v_cache)]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm()).item()


TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def check_deterministic_and_graph_replay(run, x: torch.Tensor, want_of, repeats: int, tol: float, seed: int) -> None:
    """GPU split-K kernels: ``repeats`` launches of ``run()`` give identical bits (the
    partials are summed in a fixed order: a race would show here), and a captured
    ``run(out)`` replays on new ``x`` within ``tol`` of ``want_of(x)`` (float64)
    with its counters back at zero."""
    first = run()
    for _ in range(repeats):
        assert torch.equal(run(), first), f"seed {seed}"
    out = torch.empty_like(first)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run(out)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        assert rel_err(out, want_of(x)) < tol, f"seed {seed}"


def int4_every_code(n: int, k: int, group: int):
    """A QuantizedWeight [n, k] of random int4 codes -8..7 (nibble 0 included:
    model/quant_search.py's qmin=-8 stores -8; the padding past k is 0) and random
    bf16 group scales, packed directly (no quantizer in between)."""
    from swiftinfer_core.model.quant import QuantFormat, QuantizedWeight, pack_int4

    kp = -(-k // group) * group
    q = torch.randint(-8, 8, (n, kp), dtype=torch.int8)
    q[:, k:] = 0
    s = (torch.rand(n, kp // group) + 0.05).to(torch.bfloat16)
    return QuantizedWeight(QuantFormat.INT4, pack_int4(q), s, n, k, group)


def int4_zp_every_code(n: int, k: int, group: int):
    """A zero-point QuantizedWeight [n, k] (model/quant.py's asymmetric int4) of
    random nibbles 0..15 (the padding past k is nibble 0) with random float16 group
    scales and mins of either sign, packed directly (no quantizer in between)."""
    from swiftinfer_core.model.quant import INT4_OFFSET, QuantFormat, QuantizedWeight, pack_int4

    kp = -(-k // group) * group
    nib = torch.randint(0, 16, (n, kp), dtype=torch.int8)
    nib[:, k:] = 0
    s = (torch.rand(n, kp // group) + 0.05).to(torch.float16)
    mins = (4 * torch.rand(n, kp // group) - 2).to(torch.float16)
    return QuantizedWeight(QuantFormat.INT4, pack_int4(nib - INT4_OFFSET), s, n, k, group, mins)
