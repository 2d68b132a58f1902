"""Sessions a replica gives back to the directory, and why (``Entry.handed``).

Part of ``SessionDirectory`` (directory.py), as a base class: the same actor,
the same event loop, the same state (``_entries``, ``_owned``, ``_reports``,
``_transit``, ``_rebalance``). Three reasons, three ways:

- ``"drain"`` (``release``): a replica being scaled down gives back everything,
  after leaving the KV of its idle sessions (``hold_kv``); the next owner imports it.
- ``"slotless"`` (``disown``): a replica holding more conversations than KV slots
  gives back those without a slot; they are rebuilt from the record elsewhere, as
  they would have been there. The owner-less state is logged (it survives a restart).
- ``"rebalance"`` (``rebalance_pick``, then ``give_back``): a replica above its fair
  share (rebalance.py) gives back sessions between turns whose KV it has just left
  here, so the next turn of each is placed by load and imports that KV exactly.
  Not logged: a restarted directory puts them back with their old owner, which keeps
  its copy until another replica owns the session (``unowned``).

Before a drain's or a rebalance's hand-back the owner leaves the session's KV
here (``hold_kv``), for the next owner's first turn.

Every hand-back sets the owner to None; the next ``place``/``begin_turn``/``commit``
names the new owner (directory.py ``_landed`` reports the move).
"""

from __future__ import annotations

import asyncio

import ray

from deployments.sessions.rebalance import moves_for
from deployments.sessions.session_log import ReleaseOp


class HandBacks:
    async def hold_kv(self, sid: str, rid: str, seq: int, kv: list[ray.ObjectRef]) -> bool:
        """The owner's cache of ``sid`` at turn ``seq``, left by a drain or before a
        rebalance's ``give_back``: ``kv`` holds the ref (in a list, so Ray passes the ref,
        not the object) of what the owner put in the object store; a copy owned by
        this long-lived actor is kept for the next owner's first turn (replica/kv_wire.py).
        Refused while a turn is in flight or once one committed past ``seq``, checked
        again after the copy (a turn may begin meanwhile)."""
        def holdable() -> bool:
            entry = self._entries.get(sid)
            return entry is not None and entry.owner == rid and entry.seq == seq and entry.lease is None

        if not holdable():
            return False
        # read in place (zero-copy for the wire form's arrays), copied once off the event loop
        ref = await asyncio.to_thread(ray.put, await kv[0])
        if not holdable():
            return False
        self._entries[sid].kv = (seq, ref)
        return True

    async def release(self, rid: str) -> int:
        """A draining replica hands its sessions back: no owner, so the next turn
        of each goes to the best other replica (which imports the KV snapshot or
        rebuilds from the record)."""
        sids = [sid for sid in self._owned.pop(rid, set()) if self._entries[sid].owner == rid]
        for sid in sids:
            entry = self._entries[sid]
            entry.owner, entry.handed = None, "drain"
            entry.moves += 1  # its next turn runs elsewhere
        self._reports.forget(rid)
        self._transit.handed(rid, [])  # a pick it left unfinished no longer counts
        self._reports.event("replica_drained", replica=rid, sessions=len(sids))
        committed = [sid for sid in sids if self._entries[sid].seq > 0]
        if committed:
            await self._write(ReleaseOp(committed))
        return len(sids)

    async def disown(self, rid: str, sids: list[str]) -> list[str]:
        """``rid`` gives back sessions it holds without a KV slot (more conversations
        than slots): no owner, so the next placement puts each on the least-loaded
        replica, which rebuilds it from the record as ``rid`` would have had to. A
        session with a turn in flight, or owned by another replica, is kept. No more
        are given back than other live replicas have free slots (none: nothing gained,
        so nothing moves). Returns the sessions given back."""
        room = sum(s.free_slots for r, s in self._reports.routable(self._lease_stale_s).items() if r != rid)
        out = []
        for sid in sids:
            entry = self._entries.get(sid)
            if len(out) < room and entry is not None and entry.owner == rid and entry.lease is None:
                self._set_owner(sid, entry, None)
                entry.handed = "slotless"
                entry.moves += 1  # like a drain's hand-back: its next turn is placed by load
                out.append(sid)
        if out:
            self._reports.event("sessions_handed_back", replica=rid, sessions=len(out), reason="slotless")
        committed = [sid for sid in out if self._entries[sid].seq > 0]
        if committed:
            await self._write(ReleaseOp(committed))
        return out

    # ---- rebalancing (rebalance.py) ----------------------------------------------------
    def rebalance_quota(self, rid: str) -> int:
        """How many of its sessions ``rid`` should hand over now (rebalance.moves_for)."""
        self._expire_transit()
        owned = {r: len(s) for r, s in self._owned.items()}
        live = self._reports.routable(self._lease_stale_s)
        return moves_for(rid, owned, live, self._rebalance, self._transit.handed_count(), self._transit.picked_count(rid))

    def rebalance_pick(self, rid: str, candidates: list[str]) -> list[str]:
        """The first ``rebalance_quota(rid)`` of ``candidates`` (``rid``'s sessions
        between turns, in its order of preference) that ``rid`` owns, with no turn in
        flight and at least one committed turn. They count as in transit until
        ``give_back`` (or ``PICK_TIMEOUT_S``), so no other replica moves into the same room."""
        k = self.rebalance_quota(rid)
        out = []
        for sid in candidates:
            if len(out) >= k:
                break
            entry = self._entries.get(sid)
            if entry is not None and entry.owner == rid and entry.lease is None and entry.seq > 0:
                out.append(sid)
        if out:
            self._transit.picked(rid, len(out))
        return out

    def give_back(self, rid: str, sids: list[str]) -> list[str]:
        """``rid`` gives back picked sessions whose KV it left here (``hold_kv``). Only
        those still exactly so are: owned by ``rid``, no turn in flight, the held KV at
        the committed ``seq`` (a turn that began after ``hold_kv`` took the KV, and one
        that committed moved ``seq`` on). Returns those given back; ``rid`` keeps its
        copies until another replica owns them (a router that still remembers ``rid``
        sends the next turn there, and it simply runs warm)."""
        out = []
        for sid in sids:
            entry = self._entries.get(sid)
            if entry is not None and entry.owner == rid and entry.lease is None and entry.kv is not None and entry.kv[0] == entry.seq:
                self._set_owner(sid, entry, None)
                entry.handed = "rebalance"
                out.append(sid)
        self._transit.handed(rid, out)
        if out:
            self._reports.event("sessions_handed_back", replica=rid, sessions=len(out), reason="rebalance")
        return out

    def _expire_transit(self) -> None:
        """Sessions in transit past ``hold_s`` (no turn since): their KV leaves the
        object store and they go back to their old owner if it is still live (it keeps
        its copy); otherwise they stay owner-less and are rebuilt where placed."""
        live = self._reports.routable(self._lease_stale_s)
        for sid, src in self._transit.expired():
            entry = self._entries.get(sid)
            if entry is None or entry.owner is not None or entry.handed != "rebalance":
                continue
            entry.kv = None
            if src in live:  # back where it was: not a move, no event
                entry.handed = None
                self._owned.setdefault(src, set()).add(sid)
                entry.owner = src
