"""Random-weight Llama ranks for tensor-parallel GPU tests and benches.

Needs no pydantic and no checkpoint on disk (the GPU image has neither):
``random_rank`` writes the RankConfig (runner/rank_config.py) that
runner/build.py:build_rank builds every rank from, with SEEDED weights: each HF
tensor is drawn from (seed, name) on the rank's device, so TP=1 and every rank
of TP=N slice the *same* model (runner/weights.py SeededCheckpoint).
``build_rank(cfg)`` is the TP=1 runner; ``TPDriver.start(plans, cfg)`` the TP=N one.
"""

from __future__ import annotations

import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.runner.rank_config import RankConfig, Weights

# Shapes of the Llama-2 family (vocab 32000, no GQA below 70B).
SHAPES = {
    "7b": ModelArgs(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, intermediate_size=11008, name="llama-7b-shape"),
    "13b": ModelArgs(vocab_size=32000, hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40, head_dim=128, intermediate_size=13824, name="llama-13b-shape"),
    "70b": ModelArgs(vocab_size=32000, hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128, intermediate_size=28672, name="llama-70b-shape"),
}


def random_rank(args: ModelArgs, sinks: int, window: int, slots: int, dtype: torch.dtype, seed: int = 0,
                device_type: str = "cuda", triton: bool = True) -> RankConfig:
    """A rank of a random ``args``-shaped Llama: ``slots`` cache slots of sinks + window
    rows, Triton or reference attention, the LM head in ``dtype``, no fused batch-1 decode."""
    return RankConfig(args=args, layout=StreamLayout(sinks, window), device_type=device_type, dtype=dtype,
                      weights=Weights.SEEDED, seed=seed, attention="triton" if triton else "torch", slots=slots)
