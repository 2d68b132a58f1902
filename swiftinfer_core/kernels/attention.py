"""Attention backends behind one interface, picked by configuration.

A backend is built once per engine with the cache layout and RoPE frequencies.
Per step: ``plan = backend.prepare(batch)`` (index work shared by all layers),
then per layer ``out = backend.forward(plan, q, k_new, v_new, k_cache, v_cache)``,
which attends over sinks + window and stores the step's K/V in the ring.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.reference import plan_step, streaming_attention_ref, write_cache_ref


class Attention(Protocol):
    def prepare(self, batch: AttnBatch) -> Any: ...

    def forward(self, plan: Any, q, k_new, v_new, k_cache, v_cache) -> torch.Tensor: ...


class TorchAttention:
    """The reference semantics in plain PyTorch (CPU engine, and the fallback)."""

    def __init__(self, layout: StreamLayout, freqs: torch.Tensor, scale: float):
        self.layout, self.freqs, self.scale = layout, freqs, scale

    def prepare(self, batch: AttnBatch):
        return batch, plan_step(batch, self.layout, batch.slots.device)

    def forward(self, plan, q, k_new, v_new, k_cache, v_cache) -> torch.Tensor:
        batch, seq_plans = plan
        out = streaming_attention_ref(q, k_new, v_new, k_cache, v_cache, seq_plans, self.freqs, self.scale)
        write_cache_ref(k_new, v_new, k_cache, v_cache, batch, self.layout)
        return out
