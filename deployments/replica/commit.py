"""Sending finished turns' commits to the session directory, group-committed and
across its restarts.

The directory is one actor for every replica, and each call to it costs it about a
millisecond of its one interpreter (bench/results/directory_capacity.json), most of it
Ray's own handling of the call. So a replica sends its commits in batches: a commit
that arrives while a batch is on its way waits for the next one, so when turns end
one at a time each leaves at once, and under load one call carries many. The
directory still logs and acknowledges each commit on its own.
"""

from __future__ import annotations

import asyncio
import time

from ray.exceptions import RayActorError

from deployments.messages import Commit

COMMIT_RETRY_S = 10.0  # how long a finished turn's commit waits for a restarting directory
MAX_BATCH = 64  # commits per call


async def send_commits(directory, replica_id: str, commits: list[Commit], retry_s: float = COMMIT_RETRY_S) -> list:
    """Per commit: True when the directory logged it (also when an earlier send had, and a
    restart lost the reply), False when it refused it (the session was deleted or
    moved), or the exception its logging raised. A directory restarting (Ray brings it
    back from the log in ~1-2 s) is waited for up to ``retry_s``: sending the same
    commits again is safe, since the directory acknowledges a turn it already holds
    without logging it twice."""
    give_up = time.monotonic() + retry_s
    while True:
        try:
            return await directory.commit_many.remote(replica_id, commits)
        except RayActorError:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.25)


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # a caller that left must not leave an unread error


class CommitBatcher:
    """One replica's commits, group-committed (module doc). ``commit`` returns that
    commit's answer; a caller cancelled while waiting leaves its commit in the batch
    (it may land: the turn's roll-back then meets a newer record, as when a reply is lost)."""

    def __init__(self, directory, replica_id: str, retry_s: float = COMMIT_RETRY_S, max_batch: int = MAX_BATCH):
        self._directory, self._id, self._retry_s, self._max = directory, replica_id, retry_s, max_batch
        self._queue: list[tuple[Commit, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.calls = 0  # calls to the directory (commits / calls: the batching)

    async def commit(self, c: Commit) -> bool:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fut.add_done_callback(_retrieve)
        self._queue.append((c, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            self.calls += 1
            try:
                answers = await send_commits(self._directory, self._id, [c for c, _ in batch], self._retry_s)
            except Exception as exc:  # the directory gone past retry_s: none of these is known to be logged
                answers = [exc] * len(batch)
            for (_, fut), answer in zip(batch, answers):
                if fut.done():
                    continue
                if isinstance(answer, BaseException):
                    fut.set_exception(answer)
                else:
                    fut.set_result(answer)
