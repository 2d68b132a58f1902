"""Pins reference.py's semantics to the original StreamingLLM procedure, written
independently: feed tokens one at a time, keep the pre-RoPE K/V in a list,
physically evict the oldest non-sink entry when the list exceeds sinks+window,
then re-rotate *all* cached keys at positions arange(len) and the query at
len-1, every step (what mit-han-lab/streaming-llm does with torch.cat)."""

from __future__ import annotations

import random

import pytest
import torch

from kernels_naive import fresh_seed, rotate64
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.reference import plan_step, streaming_attention_ref, write_cache_ref
from swiftinfer_core.kernels.rope import inv_freq


class EvictingStream:
    """One conversation, token by token, float64."""

    def __init__(self, sinks: int, window: int, freqs: torch.Tensor, scale: float):
        self.sinks, self.window, self.freqs, self.scale = sinks, window, freqs, scale
        self.k: list[torch.Tensor] = []  # pre-RoPE [Hkv, D] each
        self.v: list[torch.Tensor] = []

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [Hq, D], k/v [Hkv, D] -> out [Hq, D]."""
        self.k.append(k.double())
        self.v.append(v.double())
        if len(self.k) > self.sinks + self.window:  # evict the oldest window token
            del self.k[self.sinks], self.v[self.sinks]
        K, V = torch.stack(self.k), torch.stack(self.v)  # [L, Hkv, D]
        L = K.shape[0]
        K = rotate64(K, torch.arange(L), self.freqs)
        qr = rotate64(q.double()[None], torch.tensor([L - 1]), self.freqs)[0]
        g = q.shape[0] // k.shape[0]
        K, V = K.repeat_interleave(g, 1), V.repeat_interleave(g, 1)
        p = torch.softmax(torch.einsum("hd,lhd->hl", qr, K) * self.scale, -1)
        return torch.einsum("hl,lhd->hd", p, V)


@pytest.mark.parametrize("sinks,window", [(4, 8), (0, 8), (1, 5)])
def test_reference_equals_physical_eviction(sinks, window):
    seed = fresh_seed()
    layout = StreamLayout(sinks, window)
    hq, hkv, D = 4, 2, 64
    freqs = inv_freq(D, 10000.0)
    scale = D**-0.5
    B, total = 3, 60
    streams = [EvictingStream(sinks, window, freqs, scale) for _ in range(B)]
    toks = [(torch.randn(total, hq, D, dtype=torch.float64), torch.randn(total, hkv, D, dtype=torch.float64),
             torch.randn(total, hkv, D, dtype=torch.float64)) for _ in range(B)]
    kc = torch.full((B, hkv, layout.capacity, D), float("nan"), dtype=torch.float64)
    vc = kc.clone()
    fed = [0] * B
    slots = [2, 0, 1]
    while min(fed) < total:
        # ragged step: chunks of 1 (decode), short, longer than the window, or skip
        live = [b for b in range(B) if fed[b] < total]
        step = [b for b in live if random.random() < 0.8] or live[:1]
        lens = [min(random.choice([1, 1, 2, 3, window + 4, 2 * window + 1]), total - fed[b]) for b in step]
        q = torch.cat([toks[b][0][fed[b] : fed[b] + c] for b, c in zip(step, lens)])
        kn = torch.cat([toks[b][1][fed[b] : fed[b] + c] for b, c in zip(step, lens)])
        vn = torch.cat([toks[b][2][fed[b] : fed[b] + c] for b, c in zip(step, lens)])
        batch = AttnBatch.build([slots[b] for b in step], [fed[b] for b in step], lens, "cpu")
        out = streaming_attention_ref(q, kn, vn, kc, vc, plan_step(batch, layout, "cpu"), freqs, scale)
        write_cache_ref(kn, vn, kc, vc, batch, layout)
        r = 0
        for b, c in zip(step, lens):
            for i in range(c):
                want = streams[b].step(q[r + i], kn[r + i], vn[r + i])
                err = (out[r + i] - want).abs().max().item()
                assert err < 1e-5, f"seed {seed}: stream {b} token {fed[b] + i}: {err:.2e}"
            fed[b] += c
            r += c


def test_reference_equals_layout_definition_far_into_the_stream():
    """Same check where token-by-token feeding is too long: stream indices past
    1e6, against kernels_naive (keys at layout.cache_positions)."""
    from kernels_naive import make_inputs, naive_attention

    seed = fresh_seed()
    layout = StreamLayout(4, 12)
    seqs = [(1_000_000, 1), (1_000_003, 30), (3_333_333, 12), (5, 20), (0, 9)]
    starts, q_lens = [n for n, _ in seqs], [c for _, c in seqs]
    slots = [4, 1, 0, 3, 2]
    q, kn, vn, kc, vc = make_inputs(layout, slots, starts, q_lens, 4, 2, 64, torch.float64, "cpu")
    freqs = inv_freq(64, 10000.0)
    batch = AttnBatch.build(slots, starts, q_lens, "cpu")
    out = streaming_attention_ref(q, kn, vn, kc, vc, plan_step(batch, layout, "cpu"), freqs, 0.125)
    want = naive_attention(q, kn, vn, kc, vc, slots, starts, q_lens, layout, freqs, 0.125)
    assert (out - want).abs().max().item() < 1e-5, f"seed {seed}"
