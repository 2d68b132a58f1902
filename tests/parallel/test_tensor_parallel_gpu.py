"""Tensor parallelism with NCCL on 2 GPUs, against TP=1 (needs 2 CUDA GPUs; skipped otherwise).

* A random-weight Llama-2-7B-shape model (hidden 4096, 32 heads, MLP 11008; 4
  layers to keep it quick) in float32: TP=2 prefill and CUDA-graph decode
  logits equal TP=1's within fp32 tolerance, and greedy tokens agree.
* The engine on the real SmolLM2 with tp_size=2 on CUDA (Triton attention,
  decode CUDA graphs containing the NCCL all-reduces): the same greedy tokens
  as tp_size=1 over a conversation longer than the window.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tp_helpers import assert_probe_close, conversation, tp_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"),
]
ROOT = Path(__file__).resolve().parents[2]


def _random_7b(layers: int = 4):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.tp_random import SHAPES, random_rank

    args = replace(SHAPES["7b"], num_layers=layers, name="llama-7b-shape-4-layers")
    return args, random_rank(args, sinks=4, window=124, slots=4, dtype=torch.float32, seed=1)


def _prefill(runner, prompt: list[list[int]]) -> list[torch.Tensor]:
    """Two 100-token chunks per session (the second evicts: cache is 128 rows); all rows' logits."""
    return [runner.forward(p[lo : lo + 100], [s], [lo], [100], None).cpu() for s, p in enumerate(prompt) for lo in (0, 100)]


def test_tensor_parallel_nccl_tp2_matches_tp1_random_7b_shape():
    from swiftinfer_core.parallel.driver import TPDriver
    from swiftinfer_core.parallel.launcher import ProcessLauncher
    from swiftinfer_core.parallel.plan import shard_plans
    from swiftinfer_core.runner.build import build_rank

    torch.backends.cuda.matmul.allow_tf32 = False
    args, build = _random_7b()
    torch.cuda.set_device(0)
    ref = build_rank(build)
    tp = TPDriver.start(shard_plans(args, 2), build, launcher=ProcessLauncher())
    try:
        assert tp.local.pool.k[0].shape[1] == 16  # 32 KV heads, 16 per rank
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, args.vocab_size, (3, 200), generator=gen).tolist()  # 3 sessions, longer than 128 rows
        assert_probe_close(_prefill(tp, prompt), _prefill(ref, prompt), rtol=1e-3, atol=2e-3)

        ref.capture_decode_graphs(4)
        tp.capture_decode_graphs(4)
        toks = [[p[-1] for p in prompt], [p[-1] for p in prompt]]
        for step in range(12):  # greedy, batch 3, replayed graphs with NCCL inside on TP=2
            starts = [200 + step] * 3
            a = ref.graphs.run(toks[0], [0, 1, 2], starts).cpu()
            b = tp.graphs.run(toks[1], [0, 1, 2], starts).cpu()
            assert_probe_close([b], [a], rtol=1e-3, atol=2e-3)
            toks = [a.argmax(-1).tolist(), b.argmax(-1).tolist()]
            assert toks[0] == toks[1]
    finally:
        tp.close()
    assert all(p.exitcode == 0 for p in tp.launcher.procs.values())


def test_tensor_parallel_engine_cuda_tp2_matches_tp1(model_dir):
    from swiftinfer_core.engine.core import EngineCore

    one = EngineCore(tp_config(1, device="cuda", dtype="float32"))
    two = EngineCore(tp_config(2, device="cuda", dtype="float32"))
    try:
        assert two.runner.graphs is not None  # decode steps replay graphs on both ranks
        assert conversation(two) == conversation(one)
        assert two.session_stats("c").evictions > 0
    finally:
        two.close()
