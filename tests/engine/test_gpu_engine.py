"""The GPU engine (Triton kernels, CUDA graphs) against the CPU engine, on the real model."""

import pytest
import torch

from swiftinfer_core import SamplingParams
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.core import EngineCore
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.engine.engine_model import build_engine_model

pytestmark = pytest.mark.gpu
ROUNDS = ["Tell me about the history of Paris.", "What about its famous museums?", "Summarise our chat in one line."]


def _conversation(core: EngineCore, sid: str) -> list[list[int]]:
    outs = []
    for msg in ROUNDS:
        turn = core.add_turn(sid, [{"role": "user", "content": msg}], SamplingParams(max_tokens=40))
        while turn.session.turn is turn:
            core.step()
        outs.append(list(turn.output_ids))
    return outs


def test_gpu_float32_greedy_equals_cpu(make_core, model_dir):
    cpu = make_core(window=60)
    gpu = EngineCore(EngineConfig(device="cuda", dtype="float32", window=60, max_sessions=4))
    assert gpu.runner.graphs is not None  # decode goes through the captured graphs
    a, b = _conversation(cpu, "x"), _conversation(gpu, "x")
    assert gpu.session_stats("x").evictions > 0  # the conversation outgrew the window
    assert a == b


def _top1(m, ids: list[int], chunk: int = 256) -> torch.Tensor:
    run = ModelRunner(m.model, m.pool, m.attn, m.device)
    picks = []
    for lo in range(0, len(ids), chunk):
        part = ids[lo : lo + chunk]
        picks.append(run.forward(part, [0], [lo], [len(part)], rows=None).argmax(-1).cpu())
    return torch.cat(picks)


def test_bf16_top1_agrees_with_float32(shakespeare_ids):
    ids = shakespeare_ids[:3000]
    cfg = dict(device="cuda", sink_tokens=4, window=252, max_sessions=1)
    f32 = _top1(build_engine_model(EngineConfig(dtype="float32", **cfg)), ids)
    bf16 = _top1(build_engine_model(EngineConfig(dtype="bfloat16", **cfg)), ids)
    agree = (f32 == bf16).float().mean().item()
    assert agree >= 0.98, f"top-1 agreement {agree:.4f}"
