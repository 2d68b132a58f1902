"""CUDA graphs for decode steps, one per batch size of a ladder.

A decode step is static-shaped: B token ids, B slots, B stream starts in, B
rows of logits out. Each graph is captured once with its own static tensors;
a step copies its inputs in (padding rows get slot -1, which the decode kernel
skips) and replays, so the host launches one graph instead of ~10 kernels per
layer. Graphs share one memory pool; larger sizes are captured first.
"""

from __future__ import annotations

import logging

import torch

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.model.llama import Llama

log = logging.getLogger(__name__)
LADDER = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class _Graph:
    def __init__(self, size: int, device: torch.device):
        self.ids = torch.zeros(size, dtype=torch.long, device=device)
        self.slots = torch.full((size,), -1, dtype=torch.int32, device=device)
        self.starts = torch.zeros(size, dtype=torch.int64, device=device)
        ones = torch.ones(size, dtype=torch.int32, device=device)
        self.batch = AttnBatch(
            slots=self.slots, starts=self.starts, q_lens=ones,
            cu_seqlens=torch.arange(size + 1, dtype=torch.int32, device=device),
            slots_list=[-1] * size, starts_list=[0] * size, q_lens_list=[1] * size,
        )
        self.graph = torch.cuda.CUDAGraph()
        self.logits: torch.Tensor | None = None


class DecodeGraphs:
    def __init__(self, model: Llama, pool: KVPool, attn: Attention, device: torch.device, max_batch: int):
        self.model, self.pool, self.attn, self.device = model, pool, attn, device
        self.sizes = [s for s in LADDER if s <= max_batch] or [max_batch]
        if self.sizes[-1] < max_batch:
            self.sizes.append(max_batch)
        self.graphs: dict[int, _Graph] = {}

    @torch.inference_mode()
    def capture(self) -> None:
        pool_handle = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        for size in reversed(self.sizes):
            g = _Graph(size, self.device)
            plan = self.attn.prepare(g.batch)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # warm-up outside the graph: Triton compiles, workspaces allocate
                for _ in range(2):
                    self.model(g.ids, self.attn, plan, self.pool)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            with torch.cuda.graph(g.graph, pool=pool_handle):
                g.logits = self.model(g.ids, self.attn, plan, self.pool)
            self.graphs[size] = g
        torch.cuda.synchronize(self.device)
        log.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def fits(self, n: int) -> bool:
        return bool(self.graphs) and n <= self.sizes[-1]

    @torch.inference_mode()  # the static tensors were made under inference mode
    def run(self, ids: list[int], slots: list[int], starts: list[int]) -> torch.Tensor:
        """Logits [n, vocab] for n decoding sequences."""
        n = len(ids)
        size = next(s for s in self.sizes if s >= n)
        g = self.graphs[size]
        pad = size - n
        host = torch.tensor(
            [ids + [0] * pad, slots + [-1] * pad, starts + [0] * pad], dtype=torch.int64, pin_memory=True
        ).to(self.device, non_blocking=True)
        g.ids.copy_(host[0])
        g.slots.copy_(host[1])
        g.starts.copy_(host[2])
        g.graph.replay()
        return g.logits[:n]
