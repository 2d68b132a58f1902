"""Every family's tiny checkpoint on the GPU (``pytest -m gpu -k families``):
the Triton kernels in float32 give transformers' logits and the CPU engine's
StreamingLLM decode past the window; in bf16, top-1 agrees with float32 on at
least 98% of teacher-forced tokens."""

from __future__ import annotations

import pytest
import torch

from family_checkpoints import CASES, build
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.engine.engine_model import build_engine_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def family(request, tmp_path_factory):
    case = request.param
    folder = tmp_path_factory.mktemp(case.name)
    return case, folder, build(case, folder)


def _runner(folder, device: str, dtype: str, sinks: int = 2, window: int = 8) -> ModelRunner:
    m = build_engine_model(EngineConfig(model=str(folder), device=device, dtype=dtype, sink_tokens=sinks, window=window, max_sessions=1,
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
