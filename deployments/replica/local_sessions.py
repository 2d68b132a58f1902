"""A replica's local copies of sessions, kept equal to what the log committed.

The engine on a replica holds conversations it is serving; the directory holds
the committed state (``seq`` and record of the last logged turn). This class
makes the two agree at the start of every turn and again when a turn ends
without a commit:

- ``sync``: warm if the local copy is exactly the committed record; else the KV
  snapshot a draining owner left (exact cache, "migrated") when the engines
  match; else a rebuild from the record's token ids ("rebuilt"); or a new
  session.
- ``restore``: a turn that was not committed (client gone, timeout, error,
  refused commit) is rolled back to the committed record, so a retry of it is
  never applied twice and every replica agrees on the conversation.
- ``evict_idle``: conversations idle past ``idle_ttl_s``, and the least recently
  used beyond ``max_sessions_per_replica``, leave the engine (slot and ids);
  their next turn rebuilds from the record.
- ``snapshots``: KV of idle resident sessions, put in the object store for a drain
  or a rebalance (kv_wire.py).
- ``drop_unowned``: copies of sessions deleted elsewhere or owned by another
  replica leave the engine (erasure reaches every replica).
- ``hand_back_slotless``: with more conversations than KV slots, those without a
  slot are given back to the directory, so their next turn is placed by load (a
  replica added by the autoscaler takes them) instead of waiting for a slot here.

Closing a local copy, rolling a turn back and starting a turn of the same
session exclude each other (``hold``/``wait``): a turn never starts on a copy
that is being dropped, and a read after a client left (session info, the next
turn) sees the copy rolled back, not the aborted turn.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import ray

from deployments.config import LimitsConfig
from deployments.messages import CacheState, TurnGrant
from deployments.replica import kv_wire
from swiftinfer_core.protocol import EngineProtocol, SessionRecord, SessionView


@dataclass(frozen=True)
class OwnCommit:
    """The last turn of a session that this replica committed itself."""

    seq: int  # committed turns after it
    record: SessionRecord
    turn_key: str | None


class LocalSessions:
    def __init__(self, engine: EngineProtocol, limits: LimitsConfig):
        self._engine = engine
        self._limits = limits
        self._closing: dict[str, asyncio.Event] = {}  # sessions being closed or rolled back
        self.seq: dict[str, int] = {}  # committed turns of each local copy
        self._own: dict[str, OwnCommit] = {}  # sessions whose last commit was this replica's (warm_grant)
        self.idle_evicted = 0
        self.rolled_back = 0

    # ---- turn start / end ------------------------------------------------------
    async def wait(self, sid: str) -> None:
        """Return once no close or roll-back of ``sid`` is in progress."""
        while sid in self._closing:
            await self._closing[sid].wait()

    def hold(self, sid: str) -> asyncio.Event | None:
        """Mark ``sid`` as changing, at once (no await): ``wait`` blocks until
        ``release``. None when someone else holds it already."""
        if sid in self._closing:
            return None
        self._closing[sid] = held = asyncio.Event()
        return held

    def release(self, sid: str, held: asyncio.Event | None) -> None:
        if held is not None and self._closing.get(sid) is held:
            del self._closing[sid]
            held.set()

    async def sync(self, sid: str, grant: TurnGrant, view: SessionView) -> CacheState:
        """Make the local copy equal the committed state in ``grant`` (from
        ``SessionDirectory.begin_turn``). ``view``: the engine's reading of ``sid``
        taken since the session became busy here."""
        record, seq = grant.record, grant.seq
        local = _as_local(view)
        self.seq[sid] = seq
        if sid in self._own and self._own[sid].seq != seq:
            del self._own[sid]  # committed elsewhere since (a grant from this replica's own commit has its seq)
        if record is None:
            if local is not None:  # leftovers of a session deleted or never committed
                await asyncio.to_thread(self._engine.close_session, sid)
            return CacheState.NEW
        if local is not None and local[0] == record:
            return CacheState.WARM if local[1] else CacheState.REBUILT
        if grant.kv is not None:
            snap = await kv_wire.get(grant.kv)
            if snap.record == record and await asyncio.to_thread(self._engine.import_kv, snap):
                return CacheState.MIGRATED
        await asyncio.to_thread(self._engine.import_session, record)
        return CacheState.REBUILT

    def _local(self, sid: str) -> tuple[SessionRecord, bool] | None:
        return _as_local(self._engine.view(sid))  # one engine call: each waits for the step in progress

    def committed(self, sid: str, seq: int, own: OwnCommit | None = None) -> None:
        """The copy is at ``seq`` committed turns; ``own``: this replica committed the last one."""
        self.seq[sid] = seq
        if own is not None:
            self._own[sid] = own

    def warm_grant(self, sid: str, turn_key: str | None) -> TurnGrant | None:
        """A grant without the directory: this replica committed the session's last turn
        and its copy is still that turn's (a roll-back restores it). None otherwise, or
        when ``turn_key`` is that turn's (a retry the directory answers as a replay)."""
        own = self._own.get(sid)
        if own is None or self.seq.get(sid) != own.seq or (turn_key is not None and turn_key == own.turn_key):
            return None
        return TurnGrant(own.seq, own.record, leased=False)

    def forget_commit(self, sid: str) -> None:
        """The next turn of ``sid`` asks the directory (a commit was refused: deleted or moved)."""
        self._own.pop(sid, None)

    async def restore(self, sid: str, record: SessionRecord | None) -> None:
        """Undo an uncommitted turn: back to ``record`` (None: forget the session).
        The caller holds ``sid`` (``hold``)."""
        local = await asyncio.to_thread(self._local, sid)
        if local is None or local[0] == record:
            return  # nothing was applied
        self.rolled_back += 1
        if record is None:
            await self.drop(sid)
        else:
            await asyncio.to_thread(self._engine.import_session, record)

    # ---- dropping copies -------------------------------------------------------
    async def close(self, sid: str) -> bool:
        """Drop the local copy (the record stays in the directory and the log)."""
        await self.wait(sid)
        held = self.hold(sid)
        try:
            return await self.drop(sid)
        finally:
            self.release(sid, held)

    async def drop(self, sid: str) -> bool:
        """``close`` for a caller that holds ``sid`` already."""
        try:
            return await asyncio.to_thread(self._close, sid)
        finally:
            self.seq.pop(sid, None)
            self._own.pop(sid, None)

    def _close(self, sid: str) -> bool:
        if not self._engine.has_session(sid):
            return False
        self._engine.close_session(sid)
        return True

    async def drop_unowned(self, directory, rid: str, busy: set[str]) -> list[str]:
        """Close copies the directory no longer gives this replica (``rid``): the
        session was deleted (DELETE reaches only the owner; this is how every
        other replica lets go, within one eviction period) or another replica
        owns it now. Busy sessions stay. Returns their ids."""
        held = [sid for sid in await asyncio.to_thread(self._engine.session_ids) if sid not in busy]
        dropped = []
        for sid in await directory.unowned.remote(rid, held) if held else []:
            if sid not in busy and await self.close(sid):  # a turn started meanwhile: keep it
                dropped.append(sid)
        return dropped

    async def hand_back_slotless(self, directory, rid: str, busy: set[str]) -> list[str]:
        """Give back to the directory (``disown``) the sessions this engine holds
        without a KV slot, and drop their copies: each would be rebuilt from its
        record here too. Nothing to do (one stats call) unless the engine holds
        more sessions than slots. Returns their ids."""
        st = await asyncio.to_thread(self._engine.stats)
        if st.active_sessions <= st.resident_sessions:
            return []
        slotless = [sid for sid in await asyncio.to_thread(self._engine.slotless_ids) if sid not in busy]
        out = []
        for sid in await directory.disown.remote(rid, slotless) if slotless else []:
            if sid not in busy and await self.close(sid):  # a turn started meanwhile: it owns the session again
                out.append(sid)
        return out

    async def evict_idle(self, last_turn: dict[str, float], busy: set[str]) -> list[str]:
        """Close copies idle past the TTL, then the least recently used while the
        engine holds more than ``max_sessions_per_replica``. Returns their ids."""
        now = time.time()
        held = await asyncio.to_thread(self._engine.session_ids)
        idle = sorted((last_turn.get(sid, 0.0), sid) for sid in held if sid not in busy)
        excess = len(held) - self._limits.max_sessions_per_replica
        ttl = self._limits.idle_ttl_s
        victims = [sid for i, (t, sid) in enumerate(idle) if i < excess or (ttl is not None and now - t > ttl)]
        evicted = []
        for sid in victims:
            if sid in busy:  # a turn started meanwhile: keep it
                continue
            if await self.close(sid):
                evicted.append(sid)
        self.idle_evicted += len(evicted)
        return evicted

    # ---- drain ----------------------------------------------------------------
    async def snapshots(self, sids: list[str], budget_bytes: float) -> list[tuple[str, int, ray.ObjectRef]]:
        """``(session, committed seq, object ref of its KVSnapshot in wire form)`` of
        resident idle sessions in ``sids`` order, while their sizes fit ``budget_bytes``."""
        out = []
        for sid in sids:
            snap = await asyncio.to_thread(self._engine.export_kv, sid)
            if snap is None or snap.nbytes > budget_bytes or sid not in self.seq:
                continue
            budget_bytes -= snap.nbytes
            out.append((sid, self.seq[sid], await kv_wire.put(snap)))
        return out


def _as_local(view: SessionView) -> tuple[SessionRecord, bool] | None:
    """(record, resident) of the engine's copy, None when it holds none."""
    return None if view.record is None else (view.record, view.resident)
