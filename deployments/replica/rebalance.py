"""A replica's share of rebalancing: hand sessions over, with their exact KV, when
the directory says it owns more than its fair share (sessions/rebalance.py).

One step per eviction period (replica.py ``_evict_loop``)::

    directory.rebalance_pick(rid, idle sessions, most recent turn first) -> k of them
    for each, within max_bytes:  export_kv -> object store (kv_wire.py) -> directory.hold_kv(sid, rid, seq, [ref])
    directory.give_back(rid, those held)  -> owner None; the next turn is placed by load

Only sessions between turns are offered (``busy`` excluded; the directory also
refuses any with a lease), and only those whose KV was left are given back, so
each moved session's next turn imports its cache exactly (``CacheState.MIGRATED``)
instead of rebuilding. Most recent first: those are the conversations still
talking, whose moves relieve this replica.

The races, and why each ends well:
- a turn begins between the export and ``hold_kv``: the lease (or the seq it
  committed) makes ``hold_kv`` refuse; the session stays here;
- a turn begins between ``hold_kv`` and ``give_back``: ``begin_turn`` took the
  held KV (and the lease), so ``give_back`` refuses; it stays here, warm;
- a router still remembering this replica sends the next turn here after the
  hand-back: ``begin_turn`` makes this replica the owner again and takes the held
  KV, which the warm copy here never reads (sync prefers the local copy);
- the local copy stays until another replica owns the session: ``drop_unowned``
  (next period) closes it then, and not before.
"""

from __future__ import annotations

import asyncio
import logging

from deployments.replica.local_sessions import LocalSessions

log = logging.getLogger("ray.serve")


async def rebalance_step(engine, local: LocalSessions, directory, rid: str, busy: set[str],
                         last_turn: dict[str, float], max_bytes: int) -> list[str]:
    """Hand over what the directory asks for (module docstring). Returns the sessions
    given back (empty when balanced, the usual case: one directory call)."""
    if max_bytes <= 0:
        return []
    held = await asyncio.to_thread(engine.session_ids)
    idle = sorted((sid for sid in held if sid not in busy and sid in local.seq), key=lambda sid: -last_turn.get(sid, 0.0))
    if not idle:
        return []
    picked = await directory.rebalance_pick.remote(rid, idle)
    if not picked:
        return []
    left = []
    try:
        for sid, seq, ref in await local.snapshots([sid for sid in picked if sid not in busy], max_bytes):
            if sid not in busy and await directory.hold_kv.remote(sid, rid, seq, [ref]):
                left.append(sid)
    finally:  # always: ends the pick's reservation at the directory, even with nothing left
        given = await directory.give_back.remote(rid, left)
        for sid in given:  # a turn sent here after the hand-back asks the directory (takes the session back)
            local.forget_commit(sid)
    if given:
        log.info("replica %s rebalanced: handed %d of %d picked sessions over with their KV", rid, len(given), len(picked))
    return given
