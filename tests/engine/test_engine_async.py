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


def test_coalesce_merges_only_what_is_already_queued():
    from swiftinfer_core.engine.engine import _coalesce
    from swiftinfer_core.protocol import StreamChunk, Usage

    async def go():
        q: asyncio.Queue = asyncio.Queue()
        first = StreamChunk("a", [1])
        alone = _coalesce(first, q)  # nothing behind it: returned as is
        for c in (StreamChunk("b", [2]), StreamChunk("c", [3], "length", Usage(1, 3, 1, 0))):
            q.put_nowait(c)
        merged, err = _coalesce(first, q)
        q.put_nowait(StreamChunk("d", [4]))
        q.put_nowait(ValueError("boom"))
        q.put_nowait(StreamChunk("never", [9]))
        cut, pending = _coalesce(StreamChunk("x", [8]), q)
        return alone, merged, err, cut, pending, q.qsize()

    alone, merged, err, cut, pending, left = asyncio.run(go())
    assert alone == (StreamChunk("a", [1]), None)
    assert (merged.text, merged.token_ids, merged.finish_reason, err) == ("abc", [1, 2, 3], "length", None)
    assert merged.usage.completion_tokens == 3
    assert (cut.text, cut.token_ids, cut.finish_reason, str(pending)) == ("xd", [8, 4], None, "boom")
    assert left == 1  # stops at the error: nothing after it is taken


@pytest.mark.parametrize("fault, fatal", [("CUDA error: an illegal memory access was encountered", True), ("shape mismatch", False)])
def test_a_device_fault_stops_the_engine_and_fails_health_but_other_errors_do_not(make_core, fault, fatal):
    from swiftinfer_core.errors import EngineClosedError

    eng = Engine(core=make_core())
    run = eng.core.runner.run

    def faulty(batch):  # fault injection: the next step fails as a device fault would
        eng.core.runner.run = run
        raise RuntimeError(fault)

    eng.core.runner.run = faulty

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
