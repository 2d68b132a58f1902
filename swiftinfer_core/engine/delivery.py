"""Chunks from the engine's step thread to the callers' event loops.

The step thread (engine.py, or the engine child's reader in process.py) puts each
turn's chunks on that turn's asyncio queue with one cross-thread wake-up per loop;
the caller's async generator (``read_stream``) drains its queue and merges what
already waits into one chunk per choice, so a consumer that falls behind gets fewer,
larger chunks instead of a backlog.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from swiftinfer_core.protocol import StreamChunk, merge_per_choice


def deliver_to_loops(items: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, object]],
                     on_wake: Callable[[], None] | None = None) -> None:
    """From a non-loop thread: put each item on its queue, with one cross-thread
    wake-up per event loop (not one per item). ``on_wake`` runs on each loop as
    its items land (hand-off timing, engine/handoff.py)."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for loop, queue, item in items:
        by_loop.setdefault(loop, []).append((queue, item))
    for loop, batch in by_loop.items():
        if not loop.is_closed():
            loop.call_soon_threadsafe(_put_all, batch, on_wake)


def _put_all(batch: list[tuple[asyncio.Queue, object]], on_wake: Callable[[], None] | None = None) -> None:
    if on_wake is not None:
        on_wake()
    for queue, item in batch:
        queue.put_nowait(item)


async def read_stream(queue: asyncio.Queue) -> AsyncIterator[StreamChunk]:
    """A turn's chunks from its queue until the final one; an error item raises."""
    while True:
        item = await queue.get()
        if isinstance(item, BaseException):
            raise item
        items, pending = coalesce(item, queue)
        for chunk in items:
            yield chunk
        if pending is not None:
            raise pending
        if items[-1].final:
            return


def coalesce(item: StreamChunk, queue: asyncio.Queue) -> tuple[list[StreamChunk], BaseException | None]:
    """Merge chunks already waiting behind ``item`` into one per choice (the
    turn's final chunk last). A consumer that keeps up sees one chunk per token
    and choice; one that falls behind (a busy replica loop, a slow stream) gets
    fewer, larger chunks instead of a growing backlog. Never waits."""
    chunks = [item]
    while not chunks[-1].final and not queue.empty():
        nxt = queue.get_nowait()
        if isinstance(nxt, BaseException):
            return merge_per_choice(chunks), nxt
        chunks.append(nxt)
    return merge_per_choice(chunks), None
