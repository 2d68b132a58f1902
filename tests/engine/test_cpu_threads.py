"""engine/cpu_threads.py on the real default model: decode steps run torch on one
thread and the C kernels on the engine's count; other steps run both on it."""

from __future__ import annotations

import threading

import pytest
import torch

from swiftinfer_core.config import EngineConfig, SamplingParams
from swiftinfer_core.engine.core import EngineCore
from swiftinfer_core.engine.engine import Engine
from swiftinfer_core.kernels import cpu_native

pytestmark = pytest.mark.skipif(cpu_native.load() is None, reason="no C compiler: the kernels cannot be built here")


def _counts_per_step(core: EngineCore) -> list[tuple[bool, int, int]]:
    """(decode-only, torch threads, C kernel threads) of every step of one turn."""
    seen = []
    run = core.batches.launch

    def spy(batch):
        seen.append((batch.is_decode, torch.get_num_threads(), core.cpu_threads.kernels.threads))
        return run(batch)

    core.batches.launch = spy
    core.add_turn("a", [{"role": "user", "content": "Tell me about the sea."}], SamplingParams(max_tokens=4, ignore_eos=True))
    while core.scheduler.has_work:
        core.step()
    return seen


def test_decode_steps_run_torch_on_one_thread_and_the_kernels_on_the_count(model_dir):
    result = []

    def on_fresh_thread():  # a thread of its own: the test runner's torch count stays as it was
        torch.set_num_threads(2)
        core = EngineCore(EngineConfig(model=str(model_dir), device="cpu", quantization="auto", max_sessions=1))
        assert core.cpu_threads is not None and core.cpu_threads.count == 2
        result.extend(_counts_per_step(core))

    t = threading.Thread(target=on_fresh_thread)
    t.start()
    t.join()
    assert [d for d, _, _ in result] == [False, True, True, True]  # one prefill step, then 3 decode steps
    assert result[0][1:] == (2, 2)
    assert all(step[1:] == (1, 2) for step in result[1:])


def test_a_cpu_engine_built_on_its_step_thread_warms_up_and_serves(model_dir):
    eng = Engine(EngineConfig(model=str(model_dir), device="cpu", quantization="auto", max_sessions=1))
    try:
        eng.warm_up()  # a step-thread command on a CPU engine, waited for
        chunks = list(eng.chat_sync("s", [{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=3, ignore_eos=True)))
        assert sum(len(c.token_ids) for c in chunks) == 3 and chunks[-1].final
    finally:
        eng.close()


def test_a_cpu_engine_that_cannot_build_raises_from_its_constructor(tmp_path):
    from swiftinfer_core.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="not a folder with config.json"):
        Engine(EngineConfig(model=str(tmp_path / "missing"), device="cpu"))
