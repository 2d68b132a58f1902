"""One rank's model on its KV cache: a packed forward, and CUDA graphs of its steps.

``ModelRunner`` is what ``runner/build.py:build_rank`` returns on every rank (the
single-device engine, each tensor-parallel rank, the CPU path, the benches). It
knows nothing of sessions or sampling: ``engine/batch_runner.py`` turns a
scheduled batch into its calls and samples on top.
"""

from __future__ import annotations

import torch

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.model.llama import Llama
from swiftinfer_core.runner.cuda_graph import Capture, DecodeGraphs
from swiftinfer_core.runner.piecewise import PiecewiseGraphs


class ModelRunner:
    def __init__(self, model: Llama, pool: KVPool, attn: Attention, device: torch.device, split_mixed: bool = False):
        self.model, self.pool, self.attn, self.device = model, pool, attn, device
        self.split_mixed = split_mixed  # mixed steps: decode graph + eager chunks (EngineConfig.split_mixed_steps)
        self.graphs: DecodeGraphs | None = None
        self.piecewise: PiecewiseGraphs | None = None

    def capture_decode_graphs(self, max_batch: int, capture: Capture | None = None) -> None:
        """Capture decode steps; later decode batches up to max_batch replay them.
        ``capture``: CUDA graphs by default; cuda_graph.EagerCapture runs the same path on a CPU."""
        self.graphs = DecodeGraphs(self.model, self.pool, self.attn, self.device, max_batch, capture)
        self.graphs.capture()

    def capture_piecewise_graphs(self, max_tokens: int, capture: Capture | None = None) -> None:
        """Capture every non-attention piece of a step per token-count bucket up to
        ``max_tokens`` (piecewise.py); later non-decode steps that fit replay them. With decode
        graphs captured first, a mixed step's decode rows replay their attention too."""
        self.piecewise = PiecewiseGraphs(self.model, self.pool, self.attn, self.device, max_tokens, capture, self.graphs)
        self.piecewise.capture()

    def runs_piecewise(self, num_tokens: int) -> bool:
        """Whether ``forward`` of ``num_tokens`` tokens replays the piecewise graphs (else one eager pass)."""
        return self.piecewise is not None and self.piecewise.fits(num_tokens)

    def forward(self, ids: list[int], slots: list[int], starts: list[int], q_lens: list[int], rows: list[int] | None) -> torch.Tensor:
        """Packed forward over the cache; logits [R, vocab] for token rows ``rows`` (all if None)."""
        batch = AttnBatch.build(slots, starts, q_lens, self.device)
        row_t = None if rows is None else torch.tensor(rows, dtype=torch.long, device=self.device)
        if self.runs_piecewise(len(ids)):
            return self.piecewise.forward(ids, batch, row_t)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self.model(input_ids, self.attn, self.attn.prepare(batch), self.pool, row_t)

    def copy_slot(self, src: int, dst: int, rows: int) -> None:
        """The first ``rows`` cache rows of slot ``src`` into ``dst`` (cache/pool.py KVPool.copy_slot)."""
        self.pool.copy_slot(src, dst, rows)

    def close(self) -> None:
        """Nothing is held outside this process (parallel/tp_runner.py's TPRunner stops its workers)."""
