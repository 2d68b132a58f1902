"""A turn on the LLM replica: lease, sync, paced stream, commit or roll-back.

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

Part of ``LLMReplica`` (replica.py), as a base class: the same actor, the same
event loop, the same state (``_engine``, ``_local``, ``_directory``, ``_commits``,
``_busy``, ``_last_turn``, ``_pace``, ``_timer`` and the turn counters), all set up
by ``LLMReplica.__init__``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import AsyncIterator

from deployments.http.errors import TurnNotCommittedError
from deployments.sessions.history import chain
from deployments.messages import CacheState, Commit, CommittedTurn, TurnGrant, TurnPhase, TurnReplay, TurnStart
from deployments.replica.local_sessions import OwnCommit
from deployments.replica.replies import Replies
from deployments.sessions.tenants import check_tenant, scoped
from deployments.turn_timing import Stopwatch
from swiftinfer_core.config import SamplingParams
from swiftinfer_core.errors import CapacityError, EngineClosedError, SessionBusyError, StaleSessionError
from swiftinfer_core.protocol import ABSENT, RawPrompt, SessionView, StreamChunk, ToolPrompt

log = logging.getLogger("ray.serve")


class ReplicaTurns:
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
