"""The LLM replica: one engine, its sessions, and their hand-off to the directory.

A turn on this replica:
1. ``directory.begin_turn`` makes this replica the owner and returns the last
   committed record. If the local engine holds the session at that same round
   count its cache is current (warm); otherwise the record is imported and the
   engine rebuilds the cache (``recovered``): the session moved here after its
   owner died, drained, or a baseline router sent it elsewhere.
2. The engine streams the reply.
3. Before the final chunk leaves, the new record is committed, so the client's
   next turn (which can only start after this one ends) sees it.

On scale-down Serve waits for running turns, then calls ``__del__``: the replica
stops taking turns and hands every session back to the directory with its final
record; the next turn of each rebuilds it on the best remaining replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import AsyncIterator

from ray import serve

from deployments.config import AppConfig
from deployments.directory import directory_handle
from deployments.engine_factory import make_engine
from deployments.history import chain
from swiftinfer_core.config import SamplingParams
from swiftinfer_core.errors import CapacityError, EngineClosedError, SessionBusyError, SessionNotFoundError
from swiftinfer_core.protocol import SessionRecord, StreamChunk

log = logging.getLogger("ray.serve")


class CacheState(str, Enum):
    WARM = "warm"  # this replica's cache continued the conversation
    REBUILT = "rebuilt"  # rebuilt here from the directory's record
    NEW = "new"  # first turn of the conversation


@dataclass(frozen=True)
class TurnStart:
    """First item of ``chat_events``, sent once the engine produced its first chunk
    (errors before that surface as exceptions, so the ingress can still answer
    with a status code)."""

    session_id: str
    replica_id: str
    cache: CacheState


class LLMReplica:
    async def __init__(self, config: dict):
        self._cfg = AppConfig.model_validate(config)
        self._id = serve.get_replica_context().replica_id.unique_id
        self._engine = make_engine(self._cfg.backend, self._cfg.engine, self._cfg.cpu_threads)
        self._directory = directory_handle(self._cfg.directory_name)
        self._busy: set[str] = set()  # sessions with a turn running here
        self._last_turn: dict[str, float] = {}  # session -> time of its last turn (autoscaling)
        self._draining = False
        await self._report()
        self._reporter = asyncio.get_running_loop().create_task(self._report_loop())

    # ---- turns -----------------------------------------------------------------------
    async def chat_events(
        self, session_id: str, messages: list[dict], sampling: dict | SamplingParams, history_base: str | None = None
    ) -> AsyncIterator[TurnStart | StreamChunk]:
        """Stream one turn: a ``TurnStart`` then ``StreamChunk``s. ``history_base``
        (digest of every message the client sent) makes the committed record
        findable by id-less clients once extended with our reply."""
        params = sampling if isinstance(sampling, SamplingParams) else SamplingParams(**sampling)
        if self._draining:
            raise EngineClosedError("replica is draining")
        if session_id in self._busy:
            raise SessionBusyError(f"session {session_id!r} already has a turn in flight")
        self._busy.add(session_id)  # before any await: a second turn of this session gets 409
        try:
            await asyncio.to_thread(self._admit, session_id)
        except BaseException as exc:
            self._busy.discard(session_id)
            if isinstance(exc, CapacityError):  # forget a placement for a session that never started
                self._directory.abandon.remote(session_id, self._id)
            raise
        committed = False
        stream = None
        try:
            record = await self._directory.begin_turn.remote(session_id, self._id)
            cache = await asyncio.to_thread(self._sync, session_id, record)
            stream = self._engine.chat(session_id, messages, params)
            try:
                chunk = await stream.__anext__()
            except BaseException:
                if cache is CacheState.NEW:
                    self._directory.abandon.remote(session_id, self._id)
                raise
            yield TurnStart(session_id, self._id, cache)
            text: list[str] = []
            while chunk.finish_reason is None:
                text.append(chunk.text)
                yield chunk
                chunk = await stream.__anext__()
            text.append(chunk.text)
            digest = chain(history_base, {"role": "assistant", "content": "".join(text)}) if history_base else None
            await self._commit(session_id, digest)
            committed = True
            yield chunk
        finally:
            if stream is not None:  # on cancel this aborts the engine turn, keeping the session consistent
                await stream.aclose()
            if not committed:  # cancelled or failed mid-turn: store whatever the engine kept
                await asyncio.shield(self._settle(session_id))
            self._busy.discard(session_id)
            self._last_turn[session_id] = time.time()

    async def chat(self, session_id: str, messages: list[dict], sampling: dict | SamplingParams) -> AsyncIterator[StreamChunk]:
        """Handle API: ``handle.chat.options(stream=True).remote(session_id, messages, sampling)``."""
        async for item in self.chat_events(session_id, messages, sampling):
            if isinstance(item, StreamChunk):
                yield item

    def _admit(self, session_id: str) -> None:
        """429 when every KV slot is taken by a turn in flight and this session
        has none: the engine would only queue it behind them."""
        st = self._engine.stats()
        resident = self._engine.has_session(session_id) and self._engine.session_stats(session_id).resident
        if not resident and st.running_requests + st.waiting_requests >= st.total_slots:
            raise CapacityError(f"all {st.total_slots} KV slots of replica {self._id} are busy")

    def _sync(self, session_id: str, record: dict | None) -> CacheState:
        """Make the local engine agree with the directory's committed record."""
        stats = self._local_stats(session_id)
        if record is None:  # never committed: a new session (or one adopted after a directory restart)
            return CacheState.NEW if stats is None else self._local_state(stats)
        if stats is not None and stats.rounds == record["rounds"]:
            return self._local_state(stats)
        self._engine.import_session(SessionRecord.from_dict(record))  # replaces a stale local copy
        return CacheState.REBUILT

    @staticmethod
    def _local_state(stats) -> CacheState:
        """The local copy is current; its KV is warm unless the engine lent its slot
        to another conversation (it then rebuilds from token ids on this turn)."""
        return CacheState.WARM if stats.resident else CacheState.REBUILT

    async def _commit(self, session_id: str, digest: str | None) -> None:
        record = (await asyncio.to_thread(self._engine.export_session, session_id)).to_dict()
        if not await self._directory.commit.remote(session_id, self._id, record, digest):
            # Deleted or taken over by another replica while this turn ran: our copy is stale.
            log.warning("session %s changed hands during a turn on %s; dropping the local copy", session_id, self._id)
            await asyncio.to_thread(self._close_local, session_id)

    async def _settle(self, session_id: str) -> None:
        try:
            if await asyncio.to_thread(self._engine.has_session, session_id):
                await self._commit(session_id, None)
        except Exception:  # never mask the turn's own error; the next turn rebuilds from the directory
            log.exception("could not commit session %s after an interrupted turn", session_id)
            await asyncio.to_thread(self._close_local, session_id)

    # Engine calls take the engine's lock, which a model step holds (~0.1 s on
    # CPU): the hot path runs them in a worker thread so the event loop keeps
    # streaming other turns' chunks meanwhile.
    def _close_local(self, session_id: str) -> bool:
        if not self._engine.has_session(session_id):
            return False
        self._engine.close_session(session_id)
        return True

    def _local_stats(self, session_id: str):
        return self._engine.session_stats(session_id) if self._engine.has_session(session_id) else None

    # ---- session management ----------------------------------------------------------
    async def session_info(self, session_id: str) -> dict:
        entry = await self._directory.describe.remote(session_id)
        if entry is None or (entry["record"] is None and entry["owner"] is None):
            raise SessionNotFoundError(f"no session {session_id!r}")
        local = await asyncio.to_thread(self._local_stats, session_id) if entry["owner"] == self._id else None
        if local is not None:
            info = local.to_dict()
        else:  # no live cache anywhere (drained owner): describe the record
            rec = entry["record"] or {}
            info = {
                "session_id": session_id, "tokens_seen": rec.get("tokens_seen", 0), "cache_fill": 0,
                "capacity": self._cfg.engine.sink_tokens + (self._cfg.engine.window or 0),
                "evictions": rec.get("tokens_seen", 0), "rounds": rec.get("rounds", 0),
                "prefilled_tokens": rec.get("prefilled_tokens", 0), "generated_tokens": rec.get("generated_tokens", 0),
                "recovered": entry["moves"] > 0, "resident": False,
            }
        info["replica"] = entry["owner"]
        info["moves"] = entry["moves"]
        return info

    async def close_session(self, session_id: str) -> bool:
        if session_id in self._busy:
            raise SessionBusyError(f"session {session_id!r} has a turn in flight")
        local = await asyncio.to_thread(self._close_local, session_id)
        self._last_turn.pop(session_id, None)
        return await self._directory.delete.remote(session_id) or local

    def ping(self) -> str:
        return self._id

    # ---- stats for routers, the autoscaler, and /metrics -------------------------------
    async def _stats(self) -> dict:
        st = await asyncio.to_thread(self._engine.stats)
        now = time.time()
        active = sum(1 for t in self._last_turn.values() if now - t <= self._cfg.scaling.active_window_s)
        return {
            "replica_id": self._id, "capacity": st.total_slots, "free_slots": st.free_slots,
            "sessions": st.active_sessions, "resident": st.resident_sessions, "active_sessions": active + len(self._busy),
            "running": st.running_requests, "waiting": st.waiting_requests, "evictions": st.evictions,
            "tokens_generated": st.tokens_generated, "tokens_prefilled": st.tokens_prefilled,
            "kv_use": st.resident_sessions / max(1, st.total_slots), "draining": self._draining,
        }

    def record_replica_metadata(self) -> dict:
        """Static facts routers read as ``replica.replica_metadata`` from the moment
        the replica is ready (routing stats arrive only after the first poll)."""
        return {"capacity": self._engine.stats().total_slots}

    async def record_routing_stats(self) -> dict:
        return await self._stats()

    async def record_autoscaling_stats(self) -> dict:
        s = await self._stats()
        return {"active_sessions": float(s["active_sessions"]), "kv_use": float(s["kv_use"]), "sessions": float(s["sessions"])}

    async def _report(self) -> None:
        await self._directory.report.remote(self._id, await self._stats())

    async def _report_loop(self) -> None:
        while not self._draining:
            await asyncio.sleep(self._cfg.stats_report_period_s)
            try:
                await self._report()
            except Exception:  # the directory restarting must not kill the replica
                log.exception("stats report failed")

    # ---- drain on scale-down ---------------------------------------------------------
    async def __del__(self):
        """Serve calls this after running turns finished (or the grace period ran
        out). Hand every idle session's final record to the directory; a session
        still busy keeps its last committed record."""
        self._draining = True
        self._reporter.cancel()
        idle = [sid for sid in await asyncio.to_thread(self._engine.session_ids) if sid not in self._busy]
        records = {sid: (await asyncio.to_thread(self._engine.export_session, sid)).to_dict() for sid in idle}
        released = await self._directory.release.remote(self._id, records)
        log.info("replica %s drained: handed %d sessions to the directory", self._id, released)
        await self._engine.shutdown()
