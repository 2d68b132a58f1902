"""The paper's StreamingLLM, naively: per layer and conversation a Python list of
pre-RoPE keys and values, the oldest window token physically removed when the
cache is full, and every step's keys re-rotated (or ALiBi re-biased) at their
index in that list, the query at the last index. float64.

A test-only ``Attention`` backend: the model runs through it unchanged, so
comparing its logits with the ring-buffer backend's checks the cache semantics
of each layer kind (global, local sliding window, ALiBi, soft-cap) past the window.
"""

from __future__ import annotations

import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.kernels.batch import AttnBatch
from tests.kernels.kernels_naive import rotate64  # rotate-half RoPE with float64 angles


class NaiveStreamingAttention(Attention):
    def __init__(self, layout: StreamLayout, base: Attention):
        super().__init__(layout, base.freqs, base.scale, base.layers)
        self.lists: dict[tuple[int | None, int], list[tuple[int, torch.Tensor, torch.Tensor]]] = {}

    def prepare(self, batch: AttnBatch) -> AttnBatch:
        return batch

    def forward(self, plan: AttnBatch, q, k_new, v_new, k_cache, v_cache, layer: int | None = None) -> torch.Tensor:
        spec = self.spec(layer)
        out = torch.empty_like(q)
        group = q.shape[1] // k_new.shape[1]
        r0 = 0
        for slot, n, c in zip(plan.slots_list, plan.starts_list, plan.q_lens_list):
            kept = self.lists.setdefault((layer, slot), [])
            for i in range(c):
                t = n + i
                kept.append((t, k_new[r0 + i].double(), v_new[r0 + i].double()))
                if len(kept) > self.layout.capacity:
                    del kept[self.layout.sinks]  # evict the oldest window token
                L = len(kept)
                us = torch.tensor([u for u, _, _ in kept])
                K = rotate64(torch.stack([k for _, k, _ in kept]), torch.arange(L), spec.freqs).repeat_interleave(group, 1)
                V = torch.stack([v for _, _, v in kept]).repeat_interleave(group, 1)
                qr = rotate64(q[r0 + i].double()[None], torch.tensor([L - 1]), spec.freqs)[0]  # [Hq, D]
                s = torch.einsum("hd,khd->hk", qr, K) * spec.scale
                if spec.softcap > 0:
                    s = spec.softcap * torch.tanh(s / spec.softcap)
                if spec.alibi is not None:
                    s = s - spec.alibi.double()[:, None] * (L - 1 - torch.arange(L)).double()[None, :]
                if spec.sliding_window > 0:
                    s = s.masked_fill((t - us >= spec.sliding_window)[None, :], float("-inf"))
                out[r0 + i] = torch.einsum("hk,khd->hd", torch.softmax(s, -1), V).to(q.dtype)
            r0 += c
        return out
