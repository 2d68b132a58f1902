"""Every model family on a tiny random checkpoint built by transformers itself:
logits match transformers' over a prompt that fits the cache; StreamingLLM
decode past the window matches the naive reference (physical eviction and
re-rotation / ALiBi re-biasing, tests/model/naive_streaming.py); chunked prefill
matches token by token; TP=2 over gloo matches TP=1.  ``pytest -k families``."""

from __future__ import annotations

import pytest
import torch

from family_checkpoints import CASES, build
from naive_streaming import NaiveStreamingAttention
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.engine_model import engine_runner
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.engine.engine_model import build_engine_model, relayout

IDS = [c.name for c in CASES]


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def family(request, tmp_path_factory):
    case = request.param
    folder = tmp_path_factory.mktemp(case.name)
    hf = build(case, folder)
    loaded = build_engine_model(EngineConfig(model=str(folder), device="cpu", sink_tokens=4, window=60, max_sessions=2))
    return case, folder, hf, loaded


def _runner(loaded, sinks: int, window: int, attn=None) -> ModelRunner:
    cfg = EngineConfig(device="cpu", sink_tokens=sinks, window=window, max_sessions=2)
    m = relayout(loaded, cfg, 2)
    return ModelRunner(m.model, m.pool, attn(m) if attn else m.attn, m.device)


def test_families_logits_match_transformers(family):
    case, _, hf, loaded = family
    ids = torch.randint(0, 256, (case.prompt,), generator=torch.Generator().manual_seed(1))
    ours = ModelRunner(loaded.model, loaded.pool, loaded.attn, loaded.device).forward(ids.tolist(), [0], [0], [len(ids)], None)
    with torch.no_grad():
        ref = hf(ids[None]).logits[0].float()
    err = (ours - ref).abs().max().item()
    assert err < 1e-4, f"{case.name}: max |ours - transformers| = {err:.2e}"


def test_families_streaming_decode_matches_naive_reference(family):
    case, _, _, loaded = family
    sinks, window, n = 2, 8, 34  # 24 tokens past the 10-row cache
    ids = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(2)).tolist()
    ours = _runner(loaded, sinks, window)
    naive = _runner(loaded, sinks, window, attn=lambda m: NaiveStreamingAttention(m.layout, m.attn))
    got = [ours.forward(ids[:6], [0], [0], [6], None)]
    want = [naive.forward(ids[:6], [0], [0], [6], None)]
    for t in range(6, n):
        got.append(ours.forward([ids[t]], [0], [t], [1], None))
        want.append(naive.forward([ids[t]], [0], [t], [1], None))
    got, want = torch.cat(got), torch.cat(want)
    err = (got - want).abs().max().item()
    assert err < 1e-4, f"{case.name}: max |ring - naive| = {err:.2e}"


def test_families_chunked_prefill_matches_token_by_token(family):
    case, _, _, loaded = family
    run = _runner(loaded, 2, 8)
    ids = torch.randint(0, 256, (30,), generator=torch.Generator().manual_seed(3)).tolist()
    one = torch.cat([run.forward([tok], [0], [i], [1], None) for i, tok in enumerate(ids)])
    chunked = torch.cat([run.forward(ids[lo : lo + 7], [1], [lo], [len(ids[lo : lo + 7])], None) for lo in range(0, 30, 7)])
    rel = ((chunked - one).norm() / one.norm()).item()
    assert rel < 1e-5, f"{case.name}: relative error {rel:.2e}"


def _probe(runner) -> list[torch.Tensor]:
    ids = list(range(3, 23))  # 20 tokens: longer than the 4 + 12 cache
    out = [runner.forward(ids, [1], [0], [20], None).cpu()]
    out += [runner.forward([30 + i], [1], [20 + i], [1], None).cpu() for i in range(3)]
    return out


def test_families_tensor_parallel_tp2_matches_tp1(family):
    case, folder, _, _ = family
    cfg = EngineConfig(model=str(folder), device="cpu", sink_tokens=4, window=12, max_sessions=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # ranks share 2 cores
    try:
        _, one = engine_runner(cfg)
        want = _probe(one)
        _, two = engine_runner(cfg.model_copy(update={"tp_size": 2}))
        try:
            got = _probe(two)
        finally:
            two.close()
    finally:
        torch.set_num_threads(before)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_piecewise_graphs_support_the_llama_family_only(family):
    """The engine captures piecewise graphs (on by default) where this says so;
    the other families run mixed steps eagerly (tests/model/test_families_gpu.py)."""
    from swiftinfer_core.runner import piecewise

    case, _, _, loaded = family
    llama_family = case.config in ("LlamaConfig", "Qwen3Config", "Phi3Config")
    assert piecewise.supports(loaded.model) == llama_family, case.name
