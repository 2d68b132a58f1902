"""The session directory: who owns each conversation, and the record to rebuild it.

One named, detached Ray actor per application. It is the single source of truth
that routers, replicas and ingresses share, so no router keeps state another
could not rebuild:

- ``owner``: replica id (Serve ``ReplicaID.unique_id``) holding the live cache;
  ``None`` after the owner drained.
- ``record``: ``SessionRecord.to_dict()`` of the last committed turn (sink ids,
  window tail, pending ids, counters). Enough to rebuild the cache on any replica.
- ``digest``: history digest after the last turn, for id-less clients.

The actor is synchronous (one call at a time), so every method is atomic.
In memory for now; the reliability issue makes it durable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray

NAMESPACE = "swiftinfer"


@dataclass
class Entry:
    owner: str | None
    record: dict | None = None
    digest: str | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    moves: int = 0  # owner changes after the first placement (rebuilds elsewhere)


@ray.remote(num_cpus=0, max_restarts=-1)
class SessionDirectory:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._by_digest: dict[str, str] = {}  # history digest -> session id
        self._owned: dict[str, set[str]] = {}  # replica id -> session ids it owns
        self._stats: dict[str, tuple[float, dict]] = {}  # replica id -> (time, stats)

    # ---- ownership -------------------------------------------------------------
    def _set_owner(self, sid: str, entry: Entry, owner: str | None) -> None:
        if entry.owner is not None:
            self._owned.get(entry.owner, set()).discard(sid)
        if owner is not None:
            self._owned.setdefault(owner, set()).add(sid)
            if entry.owner is not None and entry.owner != owner:
                entry.moves += 1
        entry.owner = owner

    def place(self, sid: str, capacity: dict[str, int], departed: list[str], force: bool, claim: bool) -> str | None:
        """Pick the replica for a request of ``sid`` among ``capacity``'s keys
        (candidates -> KV slots). The live owner wins. An owner the caller has
        never seen is returned as is (it may be joining) unless ``force``. Else,
        when ``claim``, the candidate with the lowest owned/slots share becomes
        the owner; without ``claim`` (reads, deletes) nothing changes and None
        means "any replica"."""
        entry = self._entries.get(sid)
        if entry is not None and entry.owner is not None:
            if entry.owner in capacity or (entry.owner not in departed and not force):
                return entry.owner
        if not claim or not capacity:
            return None

        def load(rid: str) -> tuple[float, int, str]:
            owned = len(self._owned.get(rid, ()))
            return (owned / max(1, capacity[rid]), owned, rid)

        best = min(capacity, key=load)
        if entry is None:
            entry = self._entries[sid] = Entry(owner=None)
        self._set_owner(sid, entry, best)
        return best

    def begin_turn(self, sid: str, rid: str) -> dict | None:
        """``rid`` is about to run a turn of ``sid``: it becomes the owner. Returns
        the last committed record (None for a session never committed)."""
        entry = self._entries.get(sid)
        if entry is None:
            entry = self._entries[sid] = Entry(owner=None)
        self._set_owner(sid, entry, rid)
        return entry.record

    def commit(self, sid: str, rid: str, record: dict, digest: str | None) -> bool:
        """Store the record after a turn. Refused (False) when ``rid`` lost the
        session meanwhile (deleted, or taken over): its copy is then stale."""
        entry = self._entries.get(sid)
        if entry is None or entry.owner != rid:
            return False
        entry.record = record
        entry.updated = time.time()
        if entry.digest is not None:
            self._by_digest.pop(entry.digest, None)
        entry.digest = digest
        if digest is not None:
            self._by_digest[digest] = sid
        return True

    def abandon(self, sid: str, rid: str) -> None:
        """A first turn failed before anything was committed: forget the session."""
        entry = self._entries.get(sid)
        if entry is not None and entry.record is None and entry.owner == rid:
            self._drop(sid, entry)

    def release(self, rid: str, records: dict[str, dict]) -> int:
        """A draining replica hands its sessions back: store their final records
        and clear the owner, so the next turn rebuilds on the best other replica."""
        released = 0
        for sid, record in records.items():
            entry = self._entries.get(sid)
            if entry is not None and entry.owner == rid:
                entry.record = record
                self._set_owner(sid, entry, None)
                released += 1
        self._owned.pop(rid, None)
        self._stats.pop(rid, None)
        return released

    def delete(self, sid: str) -> bool:
        entry = self._entries.get(sid)
        if entry is None:
            return False
        self._drop(sid, entry)
        return True

    def _drop(self, sid: str, entry: Entry) -> None:
        self._set_owner(sid, entry, None)
        if entry.digest is not None:
            self._by_digest.pop(entry.digest, None)
        del self._entries[sid]

    # ---- reads -----------------------------------------------------------------
    def describe(self, sid: str) -> dict | None:
        entry = self._entries.get(sid)
        if entry is None:
            return None
        return {"owner": entry.owner, "record": entry.record, "moves": entry.moves, "created": entry.created, "updated": entry.updated}

    def owners(self) -> dict[str, int]:
        """Replica id -> sessions it owns (balance metrics)."""
        return {rid: len(s) for rid, s in self._owned.items() if s}

    def num_sessions(self) -> int:
        return len(self._entries)

    # ---- id-less conversations -------------------------------------------------
    def resolve_history(self, opening: str, prefix_digest: str | None) -> tuple[str, bool]:
        """``(session id, continues)``. Continues when ``prefix_digest`` is exactly
        what a session has seen; otherwise reserves a fresh id derived from the
        opening messages (``conv-<opening>``, then ``-2``, ``-3``... on clashes)."""
        if prefix_digest is not None:
            sid = self._by_digest.get(prefix_digest)
            if sid is not None and sid in self._entries:
                return sid, True
        sid, n = f"conv-{opening}", 1
        while sid in self._entries:
            n += 1
            sid = f"conv-{opening}-{n}"
        self._entries[sid] = Entry(owner=None)
        return sid, False

    # ---- replica stats (metrics and readiness) ---------------------------------
    def report(self, rid: str, stats: dict) -> None:
        self._stats[rid] = (time.time(), stats)

    def replica_stats(self, max_age_s: float) -> dict[str, dict]:
        now = time.time()
        return {rid: s for rid, (t, s) in self._stats.items() if now - t <= max_age_s}


def directory_handle(name: str) -> "ray.actor.ActorHandle":
    """Get or create the application's directory. Detached, so it outlives any
    replica (a killed owner must not take the records with it)."""
    return SessionDirectory.options(name=name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached").remote()
