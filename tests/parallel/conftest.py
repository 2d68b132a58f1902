"""Fixtures of the tensor-parallel tests: one torch thread per rank, the TP=1 reference."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_rank():
    """On a 2-core box several ranks with 2 OpenMP threads each spin against each other and
    a step takes seconds instead of a fraction of one. Workers copy rank 0's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference(base_model):
    """TP=1 over the shared weights: the conversation's tokens and the probe logits."""
    from tp_helpers import conversation, probe_logits, tp_config

    from swiftinfer_core.engine.core import EngineCore
    from swiftinfer_core.engine.engine_model import relayout

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tp_config(1)
        core = EngineCore(cfg, loaded=relayout(base_model, cfg, cfg.max_sessions))
        tokens = conversation(core)
        assert core.session_stats("c").evictions > 0  # the conversation is longer than sinks + window
        return tokens, probe_logits(core.runner)
    finally:
        torch.set_num_threads(before)
