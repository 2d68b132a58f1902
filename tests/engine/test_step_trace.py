"""engine/step_trace.py on the real model: a step line per step, a turn line per first token."""

import json

from swiftinfer_core import SamplingParams
from swiftinfer_core.engine.batch_runner import StepPath


def lines(path):
    files = list(path.parent.glob(f"{path.stem}.*.jsonl"))
    assert len(files) == 1
    return [json.loads(x) for x in files[0].read_text().splitlines()]


def test_trace_counts_steps_chunks_and_first_tokens(make_core, tmp_path):
    core = make_core(window=60, prefill_chunk=8, step_trace=str(tmp_path / "trace.jsonl"))
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    a = core.add_turn("a", [{"role": "user", "content": "Hello there, how are you today?"}], params)
    steps = 0
    while core.scheduler.has_work:
        core.step()
        steps += 1
    b = core.add_turn("a", [{"role": "user", "content": "And tomorrow?"}], params)
    c = core.add_turn("c", [{"role": "user", "content": "Hi"}], params)
    core.abort(c)
    while core.scheduler.has_work:
        core.step()
        steps += 1
    core.close()
    recs = lines(tmp_path / "trace.jsonl")
    step_lines = [r for r in recs if r["kind"] == "step"]
    turn_lines = [r for r in recs if r["kind"] == "turn"]
    assert len(step_lines) == steps and [r["i"] for r in step_lines] == list(range(steps))
    # every input token went through a chunk of at most 8; each turn decoded 2 tokens after its first
    fed = len(a.to_feed) + len(b.to_feed)
    assert sum(r["chunk_tokens"] for r in step_lines) == fed
    assert max(r["chunk_tokens"] for r in step_lines) <= 8
    assert sum(r["decode"] for r in step_lines) == 4
    assert {r["path"] for r in step_lines} == {StepPath.EAGER.value}  # the CPU has no graphs
    assert all(r["ms"] >= r["run_ms"] >= 0 for r in step_lines)
    # the aborted turn never reached a first token; the first one was cold, the second warm
    assert [(t["warm"], t["input_tokens"], t["steps"]) for t in turn_lines] == [
        (False, len(a.to_feed), -(-len(a.to_feed) // 8)), (True, len(b.to_feed), -(-len(b.to_feed) // 8))]
    assert all(t["first_token_ms"] >= t["queue_ms"] >= 0 for t in turn_lines)


def test_no_trace_by_default(make_core):
    core = make_core()
    assert core.trace is None
