"""The async facade: streaming, abort on disconnect, error delivery."""

import asyncio

import pytest

from swiftinfer_core import Engine, SamplingParams, SessionBusyError


@pytest.fixture
def engine(make_core):
    eng = Engine(core=make_core())
    yield eng
    eng.close()


def test_streams_chunks_then_usage(engine):
    async def go():
        chunks = [c async for c in engine.chat("s", [{"role": "user", "content": "Hi there!"}], SamplingParams(max_tokens=8))]
        return chunks

    chunks = asyncio.run(go())
    assert len(chunks) >= 2 and chunks[-1].finish_reason in ("stop", "length")
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].usage.completion_tokens >= 1


def test_abandoned_stream_frees_the_session(engine):
    async def go():
        gen = engine.chat("d", [{"role": "user", "content": "Write a long poem."}], SamplingParams(max_tokens=200))
        async for _ in gen:
            break  # client went away after the first chunk
        await gen.aclose()
        # the session is free again at once, and keeps what was fed
        more = [c async for c in engine.chat("d", [{"role": "user", "content": "Shorter."}], SamplingParams(max_tokens=4))]
        return more

    more = asyncio.run(go())
    st = engine.session_stats("d")
    assert more[-1].finish_reason and st.rounds == 2


def test_concurrent_turn_on_same_session(engine):
    async def go():
        g = engine.chat("c", [{"role": "user", "content": "Hello"}], SamplingParams(max_tokens=30))
        first = await g.__anext__()
        with pytest.raises(SessionBusyError):
            async for _ in engine.chat("c", [{"role": "user", "content": "Again"}], SamplingParams(max_tokens=3)):
                pass
        await g.aclose()
        return first

    assert asyncio.run(go()).text is not None


def test_many_sessions_in_parallel(engine):
    async def one(i):
        return "".join([c.text async for c in engine.chat(f"p{i}", [{"role": "user", "content": f"Say the number {i}."}], SamplingParams(max_tokens=6))])

    async def go():
        return await asyncio.gather(*(one(i) for i in range(6)))

    outs = asyncio.run(go())
    assert len(outs) == 6 and engine.stats().active_sessions == 6


@pytest.mark.parametrize("fault, fatal", [("CUDA error: an illegal memory access was encountered", True), ("shape mismatch", False)])
def test_a_device_fault_stops_the_engine_and_fails_health_but_other_errors_do_not(make_core, fault, fatal):
    from swiftinfer_core.errors import EngineClosedError

    eng = Engine(core=make_core())
    run = eng.core.batches.launch

    def faulty(batch):  # fault injection: the next step fails as a device fault would
        eng.core.batches.launch = run
        raise RuntimeError(fault)

    eng.core.batches.launch = faulty

    async def turn(sid):
        return [c async for c in eng.chat(sid, [{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=3))]

    try:
        with pytest.raises(EngineClosedError, match="engine step failed"):
            asyncio.run(turn("a"))
        if fatal:
            with pytest.raises(EngineClosedError, match="illegal memory access"):
                eng.check_health()
            with pytest.raises(EngineClosedError, match="shut down after an error"):
                asyncio.run(turn("b"))
        else:
            eng.check_health()
            assert asyncio.run(turn("b"))[-1].finish_reason == "length"
    finally:
        eng.close()


@pytest.mark.parametrize("sticky", [True, False])
def test_injected_fault_stops_the_engine_only_when_sticky(make_core, sticky):
    """engine/faults.py on a CPU: the armed step really indexes a slot far outside the
    pool (an IndexError here); ``sticky`` stops the engine as a CUDA fault would."""
    from swiftinfer_core.errors import EngineClosedError

    eng = Engine(core=make_core())

    async def turn(sid):
        return [c async for c in eng.chat(sid, [{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=3))]

    try:
        asyncio.run(turn("warm"))
        eng.inject_device_fault(sticky=sticky)
        with pytest.raises(EngineClosedError, match="engine step failed"):
            asyncio.run(turn("a"))
        if sticky:
            with pytest.raises(EngineClosedError, match="injected device fault"):
                eng.check_health()
        else:
            eng.check_health()
            assert asyncio.run(turn("b"))[-1].finish_reason == "length"
    finally:
        eng.close()


def test_starting_and_ending_turns_never_block_the_event_loop(make_core):
    """A replica's event loop carries every stream: starting or aborting a turn
    must not wait for the model step in progress (here each step takes 1 s)."""
    import time

    eng = Engine(core=make_core())
    run = eng.core.batches.launch

    def slow(batch):
        time.sleep(1.0)
        return run(batch)

    eng.core.batches.launch = slow
    msgs = [{"role": "user", "content": "Count to twenty."}]

    async def go():
        gaps, done = [], asyncio.Event()

        async def ticker():
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        long = eng.chat("long", msgs, SamplingParams(max_tokens=8, ignore_eos=True))
        await long.__anext__()  # the engine now steps without pause
        for i in range(2):
            g = eng.chat(f"s{i}", msgs, SamplingParams(max_tokens=4, ignore_eos=True))
            assert (await g.__anext__()).token_ids
            await g.aclose()  # abort mid-turn
        await long.aclose()
        done.set()
        await tick
        return max(gaps)

    try:
        worst = asyncio.run(go())
        assert worst < 0.5, f"the event loop stalled for {worst:.2f} s behind a 1 s step"
        assert eng.session_stats("s0").rounds == 1 and eng.session_stats("long").rounds == 1
    finally:
        eng.close()


def test_view_reads_engine_and_session_at_once(engine):
    unknown = engine.view("nobody")
    assert unknown.record is None and not unknown.resident and unknown.engine.active_sessions == 0
    for _ in engine.chat_sync("v", [{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=3)):
        pass
    seen = engine.view("v")
    assert seen.record == engine.export_session("v") and seen.resident
    assert (seen.engine.active_sessions, seen.engine.resident_sessions) == (1, 1)
