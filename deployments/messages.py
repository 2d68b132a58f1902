"""What crosses a Ray boundary between the serving roles, typed once.

Both sides import these (Ray pickles them as they are): the replica and the
session directory (turn grants, commits, session descriptions, stats), the
replica and the ingress (``TurnStart``), the replica and the routers (routing
stats). Dict forms exist only where a dict is the contract: the session log's
stored rows (sessions/session_log.py), Ray Serve's routing and autoscaling
stats (``ReplicaStats.to_dict``, ``autoscaling_metrics``) and HTTP bodies.

The life of a turn in messages::

    replica --begin_turn--> directory : TurnGrant | TurnReplay
    replica --TurnStart, StreamChunk...--> ingress
    replica --commit_many([Commit(SessionRecord, CommittedTurn), ...])--> directory : one answer each
    replica --report(ReplicaStats)--> directory --replica_stats--> ingress (/metrics, readiness)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import ray

from swiftinfer_core.engine.handoff import Handoff  # the ``leg`` label of swiftinfer_handoff_seconds
from swiftinfer_core.protocol import SessionRecord, SessionStats, StreamChunk, Usage


class CacheState(str, Enum):
    """How a turn found its conversation's cache (its value is the API's ``cache`` field)."""

    WARM = "warm"  # this replica's cache continued the conversation
    MIGRATED = "migrated"  # the KV arrived from a draining or rebalancing replica through the object store
    REBUILT = "rebuilt"  # rebuilt here from the committed record
    NEW = "new"  # first turn of the conversation
    REPLAYED = "replayed"  # a retry of the last committed turn, answered from the log


class TurnPhase(str, Enum):
    """The steps of a turn on its replica, timed by deployments/turn_timing.py (the value
    is the ``phase`` label of /metrics)."""

    ADMIT = "admit"  # KV capacity check against the engine
    LEASE = "lease"  # the directory's begin_turn
    SYNC = "sync"  # local copy made equal to the committed record
    FIRST_TOKEN = "first_token"  # engine queue, prefill, first decode
    COMMIT = "commit"  # the session log write


class IngressPhase(str, Enum):
    """A streamed turn's way to its first token as its ingress sees it (``phase`` label of
    ``swiftinfer_ingress_phase_seconds``). ROUTE and RETURN compare two hosts' clocks; their
    sum is exact."""

    PREPARE = "prepare"  # request read, parsed and planned, up to the call to the LLM deployment
    ROUTE = "route"  # the handle's routing and the call reaching the replica
    REPLICA = "replica"  # on the replica until its TurnStart leaves (lease, sync, first token)
    RETURN = "return"  # the TurnStart's way back to the ingress


# ---- replica <-> directory: one turn ---------------------------------------------------
@dataclass(frozen=True)
class ChoiceReply:
    """A choice other than 0 of a turn with several (``n``): not the session's,
    kept only so that a retry of the turn gets every choice again."""

    index: int
    text: str
    finish_reason: str


@dataclass(frozen=True)
class TurnGrant:
    """``begin_turn``'s answer when the turn may run: the lease is the caller's.
    ``record`` is the last committed state (None: never committed); ``kv``, once,
    the object ref of the ``KVSnapshot`` (wire form, replica/kv_wire.py) a draining or
    rebalancing owner left at this ``seq``."""

    seq: int  # committed turns
    record: SessionRecord | None
    kv: ray.ObjectRef | None = None
    leased: bool = True  # False: the replica's own last commit (LocalSessions.warm_grant), no directory call, no lease


@dataclass(frozen=True)
class TurnReplay:
    """``begin_turn``'s answer when the Idempotency-Key is the session's last
    committed turn: send its reply again, run nothing."""

    seq: int
    text: str
    finish_reason: str
    usage: Usage
    others: tuple[ChoiceReply, ...] = ()  # choices 1..n-1 of a turn with several


@dataclass(frozen=True)
class CommittedTurn:
    """The turn a replica commits with the session's new record."""

    turn_key: str | None  # the client's Idempotency-Key
    finish_reason: str  # choice 0's
    text: str  # the whole reply, choice 0's (answered again on a retry)
    usage: Usage  # every choice's
    others: tuple[ChoiceReply, ...] = ()  # choices 1..n-1 of a turn with several (answered again too)


@dataclass(frozen=True)
class Commit:
    """One finished turn a replica sends the directory: session ``sid`` at ``seq`` becomes
    ``record`` (directory.commit_many; replica/commit.py batches them)."""

    sid: str
    seq: int
    record: SessionRecord
    digest: str | None
    turn: CommittedTurn


@dataclass(frozen=True)
class SessionDescription:
    """What the directory knows of a session (``describe``)."""

    owner: str | None  # replica holding the live cache; None after a drain
    record: SessionRecord | None  # None: never committed
    seq: int
    moves: int  # owner changes after the first placement
    created: float
    updated: float

    def stats_without_cache(self, session_id: str, capacity: int) -> SessionStats:
        """The session as its record describes it, when no replica holds its cache
        (drained owner): nothing resident, every token seen counted as evicted."""
        rec = self.record
        seen = rec.tokens_seen if rec else 0
        return SessionStats(
            session_id, tokens_seen=seen, cache_fill=0, capacity=capacity, evictions=seen,
            rounds=rec.rounds if rec else 0, prefilled_tokens=rec.prefilled_tokens if rec else 0,
            generated_tokens=rec.generated_tokens if rec else 0, recovered=self.moves > 0, resident=False,
        )


