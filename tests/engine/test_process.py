"""ProcessEngine: the native engine in a child process behaves as the in-process
one (same replies for the same seeds, errors, aborts, sessions, KV moves), and a
dead child fails its streams and health check instead of hanging them."""

import asyncio
import os
import signal

import pytest

from swiftinfer_core import Engine, EngineConfig, SamplingParams
from swiftinfer_core.engine.process import ProcessEngine
from swiftinfer_core.errors import EngineClosedError, InvalidRequestError, SessionBusyError, SessionNotFoundError

CFG = EngineConfig(device="cpu", window=60, max_sessions=4)
ROUNDS = ["Name three fruits.", "And three colours?", "Which of them is your favourite?"]


@pytest.fixture(scope="module")
def child():
    eng = ProcessEngine(CFG, cpu_threads=1)
    yield eng
    eng.close()


async def _turn(engine, sid, text, max_tokens=12):
    chunks = [c async for c in engine.chat(sid, [{"role": "user", "content": text}], SamplingParams(max_tokens=max_tokens))]
    return chunks


def _conversation(engine, sid):
    async def go():
        return [await _turn(engine, sid, text) for text in ROUNDS]

    return asyncio.run(go())


def test_same_replies_and_records_as_in_process(child):
    local = Engine(CFG)
    try:
        want = _conversation(local, "a")
        want_record = local.export_session("a")
    finally:
        local.close()
    got = _conversation(child, "a")
    assert ["".join(c.text for c in t) for t in got] == ["".join(c.text for c in t) for t in want]
    assert [[i for c in t for i in c.token_ids] for t in got] == [[i for c in t for i in c.token_ids] for t in want]
    assert got[-1][-1].usage == want[-1][-1].usage
    assert child.export_session("a") == want_record == got[-1][-1].record
    st = child.session_stats("a")
    assert st.rounds == 3 and st.resident
    assert child.has_session("a") and "a" in child.session_ids()
    view = child.view("a")
    assert view.resident and view.record == want_record and view.engine.active_sessions >= 1


def test_step_events_hand_off_times_are_recorded(child):
    """A streamed turn's start crosses to the child and waits for a step, and its steps
    cross back and wake the loop: every leg gets samples, non-negative and far below
    a second on an idle box."""
    from swiftinfer_core.engine.handoff import Handoff

    asyncio.run(_turn(child, "handoff", "Count to five.", max_tokens=6))
    times = child.handoff_times()
    assert set(times) == set(Handoff) - {Handoff.LAG}  # the loop's lag is its owner's (the replica) to time
    for p50, p99 in times.values():
        assert 0.0 <= p50 <= p99 < 1.0
    assert Engine.handoff_times(Engine.__new__(Engine)) == {}  # in-process: nothing crosses a process


def test_errors_raise_at_the_first_read_with_their_type(child):
    async def go():
        with pytest.raises(InvalidRequestError):
            await _turn(child, "bad id!", "hi")
        with pytest.raises(InvalidRequestError):
            async for _ in child.chat("e", [{"role": "nobody", "content": "hi"}], SamplingParams()):
                pass
        gen = child.chat("busy", [{"role": "user", "content": "Count to fifty."}], SamplingParams(max_tokens=200))
        await gen.__anext__()
        with pytest.raises(SessionBusyError):
            await _turn(child, "busy", "again")
        await gen.aclose()  # abort: the session takes turns again at once
        return await _turn(child, "busy", "Stop.", max_tokens=3)

    last = asyncio.run(go())
    assert last[-1].finish_reason in ("stop", "length")
    with pytest.raises(SessionNotFoundError):
        child.session_stats("never")
    assert child.session_stats("busy").rounds == 2


def test_concurrent_streams_and_session_moves(child):
    async def go():
        return await asyncio.gather(*(_turn(child, f"p{i}", f"Say the number {i}.", 6) for i in range(6)))

    outs = asyncio.run(go())
    assert all(o[-1].finish_reason for o in outs)
    snap = child.export_kv("p5")  # 4 slots: the last four turns are resident
    slotless = child.slotless_ids()  # one call, the same answer as a reading per session (other tests' sessions too)
    assert sorted(slotless) == sorted(sid for sid in child.session_ids() if not child.session_stats(sid).resident)
    assert sum(f"p{i}" in slotless for i in range(6)) >= 2  # six conversations, four slots
    assert snap is not None and snap.k.shape == snap.v.shape
    record = child.export_session("p1")
    child.close_session("p1")
    assert not child.has_session("p1")
    child.import_session(record)
    assert child.export_session("p1") == record and not child.session_stats("p1").resident
    child.close_session("p5")
    assert child.import_kv(snap) and child.session_stats("p5").resident
    child.check_health()


def test_a_killed_child_fails_streams_calls_and_health():
    eng = ProcessEngine(CFG, cpu_threads=1)
    try:
        async def go():
            gen = eng.chat("k", [{"role": "user", "content": "Write a long story."}], SamplingParams(max_tokens=500, ignore_eos=True))
            await gen.__anext__()
            os.kill(eng.pid, signal.SIGKILL)
            with pytest.raises(EngineClosedError):
                async for _ in gen:
                    pass

        asyncio.run(asyncio.wait_for(go(), 60))
        with pytest.raises(EngineClosedError):
            eng.stats()
        with pytest.raises(EngineClosedError):
            eng.check_health()
        with pytest.raises(EngineClosedError):
            asyncio.run(_turn(eng, "k2", "hi"))
    finally:
        eng.close()


def test_a_bad_config_raises_in_the_parent(tmp_path):
    with pytest.raises(Exception, match="config|model|No such|not found|exist"):
        ProcessEngine(EngineConfig(device="cpu", model=str(tmp_path / "missing")), cpu_threads=1)


def test_an_expected_record_reaches_the_child(child):
    from swiftinfer_core.errors import StaleSessionError

    asyncio.run(_turn(child, "x", "Name a fruit."))
    record = child.export_session("x")

    async def go(expect):
        return [c async for c in child.chat("x", [{"role": "user", "content": "More."}], SamplingParams(max_tokens=3), expect=expect)]

    stale = type(record)(**{**record.to_dict(), "rounds": record.rounds + 1})
    with pytest.raises(StaleSessionError):
        asyncio.run(go(stale))
    assert child.export_session("x") == record
    assert asyncio.run(go(record))[-1].finish_reason in ("stop", "length")
