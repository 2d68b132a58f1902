"""The LLM replica: one engine, its sessions, and their hand-off to the directory.

A turn on this replica:
1. ``directory.begin_turn`` takes the session's lease (a turn of it anywhere
   else is refused with 409), makes this replica the owner and returns the last
   committed state; with an ``Idempotency-Key`` equal to the last committed
   turn's, the stored reply is sent again instead (nothing runs, nothing is
   logged twice). A session whose last turn this replica committed, its copy
   unchanged since, skips the call (``LocalSessions.warm_grant``; unless
   ``lease_warm_turns``): the commit's sequence check alone keeps one turn per
   number.
2. ``LocalSessions.sync`` makes the engine's copy equal the committed record
   (warm, KV migrated from a drained replica, or rebuilt from token ids).
3. The engine streams the reply; token chunks go out paced (pacing.py): the
   first at once, then at most one per ``stream_interval_ms`` or per the
   replica's chunk budget shared by its open streams, whichever is longer.
4. Before the final chunk leaves, the turn is committed through the directory
   to the session log (batched with other sessions' commits). With ``n``
   choices, choice 0 is the session's reply; the others' texts are logged only
   for a retry's replay (replies.py). A turn that is
   not committed (client gone, timeout, error, commit refused) is rolled back
   to the committed record, so the log and every replica agree.

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
from dataclasses import replace
from typing import AsyncIterator

from ray import serve

from deployments.config import AppConfig
from deployments.sessions.directory import directory_handle, directory_spec
from deployments.replica.activity import active_count
from deployments.replica.commit import CommitBatcher
from deployments.replica.drain import drain
from deployments.replica.engine_factory import make_engine
from deployments.http.errors import TurnNotCommittedError
from deployments.sessions.history import chain
from deployments.messages import CacheState, Commit, CommittedTurn, ReplicaStats, TurnGrant, TurnPhase, TurnReplay, TurnStart
from deployments.replica.local_sessions import LocalSessions, OwnCommit
from deployments.replica.pacing import ChunkBudget
from deployments.replica.rebalance import rebalance_step
from deployments.replica.replies import Replies
from deployments.sessions.tenants import check_tenant, scoped
from deployments.turn_timing import Stopwatch, TurnTimer
from swiftinfer_core.config import SamplingParams
from swiftinfer_core.engine import faults
from swiftinfer_core.engine.handoff import Handoff
from swiftinfer_core.errors import CapacityError, EngineClosedError, SessionBusyError, SessionNotFoundError, StaleSessionError
from swiftinfer_core.recent_times import RecentTimes
from swiftinfer_core.protocol import ABSENT, RawPrompt, SessionView, StreamChunk, ToolPrompt

log = logging.getLogger("ray.serve")


class LLMReplica:
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

    # ---- turns -----------------------------------------------------------------------
    async def chat_events(
        self, session_id: str, messages: list[dict] | ToolPrompt | RawPrompt, sampling: dict | SamplingParams,
        history_base: str | None = None, turn_key: str | None = None, expect_turn: int | None = None,
    ) -> AsyncIterator[TurnStart | StreamChunk]:
        """Stream one turn: a ``TurnStart`` (with the first chunk, unless final) then ``StreamChunk``s. ``history_base``
        (digest of every message the client sent) makes the committed record
        findable by id-less clients once extended with our reply; ``turn_key``
        (the client's Idempotency-Key) makes a retry of a committed turn a replay;
        ``expect_turn``: the turn must be the session's turn of that number (a 409
        otherwise: the conversation moved on since the client saw it)."""
        received_at = time.time()
        params = sampling if isinstance(sampling, SamplingParams) else SamplingParams(**sampling)
        if self._draining:
            raise EngineClosedError("replica is draining")
        await self._local.wait(session_id)
        if session_id in self._busy:
            raise SessionBusyError(f"session {session_id!r} already has a turn in flight")
        self._busy.add(session_id)  # before any other await: a second turn of this session gets 409
        grant: TurnGrant | None = None
        done = False  # committed or replayed: nothing to roll back
        stream = None
        watch = Stopwatch(self._timer)
        try:
            # A copy committed or synced here before may start warm, and a session without a
            # record may start new: the engine checks the condition as it takes the turn
            # (expect=), so no reading of the engine waits for a step first. Other turns
            # read it (admission, sync) after the lease. A turn without a copy here is
            # admitted by this replica's count first (a warm one holds its slot already).
            view = None
            if not self._direct_capable:
                view = await self._read_and_admit(session_id, watch)
            elif session_id not in self._local.seq:
                self._admit_count()
            # the replica's own last commit, copy unchanged: no directory call (AppConfig.lease_warm_turns)
            answer = None if self._cfg.lease_warm_turns else self._local.warm_grant(session_id, turn_key)
            if answer is None:
                answer = await self._directory.begin_turn.remote(session_id, self._id, turn_key)
            else:
                self._unleased += 1
            watch.lap(TurnPhase.LEASE)
            if isinstance(answer, TurnReplay):
                done = True
                self._turns[CacheState.REPLAYED] += 1
                yield TurnStart(session_id, self._id, CacheState.REPLAYED, received_at, time.time(), turn=answer.seq,
                                prompt_tokens=answer.usage.prompt_tokens)
                *others, own = Replies.replayed(answer.text, answer.finish_reason, answer.others)
                for chunk in others:
                    yield chunk
                yield replace(own, usage=answer.usage)
                return
            grant = answer
            if expect_turn is not None and grant.seq + 1 != expect_turn:
                raise SessionBusyError(f"session {session_id!r} is at turn {grant.seq}: this turn was sent as turn {expect_turn}")
            cache, chunk = CacheState.WARM, None
            if self._direct_capable:
                if grant.record is None:
                    cache, expect = CacheState.NEW, ABSENT
                elif self._local.seq.get(session_id) == grant.seq:
                    expect = grant.record
                else:
                    expect = None
                if expect is not None:
                    stream = self._pace.paced(self._engine.chat(session_id, messages, params, expect=expect))
                    try:
                        chunk = await stream.__anext__()
                        self._direct_starts += 1
                        self._local.committed(session_id, grant.seq)
                    except StaleSessionError:  # evicted, slot lent, changed, or a leftover copy: the full path
                        await stream.aclose()
                        stream = None
            if chunk is None:
                view = view or await self._read_and_admit(session_id, watch)
                cache = await self._local.sync(session_id, grant, view)
                watch.lap(TurnPhase.SYNC)
                stream = self._pace.paced(self._engine.chat(session_id, messages, params))
                chunk = await stream.__anext__()
            watch.lap(TurnPhase.FIRST_TOKEN)
            self._turns[cache] += 1
            replies = Replies()  # per choice; choice 0 is the session's (replies.py)
            prompt_tokens = chunk.usage.prompt_tokens if chunk.final else chunk.prompt_tokens
            if chunk.final:  # a one-chunk turn: its chunk waits for the commit below
                yield TurnStart(session_id, self._id, cache, received_at, time.time(), turn=grant.seq + 1, prompt_tokens=prompt_tokens)
            else:
                replies.add(chunk)
                yield TurnStart(session_id, self._id, cache, received_at, time.time(), first=chunk, turn=grant.seq + 1,
                                prompt_tokens=prompt_tokens)
                chunk = await stream.__anext__()
            while not chunk.final:
                replies.add(chunk)
                yield chunk
                chunk = await stream.__anext__()
            replies.add(chunk)
            reply = replies.text(0)
            digest = chain(history_base, {"role": "assistant", "content": reply}) if history_base else None
            watch = Stopwatch(self._timer)
            await self._commit(session_id, grant.seq, digest, turn_key, replies, chunk)
            watch.lap(TurnPhase.COMMIT)
            done = True
            yield replace(chunk, record=None)  # the record stays here
        finally:
            held = None if done else self._local.hold(session_id)  # before any await: reads wait for the roll-back
            if stream is not None:  # on cancel this aborts the engine turn
                await stream.aclose()
            try:
                if not done:
                    await asyncio.shield(self._end_uncommitted(session_id, grant))
            finally:  # whatever the roll-back met, the session takes turns again
                self._busy.discard(session_id)
                self._local.release(session_id, held)
                self._last_turn[session_id] = time.time()

    async def chat(self, session_id: str, messages: list[dict], sampling: dict | SamplingParams,
                   tenant: str | None = None) -> AsyncIterator[StreamChunk]:
        """Handle API: ``handle.options(session_id=scoped(tenant, sid), stream=True).chat.remote(sid, messages,
        sampling, tenant=tenant)``. ``tenant`` is required when the service has API keys (tenants.py);
        the router option carries the scoped id so the owner is found."""
        sid = scoped(check_tenant(tenant, self._cfg.auth.keyed), session_id)
        async for item in self.chat_events(sid, messages, sampling):
            if isinstance(item, StreamChunk):
                yield item
            elif item.first is not None:
                yield item.first

    async def _read_and_admit(self, session_id: str, watch: Stopwatch) -> SessionView:
        """One engine reading (it waits for the step in progress) that serves
        admission and the sync: while the session is busy here nothing else on this
        replica changes its local copy (eviction and close skip or wait for it)."""
        view = await asyncio.to_thread(self._engine.view, session_id)
        self._admit(view)
        watch.lap(TurnPhase.ADMIT)
        return view

    def _admit_count(self) -> None:
        """429 when this replica has as many turns in flight as KV slots besides
        this one (``_admit`` without reading the engine; a turn with ``n`` choices
        counts once here, so the engine may still queue it)."""
        if len(self._busy) - 1 >= self._slots:  # _busy holds this session already
            raise CapacityError(f"all {self._slots} KV slots of replica {self._id} are busy")

    def _admit(self, view: SessionView) -> None:
        """429 when every KV slot is taken by a turn in flight and this session
        has none: the engine would only queue it behind them."""
        st = view.engine
        if not view.resident and st.running_requests + st.waiting_requests >= st.total_slots:
            raise CapacityError(f"all {st.total_slots} KV slots of replica {self._id} are busy")

    async def _commit(self, sid: str, seq: int, digest: str | None, turn_key: str | None, replies: Replies, last: StreamChunk) -> None:
        record = last.record or await asyncio.to_thread(self._engine.export_session, sid)  # backends without it
        turn = CommittedTurn(turn_key, replies.finish[0], replies.text(0), last.usage, replies.others())
        ok = await self._commits.commit(Commit(sid, seq, record, digest, turn))
        if not ok:
            self._not_committed += 1
            self._local.forget_commit(sid)  # its next turn asks the directory
            raise TurnNotCommittedError(f"session {sid!r} changed while this turn ran (deleted or moved); the turn was not recorded, retry it")
        self._local.committed(sid, seq + 1, OwnCommit(seq + 1, record, turn_key))

    async def _end_uncommitted(self, sid: str, grant: TurnGrant | None) -> None:
        """Roll the local copy back to the committed state and free the lease."""
        try:
            if grant is not None:
                await self._local.restore(sid, grant.record)
        except Exception:  # never mask the turn's own error; drop the copy, the next turn rebuilds
            log.exception("could not roll back session %s", sid)
            try:
                await self._local.drop(sid)
            except Exception:
                log.exception("could not drop the local copy of session %s", sid)
        if grant is not None and not grant.leased:
            return  # started from the replica's own commit: no lease to free
        try:
            await self._directory.end_turn.remote(sid, self._id)
        except Exception:  # a restarting directory forgets leases anyway
            log.warning("could not end the turn of session %s at the directory", sid, exc_info=True)

    def _local_stats(self, session_id: str):
        return self._engine.session_stats(session_id) if self._engine.has_session(session_id) else None

    # ---- session management ----------------------------------------------------------
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
