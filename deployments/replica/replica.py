"""The LLM replica: one engine, its sessions, and their hand-off to the directory.

A turn on this replica (turns.py): the directory's lease, the sync of the
engine's copy with the committed record, the paced stream, then the commit
through the directory to the session log, or a roll-back to the committed record.

On scale-down Serve waits for running turns, then calls ``__del__``: the replica
stops taking turns, leaves the KV of its idle resident sessions in the object
store (through the directory) and hands them back; the next turn of each goes
to the best remaining replica, which imports that KV when its engine matches
and rebuilds from the record otherwise.

After a scale-up, a replica owning more than its fair share of the sessions hands
some over the same way, a few per eviction period, while it keeps serving
(rebalance.py): their KV left with the directory, their next turns placed by load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from ray import serve

from deployments.config import AppConfig
from deployments.sessions.directory import directory_handle, directory_spec
from deployments.replica.activity import active_count
from deployments.replica.commit import CommitBatcher
from deployments.replica.drain import drain
from deployments.replica.engine_factory import make_engine
from deployments.messages import CacheState, ReplicaStats
from deployments.replica.local_sessions import LocalSessions
from deployments.replica.pacing import ChunkBudget
from deployments.replica.rebalance import rebalance_step
from deployments.replica.turns import ReplicaTurns
from deployments.turn_timing import TurnTimer
from swiftinfer_core.engine import faults
from swiftinfer_core.engine.handoff import Handoff
from swiftinfer_core.errors import EngineClosedError, SessionBusyError, SessionNotFoundError
from swiftinfer_core.recent_times import RecentTimes

log = logging.getLogger("ray.serve")


class LLMReplica(ReplicaTurns):
    async def __init__(self, config: dict):
        self._cfg = AppConfig.model_validate(config)
        sys.setswitchinterval(self._cfg.gil_switch_interval_ms / 1000)  # this process is the replica's own
        self._id = serve.get_replica_context().replica_id.unique_id
        self._engine = make_engine(self._cfg.backend, self._cfg.replica_engine, self._cfg.cpu_threads, self._cfg.engine_process)
        await asyncio.to_thread(self._engine.warm_up)  # ProcessEngine warms its child before it is ready
        self._local = LocalSessions(self._engine, self._cfg.limits)
        self._direct_capable = self._engine.checks_expect()
        self._slots = self._engine.stats().total_slots
        self._directory = directory_handle(directory_spec(self._cfg))
        self._commits = CommitBatcher(self._directory, self._id)
        self._busy: set[str] = set()  # sessions with a turn running here
        self._last_turn: dict[str, float] = {}  # session -> time of its last turn (autoscaling, eviction)
        self._turns = dict.fromkeys(CacheState, 0)  # turns by how they found their cache
        self._not_committed = 0
        self._direct_starts = 0  # turns that started without reading the engine first (warm, or new here)
        self._rebalanced = 0  # sessions handed over to replicas below their fair share
        self._forwarded = 0  # HTTP turns sent on to another replica (http_front: direct, app/direct.py)
        self._unleased = 0  # turns started from this replica's own last commit, no directory call
        self._timer = TurnTimer()
        self._lag = RecentTimes(Handoff)  # LAG only; the engine times the other legs
        self._pace = ChunkBudget(self._cfg.stream_interval_ms / 1000, self._cfg.stream_max_chunks_per_s)
        self._draining = False
        await self._report()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(t) for t in (self._report_loop(), self._evict_loop(), self._lag_loop())]

    # ---- session management ----------------------------------------------------------
    def _local_stats(self, session_id: str):
        return self._engine.session_stats(session_id) if self._engine.has_session(session_id) else None

    async def session_info(self, session_id: str) -> dict:
        await self._local.wait(session_id)  # a turn being rolled back: answer with the rolled-back copy
        entry = await self._directory.describe.remote(session_id)
        if entry is None or (entry.record is None and entry.owner is None):
            raise SessionNotFoundError(f"no session {session_id!r}")
        local = await asyncio.to_thread(self._local_stats, session_id) if entry.owner == self._id else None
        if local is None:  # no live cache anywhere (drained owner): describe the record
            local = entry.stats_without_cache(session_id, self._cfg.engine.sink_tokens + (self._cfg.engine.window or 0))
        # the HTTP body of GET /v1/sessions/{id} (the ingress renames session_id)
        return {**local.to_dict(), "replica": entry.owner, "moves": entry.moves, "seq": entry.seq}

    async def close_session(self, session_id: str) -> bool:
        if session_id in self._busy:
            raise SessionBusyError(f"session {session_id!r} has a turn in flight")
        local = await self._local.close(session_id)
        self._last_turn.pop(session_id, None)
        return await self._directory.delete.remote(session_id) or local

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose engine hit a device fault
        is replaced instead of failing every turn routed to it."""
        self._engine.check_health()

    def inject_device_fault(self, only: str | None = None, sticky: bool = False) -> str:
        """Test-only: the engine's next step faults on the device (engine/faults.py).
        Refused unless this process runs with SWIFTINFER_FAULT_INJECTION=1. With
        ``only``, a replica of another id arms nothing (a caller aiming at one
        replica through a handle that picks any). ``sticky``: a CPU engine stops as
        a GPU one does after a real fault. Returns this replica's id."""
        if not faults.enabled():
            raise PermissionError(f"fault injection is off (set {faults.ENV}=1 in the replica's environment)")
        if only is None or only == self._id:
            self._engine.inject_device_fault(sticky)
        return self._id

    # ---- stats for routers, the autoscaler, and /metrics -------------------------------
    def _engine_stopped(self) -> bool:
        try:
            self._engine.check_health()
        except EngineClosedError:
            return True
        return False

    async def _stats(self) -> ReplicaStats:
        st = await asyncio.to_thread(self._engine.stats)
        # An engine stopped by a device fault reports as draining: routers send its
        # sessions elsewhere within one routing-stats period (they are rebuilt from the
        # log) instead of retrying here until Serve's health checks replace it.
        stopped = await asyncio.to_thread(self._engine_stopped)
        engine_legs = await asyncio.to_thread(self._engine.handoff_times)
        active = active_count(self._last_turn, self._busy, time.time(), self._cfg.scaling.active_window_s)
        return ReplicaStats(
            replica_id=self._id, capacity=st.total_slots, free_slots=st.free_slots,
            sessions=st.active_sessions, resident=st.resident_sessions, active_sessions=active,
            running=st.running_requests, waiting=st.waiting_requests, evictions=st.evictions,
            tokens_generated=st.tokens_generated, tokens_prefilled=st.tokens_prefilled,
            kv_use=st.resident_sessions / max(1, st.total_slots), draining=self._draining or stopped,
            pid=os.getpid(), idle_evicted=self._local.idle_evicted, rolled_back=self._local.rolled_back, rebalanced=self._rebalanced,
            turns=dict(self._turns), turns_not_committed=self._not_committed, direct_starts=self._direct_starts,
            forwarded_turns=self._forwarded, unleased_starts=self._unleased,
            prefix_hits=st.prefix_hits, prefix_tokens=st.prefix_tokens,
            phases=self._timer.summary(), handoff={**engine_legs, **self._lag.summary()},
        )

    def record_replica_metadata(self) -> dict:
        """Static facts routers read as ``replica.replica_metadata`` from the moment
        the replica is ready (routing stats arrive only after the first poll)."""
        return {"capacity": self._slots}

    async def record_routing_stats(self) -> dict:
        return (await self._stats()).to_dict()  # Serve's contract: a dict (messages.RoutingStats reads it)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        return (await self._stats()).autoscaling_metrics()

    async def _report(self) -> None:
        await self._directory.report.remote(self._id, await self._stats())

    async def _report_loop(self) -> None:
        while not self._draining:
            await asyncio.sleep(self._cfg.stats_report_period_s)
            try:
                await self._report()
            except Exception:  # the directory restarting must not kill the replica
                log.exception("stats report failed")

    async def _lag_loop(self, period_s: float = 0.01) -> None:
        """How late this loop wakes on a short timer: every stream, call and engine
        hand-over of the replica waits behind the same loop."""
        while not self._draining:
            t = time.monotonic()
            await asyncio.sleep(period_s)
            self._lag.record(Handoff.LAG, max(0.0, time.monotonic() - t - period_s))

    async def _evict_loop(self) -> None:
        ttl = self._cfg.limits.idle_ttl_s
        period = min(5.0, ttl / 4) if ttl is not None else 5.0
        while not self._draining:
            await asyncio.sleep(period)
            try:
                for sid in await self._local.evict_idle(self._last_turn, self._busy):
                    self._last_turn.pop(sid, None)
                for sid in await self._local.drop_unowned(self._directory, self._id, self._busy):  # deleted or moved
                    self._last_turn.pop(sid, None)
                for sid in await self._local.hand_back_slotless(self._directory, self._id, self._busy):
                    self._last_turn.pop(sid, None)
                if self._cfg.rebalance.enabled:  # copies stay (and their last turn) until owned elsewhere
                    self._rebalanced += len(await rebalance_step(self._engine, self._local, self._directory, self._id, self._busy,
                                                                 self._last_turn, int(self._cfg.kv_transfer_max_mb * (1 << 20))))
                held = set(await asyncio.to_thread(self._engine.session_ids)) | self._busy
                horizon = time.time() - self._cfg.scaling.active_window_s
                for sid in [s for s, t in self._last_turn.items() if s not in held and t < horizon]:
                    del self._last_turn[sid]  # turns of sessions no longer here (failed first turns, moved away)
            except Exception:
                log.exception("idle session eviction failed")

    # ---- drain on scale-down ---------------------------------------------------------
    async def __del__(self):
        """Serve calls this after running turns finished (or the grace period ran
        out): stop taking turns, then drain (drain.py)."""
        self._draining = True
        for task in self._tasks:
            task.cancel()
        await drain(self._engine, self._local, self._directory, self._id, self._busy, self._last_turn,
                    self._cfg.kv_transfer_max_mb * (1 << 20))
