"""The session directory: who owns each conversation, and the record to rebuild it.

One named, detached Ray actor per application, the single source of truth that
routers, replicas and ingresses share. It writes through the session log
(``session_log.py``) and, when it starts or restarts, reloads every session
from it, so a killed directory, controller or whole application loses no
committed turn.

Per session (``Entry``): the owner (replica holding the live cache), the record
and ``seq`` of the last committed turn, its reply (for idempotent retries), the
history digest (id-less clients), a lease (the replica running a turn now: a
second turn anywhere else is refused with 409) and, after a drain or a
rebalance, the KV snapshot the old owner left in the object store.

Ownership is sticky: a session stays with its owner while the owner lives,
except when the owner gives it back (hand_backs.py): drained on scale-down,
held without a KV slot, or above its fair share after a scale-up (rebalance.py:
each replica asks ``rebalance_pick`` every eviction period, leaves the picked
sessions' KV with ``hold_kv`` and gives them back with ``give_back``; their next
turns are placed by load and import the KV exactly).

An async actor with one event loop: every method runs without interruption
up to its first ``await``; only ``commit``, ``release``, ``delete`` and the log
reads await, and they re-check what they change after it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

import ray

from deployments.config import AppConfig, LogBackend, RebalanceConfig, SessionLogConfig
from deployments.messages import ChoiceReply, CommittedTurn, TurnGrant, TurnReplay
from deployments.sessions.directory_reads import DirectoryReads
from deployments.sessions.entry import Entry, turn_landed
from deployments.sessions.hand_backs import HandBacks
from deployments.sessions.log_writer import BatchWriter
from deployments.sessions.rebalance import Transit
from deployments.sessions.replica_reports import ReplicaReports
from deployments.sessions.session_log import CommitOp, DeleteOp, LastTurn, LogConflictError, LogOp, LogUnavailableError
from deployments.sessions.log_backends import open_log
from deployments.sessions.session_log import SessionState, TurnEntry
from swiftinfer_core.errors import SessionBusyError
from swiftinfer_core.protocol import SessionRecord, Usage

NAMESPACE = "swiftinfer"
# Where the directory may run: a SQLite log is a file on one machine, so the
# directory stays on the head node (a restart elsewhere would not find it).
PLACEMENT: dict[LogBackend, dict] = {
    LogBackend.SQLITE: {"resources": {"node:__internal_head__": 0.001}},
    LogBackend.REDIS: {},
}


def directory_spec(cfg: AppConfig) -> dict:
    """What every holder of a directory handle passes, so that whichever creates it
    creates it the same way (routers get it through their kwargs)."""
    return {
        "name": cfg.directory_name,
        "log": cfg.session_log.model_dump(mode="json"),
        # a lease outlives its holder's silence this long (it reports every period)
        "lease_stale_s": 3 * cfg.stats_report_period_s + 2.0,
        "lease_timeout_s": cfg.limits.request_timeout_s + 30.0,
        "rebalance": cfg.rebalance.model_dump(mode="json") | {"enabled": cfg.rebalance.enabled and cfg.kv_transfer_max_mb > 0},
    }


@ray.remote(num_cpus=0, max_restarts=-1)
class SessionDirectory(HandBacks, DirectoryReads):
    def __init__(self, spec: dict) -> None:
        log_cfg = SessionLogConfig.model_validate(spec["log"])
        self._log = open_log(log_cfg, spec["name"])
        self._writer = BatchWriter(self._log, log_cfg.max_batch)
        self._lease_stale_s = float(spec["lease_stale_s"])
        self._lease_timeout_s = float(spec["lease_timeout_s"])
        self._entries: dict[str, Entry] = {}
        self._by_digest: dict[str, str] = {}  # history digest -> session id
        self._owned: dict[str, set[str]] = {}  # replica id -> session ids it owns
        self._reports = ReplicaReports()  # replica stats and the cluster view's events
        self._rebalance = RebalanceConfig.model_validate(spec.get("rebalance", {}))
        self._transit = Transit(self._rebalance.hold_s)  # sessions a rebalance handed back, not yet placed
        self._placements = 0  # place() calls: a warm turn makes none (routers remember owners)
        for st in self._log.load_all():
            entry = self._entries[st.session_id] = Entry(
                owner=None, record=SessionRecord.from_dict(st.record), digest=st.digest, seq=st.seq, last_turn=st.last_turn,
                created=st.created, updated=st.updated,
            )
            self._set_owner(st.session_id, entry, st.owner)
            if st.digest is not None:
                self._by_digest[st.digest] = st.session_id
        self.loaded = len(self._entries)

    # ---- ownership -------------------------------------------------------------
    def _set_owner(self, sid: str, entry: Entry, owner: str | None) -> None:
        if entry.owner is not None:
            self._owned.get(entry.owner, set()).discard(sid)
        if owner is not None:
            self._owned.setdefault(owner, set()).add(sid)
            if entry.owner is not None and entry.owner != owner:
                entry.moves += 1
                self._reports.event("moved", session=sid, src=entry.owner, dst=owner)
            elif entry.owner is None:
                self._landed(sid, entry, owner)
        entry.owner = owner

    def _landed(self, sid: str, entry: Entry, dst: str) -> None:
        """An owner-less session gets ``dst`` as owner: report the move its hand-back began."""
        src, reason, entry.handed = self._transit.landed(sid), entry.handed, None
        if reason == "rebalance":  # moves counted here: back at its old owner (a router remembering it) is no move
            if src != dst:
                entry.moves += 1
                self._reports.event("moved", session=sid, src=src, dst=dst, reason=reason)
        elif entry.moves > 0 and entry.seq > 0:  # handed back by a drain or without a slot (reason unknown after a restart)
            self._reports.event("moved", session=sid, src=None, dst=dst, **({"reason": reason} if reason else {}))

    def place(self, sid: str, capacity: dict[str, int], departed: list[str], force: bool, claim: bool) -> str | None:
        """Pick the replica for a request of ``sid`` among ``capacity``'s keys
        (candidates -> KV slots). The live owner wins. An owner the caller has
        never seen is returned as is (it may be joining) unless ``force``. Else,
        when ``claim``, the candidate with the lowest owned/slots share becomes
        the owner; without ``claim`` (reads, deletes) nothing changes and None
        means "any replica"."""
        self._placements += 1
        if departed:
            self._reports.departing(departed)
        entry = self._entries.get(sid)
        if entry is not None and entry.owner is not None:
            if entry.owner in capacity or (entry.owner not in departed and not force):
                return entry.owner
            if entry.lease == entry.owner and entry.owner in departed:
                entry.lease = None  # its turn died with it
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

    def _lease_alive(self, entry: Entry, now: float) -> bool:
        reported = self._reports.reported_at(entry.lease)
        return now - entry.lease_at < self._lease_timeout_s and now - max(reported, entry.lease_at) < self._lease_stale_s

    def begin_turn(self, sid: str, rid: str, turn_key: str | None = None) -> TurnGrant | TurnReplay:
        """``rid`` is about to run a turn of ``sid``. A ``TurnReplay`` when
        ``turn_key`` is the session's last committed turn (answer it again, run
        nothing), else takes the lease, makes ``rid`` the owner and returns a
        ``TurnGrant``: the last committed state (record None for a session never
        committed) and, once, a KV snapshot ref left by a drain."""
        now = time.time()
        entry = self._entries.get(sid)
        if entry is None:
            entry = self._entries[sid] = Entry(owner=None)
        if turn_key is not None and entry.last_turn is not None and entry.last_turn.entry.turn_key == turn_key:
            last = entry.last_turn
            return TurnReplay(entry.seq, last.text, last.entry.finish_reason, Usage(**last.usage), tuple(ChoiceReply(**o) for o in last.others))
        if entry.lease not in (None, rid) and self._lease_alive(entry, now):
            raise SessionBusyError(f"session {sid!r} has a turn in flight on another replica")
        entry.lease, entry.lease_at = rid, now
        self._set_owner(sid, entry, rid)
        kv, entry.kv = entry.kv, None
        return TurnGrant(entry.seq, entry.record, kv[1] if kv and kv[0] == entry.seq else None)

    async def commit(self, sid: str, rid: str, seq: int, record: SessionRecord, digest: str | None, turn: CommittedTurn) -> bool:
        """Durably append turn ``seq + 1`` with ``record`` as the session's new
        state. False when ``rid`` no longer holds the session at ``seq`` (deleted,
        taken over, or the log refused it): its copy is stale.

        No lease at all is accepted at the same ``seq``, and ``rid`` becomes the
        owner: a directory restarted while the turn ran reloads the owners of the
        last commits and no leases, so the turn's replica may not be the owner on
        record (the session's first turn after a move). ``seq`` alone keeps one
        turn per number: any other replica's turn at this ``seq`` would hold the
        lease, and one that committed has moved ``seq`` on. The same commit sent
        again (send_commit retries when a directory restart lost the reply to a
        commit that had reached the log) is acknowledged, not logged twice: the
        turn at ``seq + 1`` is ``rid``'s with this turn key, and ``rid`` runs one
        turn of a session at a time."""
        entry = self._entries.get(sid)
        if entry is not None and turn_landed(entry, rid, seq, turn.turn_key):
            return True  # this very commit reached the log before a restart lost its reply: sent again, it is done
        if entry is None or entry.lease not in (rid, None) or entry.seq != seq:
            return False
        if entry.owner != rid:
            self._set_owner(sid, entry, rid)
        now = time.time()
        u = turn.usage
        t = TurnEntry(sid, seq + 1, turn.turn_key, rid, turn.finish_reason, u.prompt_tokens, u.completion_tokens, now)
        last = LastTurn(t, turn.text, u.to_dict(), [asdict(o) for o in turn.others])
        try:  # the log stores the record's dict form
            await self._write(CommitOp(SessionState(sid, seq + 1, record.to_dict(), rid, digest, last, entry.created, now), t))
        except LogConflictError:
            return False
        finally:
            if entry.lease == rid:
                entry.lease = None
        if self._entries.get(sid) is entry and entry.seq == seq:
            entry.seq, entry.record, entry.last_turn, entry.updated = seq + 1, record, last, now
            if entry.digest is not None:
                self._by_digest.pop(entry.digest, None)
            entry.digest = digest
            if digest is not None:
                self._by_digest[digest] = sid
        return True

    async def commit_many(self, rid: str, commits: list) -> list:
        """``commit`` for each of ``rid``'s commits (replica/commit.Commit), answered one by
        one: True, False, or the exception that one's logging raised. One call for a
        replica's batch; the log's own batching (log_writer.py) groups their writes."""
        return list(await asyncio.gather(*(self.commit(c.sid, rid, c.seq, c.record, c.digest, c.turn) for c in commits),
                                         return_exceptions=True))

    def end_turn(self, sid: str, rid: str) -> None:
        """A turn of ``rid`` ended without a commit: free the lease, and forget a
        session that never committed anything."""
        entry = self._entries.get(sid)
        if entry is None:
            return
        if entry.lease == rid:
            entry.lease = None
        if entry.seq == 0 and entry.owner == rid and entry.lease is None:
            self._drop(sid, entry)

    async def delete(self, sid: str) -> bool:
        entry = self._entries.get(sid)
        if entry is None:
            return False
        self._drop(sid, entry)
        await self._write(DeleteOp(sid))
        return True

    async def _write(self, op: LogOp) -> None:
        try:
            await self._writer.submit(op)
        except LogConflictError:
            raise
        except Exception as exc:
            raise LogUnavailableError(f"the session log could not be written: {type(exc).__name__}: {exc}") from None

    def _drop(self, sid: str, entry: Entry) -> None:
        self._set_owner(sid, entry, None)
        self._transit.landed(sid)
        if entry.digest is not None:
            self._by_digest.pop(entry.digest, None)
        del self._entries[sid]

    # ---- id-less conversations -------------------------------------------------
    def resolve_history(self, opening: str, prefix_digest: str | None, scope: str = "") -> tuple[str, bool]:
        """``(session id, continues)``. Continues when ``prefix_digest`` is exactly
        what a session has seen (digests are tenant-seeded: tenants.history_seed);
        otherwise reserves a fresh id derived from the opening messages
        (``<scope>conv-<opening>``, then ``-2``, ``-3``... on clashes; ``scope``
        is the tenant's id prefix, tenants.scoped(tenant, ""))."""
        if prefix_digest is not None:
            sid = self._by_digest.get(prefix_digest)
            if sid is not None and sid in self._entries and sid.startswith(scope):
                return sid, True
        sid, n = f"{scope}conv-{opening}", 1
        while sid in self._entries:
            n += 1
            sid = f"{scope}conv-{opening}-{n}"
        self._entries[sid] = Entry(owner=None)
        return sid, False


def directory_handle(spec: dict) -> "ray.actor.ActorHandle":
    """Get or create the application's directory (``spec`` from ``directory_spec``).
    Detached, so it outlives any replica (a killed owner must not take the
    records with it); restarted by Ray if it dies, reloading from the log."""
    placement = PLACEMENT[SessionLogConfig.model_validate(spec["log"]).backend]
    return SessionDirectory.options(
        name=spec["name"], namespace=NAMESPACE, get_if_exists=True, lifetime="detached", **placement
    ).remote(spec)
