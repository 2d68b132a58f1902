"""Shared by the tensor-parallel tests: the conversation, the logit probe, tolerances."""

from __future__ import annotations

import torch

from swiftinfer_core.config import EngineConfig, SamplingParams

SINKS, WINDOW = 4, 40
ROUNDS = [
    "Tell me about the history of Paris and the river that crosses it.",
    "What about its famous museums and the art inside them?",
    "Summarise our whole chat in one short line, please.",
]
PARAMS = SamplingParams(max_tokens=16, ignore_eos=True)  # always 16: the stream outgrows the 44-row cache
PROBE = list(range(300, 350))  # 50 tokens: one prefill chunk longer than the cache


def tp_config(tp: int, **over) -> EngineConfig:
    return EngineConfig(**{"model": "default", "device": "cpu", "sink_tokens": SINKS, "window": WINDOW, "max_sessions": 2, "tp_size": tp, **over})


def conversation(core, sid: str = "c") -> list[list[int]]:
    """3 rounds on an EngineCore, stepped by hand; the generated ids per round."""
    outs = []
    for msg in ROUNDS:
        turn = core.add_turn(sid, [{"role": "user", "content": msg}], PARAMS)
        while turn.session.turn is turn:
            core.step()
        outs.append(list(turn.output_ids))
    return outs


def probe_logits(runner) -> list[torch.Tensor]:
    """runner.forward directly, on the spare slot 1: a 50-token prefill (all rows), then 3 decodes."""
    out = [runner.forward(PROBE, [1], [0], [len(PROBE)], None).cpu()]
    for i in range(3):
        out.append(runner.forward([400 + i], [1], [len(PROBE) + i], [1], [0]).cpu())
    return out


def assert_probe_close(got: list[torch.Tensor], want: list[torch.Tensor], rtol: float = 1e-4, atol: float = 1e-3) -> None:
    """fp32 tolerance: only the summation order of the all-reduced partial sums differs."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)
        assert torch.equal(g.argmax(-1), w.argmax(-1))


def worker_procs(runner) -> dict:
    """rank -> multiprocessing.Process of a TPRunner started by the spawn launcher."""
    return runner.driver.launcher.procs
