"""Paced token streams: at most one chunk per interval leaves a replica per turn.

Every chunk a replica yields is one Ray object on the way to the ingress, and
one ASGI message again on the way to the HTTP proxy; each costs the same Python
work whether it holds one token or ten. At 100 turns decoding ~70 tokens/s each
that is 7,000 items/s per hop, more than one replica, ingress or proxy process
keeps up with, and the backlog shows up as seconds of stall in the streams.
Pacing caps the item rate at ``1 / interval`` per turn and keeps the latency
that matters:

- the first chunk goes out at once (TTFT is not delayed);
- the final chunk (finish reason, usage) goes out at once, with whatever was held;
- any other chunk waits at most ``interval`` and travels merged with the
  chunks that came meanwhile (text and token ids concatenated in order).

With ``interval <= 0`` the stream passes through unchanged.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from swiftinfer_core.protocol import StreamChunk, merge_chunks


async def paced(stream: AsyncIterator[StreamChunk], interval_s: float) -> AsyncIterator[StreamChunk]:
    if interval_s <= 0:
        async for chunk in stream:
            yield chunk
        return
    loop = asyncio.get_running_loop()
    nxt: asyncio.Future | None = None
    held: list[StreamChunk] = []
    last = float("-inf")  # when the last chunk left
    try:
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(stream.__anext__())
            timeout = max(0.0, last + interval_s - loop.time()) if held else None
            done, _ = await asyncio.wait({nxt}, timeout=timeout)
            if done:
                try:
                    chunk = nxt.result()
                except StopAsyncIteration:
                    break
                nxt = None
                held.append(chunk)
                if chunk.finish_reason is None and loop.time() - last < interval_s:
                    continue  # hold it: the interval since the last chunk has not passed
            yield merge_chunks(held)
            held, last = [], loop.time()
            if chunk.finish_reason is not None:
                return
        if held:  # the stream ended without a final chunk
            yield merge_chunks(held)
    finally:
        if nxt is not None and not nxt.done():
            nxt.cancel()
            await asyncio.gather(nxt, return_exceptions=True)
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
