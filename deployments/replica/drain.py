"""A replica's drain on scale-down: idle sessions' KV left with the directory, every session handed back."""

from __future__ import annotations

import asyncio
import logging

from deployments.replica.local_sessions import LocalSessions

log = logging.getLogger("ray.serve")


async def drain(engine, local: LocalSessions, directory, replica_id: str, busy: set[str],
                last_turn: dict[str, float], max_bytes: int) -> None:
    """Leave the KV of idle resident sessions this replica still owns (most recent
    first, within ``max_bytes``) with the directory, hand every session back, stop the engine.
    The committed records are already in the log, so a session whose KV does not
    fit is rebuilt from it by its next replica."""
    held = await asyncio.to_thread(engine.session_ids)
    idle = [sid for sid in held if sid not in busy]
    # moved elsewhere, deleted or already given back (rebalanced with its KV held, or slotless):
    # the directory would refuse their KV, which would only spend the budget
    mine = set(await directory.owned.remote(replica_id, idle)) if idle else set()
    idle = sorted((sid for sid in idle if sid in mine), key=lambda sid: -last_turn.get(sid, 0.0))
    moved = 0
    for sid, seq, ref in await local.snapshots(idle, max_bytes):
        moved += bool(await directory.hold_kv.remote(sid, replica_id, seq, [ref]))
    released = await directory.release.remote(replica_id)
    log.info("replica %s drained: handed %d sessions back, %d with their KV", replica_id, released, moved)
    await engine.shutdown()
