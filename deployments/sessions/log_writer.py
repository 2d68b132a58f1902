"""Group commit: every log write of the directory goes through one batch writer.

``await writer.submit(op)`` returns once ``op`` is durable (or raises why it
is not). Operations submitted while a batch is being written form the next
batch, so under load one transaction (one fsync, one Redis round trip) carries
many turns, and when idle a lone turn is written at once: no timer, no added
latency. Batches are written one at a time in submission order, so two
operations on one session reach the log in the order they were submitted.

The log call runs in a worker thread: the directory's event loop keeps
answering routers and replicas while a batch is written.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from deployments.sessions.session_log import LogConflictError, LogOp, SessionLog

log = logging.getLogger("ray.serve")


@dataclass
class WriterStats:
    batches: int = 0
    ops: int = 0
    refused: int = 0
    failed_batches: int = 0
    write_s: float = 0.0  # time spent inside SessionLog.write
    largest_batch: int = 0

    def to_dict(self) -> dict:
        return {**self.__dict__, "mean_batch": self.ops / self.batches if self.batches else 0.0}


@dataclass
class _Pending:
    op: LogOp
    done: asyncio.Future = field(repr=False)


class BatchWriter:
    def __init__(self, session_log: SessionLog, max_batch: int):
        self._log = session_log
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task | None = None
        self.stats = WriterStats()

    async def submit(self, op: LogOp) -> None:
        """Durably write ``op``; raises ``LogConflictError`` if the log refused it,
        or the log's own error if the batch could not be written."""
        loop = asyncio.get_running_loop()
        pending = _Pending(op, loop.create_future())
        pending.done.add_done_callback(_retrieve)  # a caller that left must not leave an unread error
        self._queue.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        await asyncio.shield(pending.done)  # a cancelled caller must not cancel the batch

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            t0 = loop.time()
            try:
                results = await asyncio.to_thread(self._log.write, [p.op for p in batch])
            except Exception as exc:  # nothing in this batch is durable
                log.exception("session log batch of %d operations failed", len(batch))
                self.stats.failed_batches += 1
                results = [exc] * len(batch)
            self.stats.write_s += loop.time() - t0
            self.stats.batches += 1
            self.stats.ops += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for p, err in zip(batch, results):
                if p.done.done():
                    continue
                if err is None:
                    p.done.set_result(None)
                else:
                    self.stats.refused += isinstance(err, LogConflictError)
                    p.done.set_exception(err)

    async def drain(self) -> None:
        """Wait until everything submitted so far is written."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()
