"""Session-affinity request router (Ray Serve custom request router API).

Every turn of a conversation goes to the replica holding its KV cache; a new
conversation goes to the replica with the most free KV capacity. The owner
comes from the session directory, not from router memory, so any router (the
HTTP proxy's, each ingress replica's, a driver's handle) decides the same way
and a restarted router loses nothing. Capacity (KV slots per replica) comes
from the replicas' ``record_routing_stats``.

Stickiness is the directory's: a session keeps its owner until the owner gives
it back (sessions/hand_backs.py: a drain; sessions without a KV slot; or, after a
scale-up, sessions above the owner's fair share, which leave their KV behind so
the next turn, placed by load, imports it exactly: sessions/rebalance.py).

A warm turn makes no remote call here: each router remembers the owners the
directory named (``owner_cache_s``) and sends the session's next turns straight
to that replica while it is alive, not draining, not holding more sessions
than KV slots (such a replica gives the sessions without a slot back to the
directory, local_sessions.py ``hand_back_slotless``, so they are placed by load)
and has handed no session over since (its routing stats' ``rebalanced`` count is
the one seen when the owner was named; a rebalance makes every router ask the
directory again once per session of that replica, so a moved one finds its new
place within a routing-stats period; a turn sent to the old owner meanwhile runs
warm there). On a miss (new session, owner gone or draining, memory expired) it
asks the directory, one call, ``place(session, candidates, departed)``:

- owner alive and known here      -> ``[[owner]]`` (strict stickiness: wait for it
  rather than rebuild elsewhere when it is merely busy);
- owner this router has never seen -> wait (``[]`` + backoff) up to ``owner_grace_s``:
  it is probably a replica still joining this router's view;
- owner gone (seen leave, died) or none (given back) -> the directory atomically
  picks the least-loaded candidate as new owner; that replica imports the KV the
  old owner left (a drain or a rebalance: ``migrated``) or rebuilds the cache from
  the session record on the turn (``rebuilt``, reported as ``recovered``).

Requests without a session id (``__call__``-style or health probes) go to the
emptiest replicas.

``choose_replicas`` never raises. Ray Serve runs it inside a routing task that
has already taken the request off its queue: an exception ends that task
("Unexpected error in _fulfill_pending_requests") and the request is never
assigned, so its caller waits until it gives up (issue 17: a 60 s hang when a
``place`` call met the directory restarting). A directory that is restarting,
dead or slower than ``place_timeout_s`` makes the request wait instead (no
candidates this round, Serve backs off and calls again); a directory dead for
good (killed, then created again by a redeploy) is looked up again by name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, List, Optional

import ray
from ray.exceptions import ActorDiedError, RayActorError
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from deployments.messages import RoutingStats
from deployments.sessions.directory import directory_handle

# Methods that create or advance a session: they may claim an owner.
TURN_METHODS = frozenset({"chat", "chat_events"})
DEPARTED_MEMORY = 4096  # replica ids remembered as gone (bounded)
OWNER_MEMORY = 1 << 16  # sessions whose owner a router remembers (bounded, oldest dropped first)
# A place() call that failed this way means "no directory right now": wait and ask again.
# RayActorError covers ActorUnavailableError (restarting) and ActorDiedError (gone);
# TimeoutError is our own bound on the call (asyncio.wait_for).
DIRECTORY_DOWN = (RayActorError, TimeoutError)
log = logging.getLogger("ray.serve")


def session_of(pending_request: PendingRequest) -> str:
    """The routing key: ``RequestMetadata.session_id`` (``handle.options(session_id=...)``
    or the HTTP ``x-session-id`` header), else the first positional argument of a
    session method (``handle.chat.remote(session_id, ...)``)."""
    meta = pending_request.metadata
    if meta.session_id:
        return meta.session_id
    if pending_request.args and isinstance(pending_request.args[0], str):
        return pending_request.args[0]
    sid = pending_request.kwargs.get("session_id")
    return sid if isinstance(sid, str) else ""


class SessionAffinityRouter(RequestRouter):
    def initialize_state(self, directory: dict | None = None, owner_grace_s: float = 3.0, owner_cache_s: float = 10.0,
                         place_timeout_s: float = 10.0, **_: object) -> None:
        if directory is None:
            raise ValueError("SessionAffinityRouter needs request_router_kwargs['directory'] (directory_spec)")
        self._directory_spec = directory
        self._owner_grace_s = float(owner_grace_s)
        self._place_timeout_s = float(place_timeout_s)  # one place() call; past it the request waits and asks again
        self._owners = OwnerMemory(float(owner_cache_s))
        self._directory: Optional[ray.actor.ActorHandle] = None
        self._departed: dict[str, float] = {}  # replica unique id -> when it left this router's view

    # ---- replica set changes ------------------------------------------------------
    def _mark_departed(self, unique_ids) -> None:
        now = time.time()
        for uid in unique_ids:
            self._departed[uid] = now
        while len(self._departed) > DEPARTED_MEMORY:
            self._departed.pop(next(iter(self._departed)))

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        old = {r.unique_id for r in self._replica_id_set}
        super().update_replicas(replicas)
        new = {r.unique_id for r in self._replica_id_set}
        gone = old - new
        self._mark_departed(gone)
        for uid in new:
            self._departed.pop(uid, None)
        if gone:
            self._tell_departed(sorted(gone))

    def _tell_departed(self, uids: list[str]) -> None:
        """Tell the directory at once (fire and forget): a scaled-down replica keeps reporting
        until Serve calls its ``__del__``, and would meanwhile count in rebalancing's fair
        shares. The next ``place`` carries the same list, so a call lost here costs little."""
        try:
            self._directory_actor().departed.remote(uids)
        except Exception as exc:  # directory down or not created yet: never fail Serve's update
            log.warning("could not tell the session directory that %s left (%s: %s)", uids, type(exc).__name__, str(exc)[:200])

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._mark_departed([replica_id.unique_id])

    # ---- routing ------------------------------------------------------------------
    def _directory_actor(self) -> ray.actor.ActorHandle:
        if self._directory is None:
            self._directory = directory_handle(self._directory_spec)
        return self._directory

    @staticmethod
    def _slots(replica: RunningReplica) -> int | None:
        """KV slots: static metadata from ``record_replica_metadata``, else the
        latest routing stats; None while neither has arrived."""
        cap = (replica.replica_metadata or {}).get("capacity") or RoutingStats.of(replica.routing_stats).capacity
        return int(cap) if cap else None

    def _emptiest(self, candidates: List[RunningReplica]) -> List[List[RunningReplica]]:
        def used(r: RunningReplica) -> float:
            s = RoutingStats.of(r.routing_stats)
            return s.sessions / (s.capacity or 1)

        ordered = sorted(candidates, key=used)
        return [ordered[: max(2, len(ordered) // 2)]]

    async def choose_replicas(
        self, candidate_replicas: List[RunningReplica], pending_request: Optional[PendingRequest] = None
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is None:
            return [candidate_replicas]
        # Always back off between rounds: an empty answer means "wait for the owner".
        pending_request.routing_context.should_backoff = True
        sid = session_of(pending_request)
        if not sid:
            return self._emptiest(candidate_replicas)

        by_uid = {r.replica_id.unique_id: r for r in candidate_replicas if not RoutingStats.of(r.routing_stats).draining}
        if not by_uid:
            return []
        claim = pending_request.metadata.call_method in TURN_METHODS
        known_owner = self._owners.get(sid, lambda uid: RoutingStats.of(by_uid[uid].routing_stats).rebalanced if uid in by_uid else None)
        # warm turn: no directory call, unless the owner holds more sessions than slots (it
        # gives those without one back to the directory, which then places them by load)
        if claim and known_owner in by_uid and not RoutingStats.of(by_uid[known_owner].routing_stats).oversubscribed:
            return [[by_uid[known_owner]]]
        force = time.time() - pending_request.created_at > self._owner_grace_s
        slots = {uid: self._slots(r) for uid, r in by_uid.items()}
        known = [c for c in slots.values() if c]
        fallback = max(known) if known else 1  # a replica not yet reporting: assume its peers' size
        try:
            owner = await asyncio.wait_for(
                self._directory_actor().place.remote(sid, {uid: c or fallback for uid, c in slots.items()}, list(self._departed), force, claim),
                self._place_timeout_s,
            )
        except DIRECTORY_DOWN as exc:  # raising here would strand the request (module docstring)
            if isinstance(exc, ActorDiedError):
                self._directory = None  # dead for good: the next call looks the name up again
            log.warning("session %s waits for the session directory (%s: %s)", sid, type(exc).__name__, str(exc)[:200])
            return []
        if owner is None:  # reads of an ownerless session: any replica answers from the record
            return [list(by_uid.values())]
        replica = by_uid.get(owner)
        if replica is None:  # owner unknown here yet (joining): wait, then force a rebuild
            return []
        if claim:
            self._owners.put(sid, owner, RoutingStats.of(replica.routing_stats).rebalanced)
        return [[replica]]


class OwnerMemory:
    """session -> the owner the directory last named to this router, for ``ttl_s``
    seconds (0: remember nothing), with the owner's ``rebalanced`` count at that
    time (an owner that has handed sessions over since may have handed this one).
    Bounded: the oldest entries go first."""

    def __init__(self, ttl_s: float, capacity: int = OWNER_MEMORY):
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._owners: dict[str, tuple[str, float, int]] = {}  # -> (owner, expiry, epoch); insertion order = age

    def get(self, sid: str, epoch_of: Callable[[str], int | None] | None = None) -> str | None:
        """The remembered owner; None when expired or, given ``epoch_of`` (owner ->
        its ``rebalanced`` count now, None: unknown), when that count has changed."""
        hit = self._owners.get(sid)
        if hit is None:
            return None
        if time.monotonic() >= hit[1] or (epoch_of is not None and epoch_of(hit[0]) not in (None, hit[2])):
            del self._owners[sid]
            return None
        return hit[0]

    def put(self, sid: str, owner: str, epoch: int = 0) -> None:
        if self._ttl_s <= 0:
            return
        self._owners.pop(sid, None)  # re-insert: newest last
        self._owners[sid] = (owner, time.monotonic() + self._ttl_s, epoch)
        while len(self._owners) > self._capacity:
            self._owners.pop(next(iter(self._owners)))