# ---- replica -> ingress ----------------------------------------------------------------
@dataclass(frozen=True)
class TurnStart:
    """First item of ``LLMReplica.chat_events``, sent once the engine produced its
    first chunk (errors before that surface as exceptions, so the ingress can still
    answer with a status code). That chunk rides in it (``first``) unless it is the
    turn's final one, which must wait for the commit: every streamed item costs the
    replica Ray's per-item work and the ingress a hop's wait."""

    session_id: str
    replica_id: str
    cache: CacheState
    # wall clock (time.time()) of the replica taking the call and of this item leaving it: the
    # ingress splits its wait for the first token into routing, replica and return (IngressPhase)
    received_at: float = 0.0
    sent_at: float = 0.0
    first: StreamChunk | None = None  # the turn's first chunk when it is not final; the stream goes on after it
    turn: int = 0  # this turn's number in its session (1: its first; a replay: the replayed turn's); 0: not told
    # the turn's input tokens (Usage.prompt_tokens), known from the engine's first chunk (StreamChunk.prompt_tokens)
    # before the final one: a stream's running usage (stream_options.continuous_usage_stats); None: not told
    prompt_tokens: int | None = None


# ---- replica -> directory, routers, autoscaler, /metrics --------------------------------
@dataclass(frozen=True)
class ReplicaStats:
    """One replica's report (every ``stats_report_period_s`` to the directory, and as
    Ray Serve's routing stats)."""

    replica_id: str
    capacity: int  # KV slots
    free_slots: int
    sessions: int  # sessions the engine holds
    resident: int  # sessions holding a slot
    active_sessions: int  # with a turn inside the scaling window, or running
    running: int
    waiting: int
    evictions: int  # tokens evicted from rolling windows
    tokens_generated: int
    tokens_prefilled: int
    kv_use: float  # resident / capacity
    draining: bool
    pid: int
    idle_evicted: int
    rolled_back: int
    rebalanced: int  # sessions handed to the directory, with their KV, to move to replicas below their fair share
    turns: dict[CacheState, int]  # turns by how they found their cache
    turns_not_committed: int
    direct_starts: int  # turns that started without reading the engine first (warm, or new here)
    forwarded_turns: int = 0  # http_front: direct: HTTP turns this replica sent on to another replica through the router
    unleased_starts: int = 0  # warm turns started from this replica's own last commit, without the directory
    prefix_hits: int = 0  # turns whose empty cache started from a shared prompt prefix (engine/prefix_cache.py)
    prefix_tokens: int = 0  # input tokens copied that way instead of computed
    phases: dict[TurnPhase, tuple[float, float]] = field(default_factory=dict)  # -> (p50, p99) seconds, phases with samples
    handoff: dict[Handoff, tuple[float, float]] = field(default_factory=dict)  # leg -> (p50, p99) seconds, legs with samples

    def to_dict(self) -> dict:
        """The flat form Ray Serve carries as routing stats (and the one /v1/cluster
        and older tools read): ``turns_<cache>``, ``phase_<name>_p50``/``_p99``."""
        out = {
            "replica_id": self.replica_id, "capacity": self.capacity, "free_slots": self.free_slots,
            "sessions": self.sessions, "resident": self.resident, "active_sessions": self.active_sessions,
            "running": self.running, "waiting": self.waiting, "evictions": self.evictions,
            "tokens_generated": self.tokens_generated, "tokens_prefilled": self.tokens_prefilled,
            "kv_use": self.kv_use, "draining": self.draining, "pid": self.pid,
            "idle_evicted": self.idle_evicted, "rolled_back": self.rolled_back, "rebalanced": self.rebalanced,
        }
        out.update({f"turns_{c.value}": n for c, n in self.turns.items()})
        out["turns_not_committed"] = self.turns_not_committed
        out["direct_starts"] = self.direct_starts
        out["forwarded_turns"] = self.forwarded_turns
        out["unleased_starts"] = self.unleased_starts
        out["prefix_hits"], out["prefix_tokens"] = self.prefix_hits, self.prefix_tokens
        for phase, (p50, p99) in self.phases.items():
            out[f"phase_{phase.value}_p50"], out[f"phase_{phase.value}_p99"] = p50, p99
        for leg, (p50, p99) in self.handoff.items():
            out[f"handoff_{leg.value}_p50"], out[f"handoff_{leg.value}_p99"] = p50, p99
        return out

    def autoscaling_metrics(self) -> dict[str, float]:
        """What ``record_autoscaling_stats`` gives Serve's autoscaler (app/autoscaling.py)."""
        return {"active_sessions": float(self.active_sessions), "kv_use": float(self.kv_use), "sessions": float(self.sessions)}


@dataclass(frozen=True)
class RoutingStats:
    """What the session-affinity router reads of a replica's routing stats (the
    dict Serve passes on; empty until the first poll)."""

    capacity: int | None
    sessions: int
    draining: bool
    resident: int | None = None
    rebalanced: int = 0  # grows when the replica hands sessions over: owners remembered before are stale

    @property
    def oversubscribed(self) -> bool:
        """More conversations than KV slots: some are rebuilt on their next turn anyway."""
        return self.resident is not None and self.sessions > self.resident

    @classmethod
    def of(cls, routing_stats: dict | None) -> "RoutingStats":
        s = routing_stats or {}
        return cls(s.get("capacity"), s.get("sessions", 0), bool(s.get("draining")), s.get("resident"), s.get("rebalanced", 0))
