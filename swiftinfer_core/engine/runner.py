"""Runs one scheduled batch through the model and samples: ScheduledBatch in, token ids out."""

from __future__ import annotations

import torch

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.engine.cuda_graph import Capture, DecodeGraphs
from swiftinfer_core.engine.sampler import sample
from swiftinfer_core.engine.scheduler import ScheduledBatch
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.model.llama import Llama


class ModelRunner:
    def __init__(self, model: Llama, pool: KVPool, attn: Attention, device: torch.device):
        self.model, self.pool, self.attn, self.device = model, pool, attn, device
        self.graphs: DecodeGraphs | None = None

    def capture_decode_graphs(self, max_batch: int, capture: Capture | None = None) -> None:
        """Capture decode steps; later decode batches up to max_batch replay them.
        ``capture``: CUDA graphs by default; cuda_graph.EagerCapture runs the same path on a CPU."""
        self.graphs = DecodeGraphs(self.model, self.pool, self.attn, self.device, max_batch, capture)
        self.graphs.capture()

    def forward(self, ids: list[int], slots: list[int], starts: list[int], q_lens: list[int], rows: list[int] | None) -> torch.Tensor:
        """Packed forward over the cache; logits [R, vocab] for token rows ``rows`` (all if None)."""
        batch = AttnBatch.build(slots, starts, q_lens, self.device)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        row_t = None if rows is None else torch.tensor(rows, dtype=torch.long, device=self.device)
        return self.model(input_ids, self.attn, self.attn.prepare(batch), self.pool, row_t)

    def run(self, batch: ScheduledBatch) -> list[int | None]:
        ids, rows, sampled_seqs, offset = [], [], [], 0
        for i, s in enumerate(batch.seqs):
            ids.extend(s.token_ids)
            offset += len(s.token_ids)
            if s.sample:
                rows.append(offset - 1)
                sampled_seqs.append(i)
        slots = [s.turn.session.slot for s in batch.seqs]
        starts = [s.start for s in batch.seqs]
        if self.graphs is not None and batch.is_decode and self.graphs.fits(len(ids)):
            logits = self.graphs.run(ids, slots, starts)
        else:
            logits = self.forward(ids, slots, starts, [len(s.token_ids) for s in batch.seqs], rows)
        out: list[int | None] = [None] * len(batch.seqs)
        if sampled_seqs:
            turns = [batch.seqs[i].turn for i in sampled_seqs]
            picks = sample(logits, [t.params for t in turns], [t.generator for t in turns])
            for i, tok in zip(sampled_seqs, picks):
                out[i] = tok
        return out
