"""Starting the turns of one request at the LLM replicas, up to their first token.

A turn is a streaming ``chat_events`` call; its first item (``TurnStart``) comes
once the engine has the turn's first token, and the engine's errors surface
before it, while the ingress can still answer with a status code. Until then a
turn has sent nothing and was rolled back, so when the replica's engine is gone
(device fault, replica died) it is sent again, with backoff, until a healthy or
replacement replica takes it or ``limits.unavailable_retry_s`` passes.

A batch of completion prompts starts its turns together, each with a Serve
request id of its own (request_context.py); when one fails before its first
token, or the client leaves, the turns that had started are cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.config import LimitsConfig
from deployments.http.metrics import ServiceMetrics
from deployments.http.request_context import own_request_id
from deployments.http.request_limits import Deadline
from deployments.http.turn_plan import TurnPlan
from deployments.messages import IngressPhase, TurnStart
from deployments.turn_timing import TurnTimer
from swiftinfer_core.config import SamplingParams
from swiftinfer_core.errors import EngineClosedError

UNAVAILABLE = (EngineClosedError, ActorDiedError, ActorUnavailableError)  # the turn never started: safe to send again
Started = tuple  # (the call's generator, its deadline-bounded events after the TurnStart, the TurnStart)


class TurnStarter:
    def __init__(self, llm: DeploymentHandle, limits: LimitsConfig, metrics: ServiceMetrics, hops: TurnTimer):
        self._llm, self._limits, self._metrics, self._hops = llm, limits, metrics, hops

    async def start_all(self, plans: list[TurnPlan], params: SamplingParams, turn_key: str | None, deadline: float) -> list[Started]:
        """``start`` of every plan, concurrently; when one fails, the others are cancelled."""
        if len(plans) == 1:
            return [await self.start(plans[0], params, turn_key, deadline)]

        async def own_request(p: TurnPlan) -> Started:
            own_request_id()  # in this task's copy of the context only
            return await self.start(p, params, turn_key, deadline)

        tasks = [asyncio.ensure_future(own_request(p)) for p in plans]
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:  # the client left: turns that had started go no further (the others cancel themselves)
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is None:
                    t.result()[0].cancel()
            raise
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for r in results:
                if not isinstance(r, BaseException):
                    r[0].cancel()
            raise failed[0]
        return results

    async def start(self, p: TurnPlan, params: SamplingParams, turn_key: str | None, deadline: float) -> Started:
        """Plan ``p``'s turn, once its first token exists (sent again while its replica is unavailable)."""
        give_up = min(deadline, time.monotonic() + self._limits.unavailable_retry_s)
        pause = 0.25
        sid, extra = p.scoped_sid, {} if p.expect_turn is None else {"expect_turn": p.expect_turn}
        while True:
            called = time.time()
            gen = self._llm.options(session_id=sid, stream=True).chat_events.remote(sid, p.engine_input, params, p.history_base,
                                                                                    turn_key, **extra)
            events = Deadline(gen, deadline, self._limits.request_timeout_s)
            try:
                start = await events.__anext__()  # the engine's errors surface here, before any header is sent
            except UNAVAILABLE:
                gen.cancel()
                if time.monotonic() + pause >= give_up:
                    raise
                self._metrics.turn_retries.inc()
                await asyncio.sleep(pause)
                pause = min(2 * pause, 2.0)
                continue
            except BaseException:  # its error, or the client left while it started: the turn goes no further
                gen.cancel()
                raise
            self._record_hops(called, start)
            return gen, (events if start.first is None else _after(start.first, events)), start

    def _record_hops(self, called: float, start: TurnStart) -> None:
        """Routing, replica and return times of a turn's TurnStart (wall clocks: the
        replica's stamps; a replica that sent none, e.g. a test double, adds nothing)."""
        if start.received_at > 0:
            self._hops.record(IngressPhase.ROUTE, start.received_at - called)
            self._hops.record(IngressPhase.REPLICA, start.sent_at - start.received_at)
            self._hops.record(IngressPhase.RETURN, time.time() - start.sent_at)


async def _after(first, rest: AsyncIterator) -> AsyncIterator:
    """``first``, then the items of ``rest``."""
    yield first
    async for item in rest:
        yield item
