"""Paced token streams: a replica's chunks per second stay within a budget.

Every chunk a replica yields is one message on the way to the ingress (a gRPC
message, or a Ray object with ``replica_transport: ray``), and one ASGI message
again on the way to the HTTP proxy; each costs the same Python work whether it
holds one token or ten. At 128 turns decoding ~40 tokens/s each
a fixed 50 ms pace still makes ~2,500 items/s per hop; on an H200 at 7B shape
the replica's Ray threads and the proxy were then above one core each
(bench/results/served_7b_profile.md), and the backlog showed up as time to
first token and time per token. So the pace is set per replica, not per turn:

- ``ChunkBudget`` spreads ``max_chunks_per_s`` over the streams open on the
  replica: each waits ``max(floor, open_streams / max_chunks_per_s)`` between
  chunks. A lone stream keeps the floor's pace; 128 streams under a budget of
  1,000/s leave about 8 chunks a second each.
- the first chunk goes out at once (TTFT is not delayed);
- the final chunk (finish reason, usage) goes out at once, with whatever was held;
- any other chunk is held and leaves, merged with the chunks that came
  meanwhile (text and token ids concatenated in order; one merged chunk per
  choice when the turn has several, ``SamplingParams.n``), with the first
  token that arrives once the interval has passed. No timer: a held chunk
  waits at most the interval plus one engine step, and a token costs the
  replica's loop one wake-up of this generator, not a task and a timed wait
  (5.2 against 15.4 us per token at 128 streams on this project's CPU box,
  bench/results/pacing_cost.json).

With an interval of 0 the stream passes through unchanged.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from swiftinfer_core.protocol import StreamChunk, merge_per_choice


class ChunkBudget:
    """The pace of each stream on one replica: ``max(floor_s, open / max_chunks_per_s)``
    (``max_chunks_per_s == 0``: the floor alone)."""

    def __init__(self, floor_s: float, max_chunks_per_s: float = 0.0):
        if floor_s < 0 or max_chunks_per_s < 0:
            raise ValueError(f"pace floor {floor_s} s and budget {max_chunks_per_s}/s must be >= 0")
        self.floor_s = floor_s
        self.max_chunks_per_s = max_chunks_per_s
        self.open = 0  # streams between their first and final chunk

    def interval_s(self) -> float:
        if self.max_chunks_per_s <= 0:
            return self.floor_s
        return max(self.floor_s, self.open / self.max_chunks_per_s)

    def paced(self, stream: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        return paced(stream, self)


async def paced(stream: AsyncIterator[StreamChunk], pace: float | ChunkBudget) -> AsyncIterator[StreamChunk]:
    """``stream`` with its chunks at most one per interval: a fixed number of seconds,
    or a replica's budget read at every chunk (``budget.open`` counts this stream while it runs)."""
    budget = pace if isinstance(pace, ChunkBudget) else ChunkBudget(pace)
    if budget.floor_s <= 0 and budget.max_chunks_per_s <= 0:
        async for chunk in stream:
            yield chunk
        return
    loop = asyncio.get_running_loop()
    held: list[StreamChunk] = []
    last = float("-inf")  # when the last chunk left
    budget.open += 1
    try:
        async for chunk in stream:
            held.append(chunk)
            now = loop.time()
            if chunk.final or now - last >= budget.interval_s():
                for merged in merge_per_choice(held):  # one per choice of the turn (SamplingParams.n)
                    yield merged
                held, last = [], now
                if chunk.final:
                    return
        if held:  # the stream ended without a final chunk
            for merged in merge_per_choice(held):
                yield merged
    finally:
        budget.open -= 1
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
