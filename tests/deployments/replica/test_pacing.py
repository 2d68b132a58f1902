"""Paced streams: first and last chunk at once, others merged, nothing lost or reordered."""

import asyncio
import time

import pytest

from deployments.replica.pacing import ChunkBudget, paced
from swiftinfer_core.protocol import StreamChunk, Usage, merge_chunks


async def tokens(n: int, every_s: float, closed: list | None = None, fail_at: int | None = None):
    try:
        for i in range(n):
            await asyncio.sleep(every_s)
            if i == fail_at:
                raise RuntimeError("engine failed")
            last = i == n - 1
            yield StreamChunk(f"t{i} ", [i], "length" if last else None, Usage(3, n, 3, 0) if last else None)
    finally:
        if closed is not None:
            closed.append(True)


async def collect(stream) -> list[tuple[float, StreamChunk]]:
    t0 = time.perf_counter()
    return [(time.perf_counter() - t0, c) async for c in stream]


def test_zero_interval_passes_every_chunk_through():
    out = asyncio.run(collect(paced(tokens(6, 0.001), 0.0)))
    assert [c.token_ids for _, c in out] == [[i] for i in range(6)]


def test_chunks_are_merged_in_order_and_spaced_by_the_interval():
    out = asyncio.run(collect(paced(tokens(40, 0.005), 0.05)))
    chunks = [c for _, c in out]
    assert [t for c in chunks for t in c.token_ids] == list(range(40))
    assert "".join(c.text for c in chunks) == "".join(f"t{i} " for i in range(40))
    assert chunks[0].token_ids == [0]  # the first token is not held
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 40
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert 3 <= len(chunks) <= 8  # ~0.2 s of tokens in 50 ms steps, not 40 chunks
    times = [t for t, _ in out]
    # between the first and the final chunk, no two leave closer than the interval
    assert all(b - a >= 0.045 for a, b in zip(times[:-2], times[1:-1]))


def test_final_chunk_is_not_held():
    # tokens every 30 ms, interval 1 s: token 0 at once, then everything else with the final
    out = asyncio.run(collect(paced(tokens(4, 0.03), 1.0)))
    assert [c.token_ids for _, c in out] == [[0], [1, 2, 3]]
    assert out[-1][0] < 0.5


def test_held_text_leaves_with_the_first_token_after_the_interval():
    async def stalls():  # two tokens, a 0.3 s stall (a long step), then the rest
        for i, wait in enumerate((0.005, 0.005, 0.3, 0.005)):
            await asyncio.sleep(wait)
            last = i == 3
            yield StreamChunk(f"t{i} ", [i], "stop" if last else None, Usage(1, 4, 1, 0) if last else None)

    out = asyncio.run(collect(paced(stalls(), 0.05)))
    assert [c.token_ids for _, c in out] == [[0], [1, 2], [3]]
    assert out[1][0] > 0.25  # token 1 waited for token 2: no timer wakes the stream between tokens


def test_closing_the_paced_stream_closes_the_engine_stream():
    closed: list = []

    async def go():
        stream = paced(tokens(100, 0.01, closed), 0.02)
        got = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()
        return got

    got = asyncio.run(go())
    assert len(got) == 2 and closed == [True]


def test_engine_errors_propagate():
    with pytest.raises(RuntimeError, match="engine failed"):
        asyncio.run(collect(paced(tokens(10, 0.005, fail_at=5), 0.05)))


def test_merge_keeps_the_last_chunks_finish_and_usage():
    u = Usage(1, 2, 1, 0)
    m = merge_chunks([StreamChunk("a", [1], prompt_tokens=5), StreamChunk("b", [2], "stop", u)])
    assert (m.text, m.token_ids, m.finish_reason, m.usage) == ("ab", [1, 2], "stop", u)
    assert m.prompt_tokens == 5  # the first chunk's input count (TurnStart.prompt_tokens) survives the merge


def test_budget_spreads_the_replica_rate_over_open_streams():
    budget = ChunkBudget(0.01, max_chunks_per_s=100)
    assert budget.interval_s() == 0.01  # no stream open: the floor
    budget.open = 5
    assert budget.interval_s() == pytest.approx(0.05)  # 5 streams share 100 chunks/s
    assert ChunkBudget(0.01, 0).interval_s() == 0.01  # no budget: the floor alone
    with pytest.raises(ValueError):
        ChunkBudget(-1.0)


def test_streams_under_a_budget_slow_down_together_and_lose_nothing():
    # 8 streams of 60 tokens every 2 ms under 200 chunks/s: each paces at 8/200 = 40 ms
    budget = ChunkBudget(0.0, max_chunks_per_s=200)

    async def go():
        return await asyncio.gather(*(collect(budget.paced(tokens(60, 0.002))) for _ in range(8)))

    outs = asyncio.run(go())
    assert budget.open == 0  # every stream left the count
    for out in outs:
        chunks = [c for _, c in out]
        assert [t for c in chunks for t in c.token_ids] == list(range(60))
        assert chunks[-1].finish_reason == "length"
    total = sum(len(out) for out in outs)
    alone = len(asyncio.run(collect(ChunkBudget(0.0, 200).paced(tokens(60, 0.002)))))
    # one stream alone paces at 5 ms (1/200 s) and sends far more chunks than each of 8 sharing
    assert total / 8 < alone / 2
    # over the whole run the 8 streams together stay near the budget (first and last chunks are free)
    span = max(out[-1][0] for out in outs)
    assert (total - 16) / span <= 200 * 1.3
