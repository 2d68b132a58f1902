"""Typed messages (deployments/messages.py) for tests that talk to a directory
or render stats without a replica."""

from __future__ import annotations

from deployments.messages import CacheState, CommittedTurn, ReplicaStats
from swiftinfer_core.protocol import SessionRecord, Usage


def committed_turn(key: str | None = None, text: str = "reply") -> CommittedTurn:
    return CommittedTurn(key, "stop", text, Usage(prompt_tokens=7, completion_tokens=3, prefilled_tokens=7, cached_tokens=0))


def session_record(sid: str, rounds: int, window_ids: tuple[int, ...] = ()) -> SessionRecord:
    return SessionRecord(sid, sink_ids=[], window_ids=list(window_ids), pending_ids=[], tokens_seen=len(window_ids), rounds=rounds)


def replica_stats(rid: str = "r", **fields) -> ReplicaStats:
    """An idle replica's report, with ``fields`` replaced."""
    base = dict(replica_id=rid, capacity=8, free_slots=8, sessions=0, resident=0, active_sessions=0, running=0, waiting=0,
                evictions=0, tokens_generated=0, tokens_prefilled=0, kv_use=0.0, draining=False, pid=0, idle_evicted=0,
                rolled_back=0, rebalanced=0, turns=dict.fromkeys(CacheState, 0), turns_not_committed=0, direct_starts=0)
    return ReplicaStats(**{**base, **fields})
