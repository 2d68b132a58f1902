"""Every family's tiny checkpoint on the GPU (``pytest -m gpu -k families``):
the Triton kernels in float32 give transformers' logits and the CPU engine's
StreamingLLM decode past the window; in bf16, top-1 agrees with float32 on at
least 98% of teacher-forced tokens."""

from __future__ import annotations

import pytest
import torch

from family_checkpoints import CASES, build
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.runner import piecewise
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.engine.engine_model import build_engine_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def family(request, tmp_path_factory):
    case = request.param
    folder = tmp_path_factory.mktemp(case.name)
    return case, folder, build(case, folder)


def _runner(folder, device: str, dtype: str, sinks: int = 2, window: int = 8, slots: int = 1) -> ModelRunner:
    m = build_engine_model(EngineConfig(model=str(folder), device=device, dtype=dtype, sink_tokens=sinks, window=window, max_sessions=slots,
                                attention="triton" if device == "cuda" else "torch"))
    return ModelRunner(m.model, m.pool, m.attn, m.device)


def _stream(run: ModelRunner, ids: list[int], prefill: int) -> torch.Tensor:
    """Logits [len(ids), vocab]: a prefill chunk, then one token at a time (the decode kernel)."""
    out = [run.forward(ids[:prefill], [0], [0], [prefill], None)]
    out += [run.forward([ids[t]], [0], [t], [1], None) for t in range(prefill, len(ids))]
    return torch.cat(out).float().cpu()


def test_families_gpu_float32_matches_transformers_and_cpu_streaming(family):
    case, folder, hf = family
    ids = torch.randint(0, 256, (case.prompt,), generator=torch.Generator().manual_seed(1))
    gpu = _runner(folder, "cuda", "float32", sinks=4, window=60)
    ours = gpu.forward(ids.tolist(), [0], [0], [len(ids)], None).cpu()
    with torch.no_grad():
        ref = hf(ids[None]).logits[0].float()
    assert (ours - ref).abs().max() < 1e-4, case.name
    long = torch.randint(0, 256, (48,), generator=torch.Generator().manual_seed(2)).tolist()  # 38 past the 2 + 8 cache
    got = _stream(_runner(folder, "cuda", "float32"), long, 6)
    want = _stream(_runner(folder, "cpu", "float32"), long, 6)
    assert (got - want).abs().max() < 1e-4, case.name


def test_families_gpu_bf16_top1_agrees_with_float32(family):
    case, folder, _ = family
    ids = torch.randint(0, 256, (400,), generator=torch.Generator().manual_seed(3)).tolist()
    f32 = _stream(_runner(folder, "cuda", "float32", sinks=4, window=60), ids, 100)
    bf16 = _stream(_runner(folder, "cuda", "bfloat16", sinks=4, window=60), ids, 100)
    agree = (f32.argmax(-1) == bf16.argmax(-1)).float().mean().item()
    assert agree >= 0.98, f"{case.name}: top-1 agreement {agree:.3f}"


def test_families_gpu_piecewise_graphs_match_eager_or_are_not_captured(family):
    """The engine captures piecewise graphs (on by default) only where
    ``piecewise.supports`` says so: the Llama family gives the eager logits through
    them in float32 over prefill, mixed and decode steps, across the window's end;
    the other families refuse the capture (the engine then runs those steps eagerly)."""
    case, folder, _ = family
    graphed = _runner(folder, "cuda", "float32", sinks=4, window=28, slots=2)
    if not piecewise.supports(graphed.model):
        assert case.config not in ("LlamaConfig", "Qwen3Config", "Phi3Config"), case.name
        with pytest.raises(ValueError):
            graphed.capture_piecewise_graphs(64)
        return
    graphed.capture_piecewise_graphs(64)
    plain = _runner(folder, "cuda", "float32", sinks=4, window=28, slots=2)
    g = torch.Generator().manual_seed(4)
    a, b = torch.randint(0, 256, (90,), generator=g).tolist(), torch.randint(0, 256, (90,), generator=g).tolist()
    steps = [(a[:20], [0], [0], [20]),  # prefill
             ([a[20]] + b[:30], [0, 1], [20, 0], [1, 30]),  # decode row + chunk: a mixed step
             ([a[21]] + b[30:70], [0, 1], [21, 30], [1, 40])]  # slot 1 passes 4 + 28: eviction mid-chunk
    steps += [([a[t], b[t + 48]], [0, 1], [t, t + 48], [1, 1]) for t in range(22, 42)]  # decode, slot 0 past the window
    worst = 0.0
    for ids, slots, starts, lens in steps:
        want = plain.forward(ids, slots, starts, lens, None).float()
        got = graphed.forward(ids, slots, starts, lens, None).float()
        worst = max(worst, (got - want).abs().max().item())
    assert worst < 1e-4, f"{case.name}: piecewise logits differ from eager by {worst}"
