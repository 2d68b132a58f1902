"""Sending a finished turn's commit to the session directory, across its restarts."""

from __future__ import annotations

import asyncio
import time

from ray.exceptions import RayActorError

from deployments.messages import CommittedTurn
from swiftinfer_core.protocol import SessionRecord

COMMIT_RETRY_S = 10.0  # how long a finished turn's commit waits for a restarting directory


async def send_commit(directory, sid: str, replica_id: str, seq: int, record: SessionRecord, digest: str | None,
                      turn: CommittedTurn, retry_s: float = COMMIT_RETRY_S) -> bool:
    """True when the directory logged the turn at ``seq`` (also when an earlier send
    of this commit had, and a restart lost the reply); False when it refused it (the
    session was deleted or moved). A directory restarting (Ray brings it back from
    the log in ~1-2 s) is waited for up to ``retry_s``: sending the same commit again
    is safe, since the directory acknowledges a turn it already holds without logging
    it twice."""
    give_up = time.monotonic() + retry_s
    while True:
        try:
            return await directory.commit.remote(sid, replica_id, seq, record, digest, turn)
        except RayActorError:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.25)
