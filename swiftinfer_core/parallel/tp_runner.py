"""TPRunner: the engine's runner when ``tp_size > 1``; EngineCore uses it exactly
like ModelRunner (engine/batch_runner.py samples on rank 0 only).

Rank 0's model, pool and attention are the ones of its own shard; every model
call goes through the TPDriver, which first broadcasts the step to the other
ranks. Decode steps that the BatchRunner sends to CUDA graphs go through
``self.graphs`` — the driver's mirrored graphs — so every rank replays the same
graph (with the same NCCL all-reduces inside) in the same step.

Embedding and LM head are replicated on every rank (not vocab-parallel): the
sampler needs full logits on rank 0, and a replicated head gives them with no
gather; workers skip the head in eager steps. The cost is vocab x hidden
weights per rank (~2% of a 7B model, ~3% of a 70B one).
"""

from __future__ import annotations

import torch

from swiftinfer_core.parallel.driver import TPDriver
from swiftinfer_core.runner.model_runner import ModelRunner


class TPRunner(ModelRunner):
    def __init__(self, driver: TPDriver):
        local = driver.local
        super().__init__(local.model, local.pool, local.attn, local.device)
        self.driver = driver

    @property
    def tp_size(self) -> int:
        return self.driver.size

    def forward(self, ids: list[int], slots: list[int], starts: list[int], q_lens: list[int], rows: list[int] | None) -> torch.Tensor:
        return self.driver.forward(ids, slots, starts, q_lens, rows)

    def copy_slot(self, src: int, dst: int, rows: int) -> None:
        self.driver.copy_slot(src, dst, rows)

    def capture_decode_graphs(self, max_batch: int) -> None:
        self.driver.capture_decode_graphs(max_batch)
        self.graphs = self.driver.graphs

    def close(self) -> None:
        self.driver.close()
