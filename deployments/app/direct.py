"""``http_front: direct``: every LLM replica serves the HTTP API itself.

With the ingress front a streamed chunk leaves the LLM replica as one Serve
streaming item (Ray's per-item work in the replica's one interpreter, then the
ingress's), and the GPU runs found the replica's interpreter to be where warm
turns queue at 128-256 conversations (README, "The served path against the
engine"). Here HAProxy asks a route picker (route_picker.py) which replica takes
the request, the session's owner, and forwards the connection to that
replica's own HTTP server; the turn then runs in the process that serves its
SSE stream, and no chunk crosses a process boundary before HAProxy.

The HTTP layer is the ingress's, unchanged (``Ingress`` with the replica in
place of its handle): ``LocalFirst`` runs a turn here when the replica holds
the session's copy or the route picker placed the request here by its
``x-session-id`` (HAProxy then sets ``route_picker.ROUTED_HEADER``, which no
client can: HAProxy drops client headers of that prefix), and sends anything
else (a session named only in the body or found by history digest, tenants'
sessions, session reads, a draining replica's turns, any turn HAProxy balanced
by load before the picker registered) through the deployment's own router to
the owner, as the ingress would. A turn
run on a replica that is not the owner is still correct: the directory's
``begin_turn`` moves the session, which is then rebuilt from its record.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.app.route_picker import ROUTED_HEADER
from deployments.http.ingress import Ingress
from deployments.replica.replica import LLMReplica
from swiftinfer_core.errors import EngineClosedError

# the session id the route picker placed this request by (None: HAProxy balanced it by load, e.g. before
# the picker registered, or the request named no session in x-session-id)
ROUTED_SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("routed_session", default=None)


_ROUTED = ROUTED_HEADER.encode()


class RoutedSession:
    """ASGI middleware: ``ROUTED_SESSION`` for the request's handlers."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sid = next((v.decode("latin-1") for k, v in scope["headers"] if k == _ROUTED), None)
        token = ROUTED_SESSION.set(sid)
        try:
            await self.app(scope, receive, send)
        finally:
            ROUTED_SESSION.reset(token)


class LocalStream:
    """A local ``chat_events`` generator shaped like Serve's response generator (``cancel``)."""

    def __init__(self, events: AsyncIterator, on_engine_closed: Callable[[], None]):
        self._events = events
        self._on_engine_closed = on_engine_closed
        self._closing: asyncio.Task | None = None

    def __aiter__(self) -> LocalStream:
        return self

    async def __anext__(self):
        try:
            return await self._events.__anext__()
        except EngineClosedError:
            self._on_engine_closed()  # the next attempt (the ingress retries these) goes to another replica
            raise

    def cancel(self) -> None:
        """Abort the turn (its ``finally`` rolls back an uncommitted turn); no-op once it ended."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._events.aclose())
            self._closing.add_done_callback(lambda t: t.cancelled() or t.exception())  # a close racing the stream's end


class LocalFirst:
    """The ``DeploymentHandle`` surface the ingress uses (``options``, ``<method>.remote``):
    ``chat_events`` of a session that ``runs_here`` is called in this process; every
    other call goes through ``peers()``, the deployment's handle (its router)."""

    def __init__(self, replica: DirectReplica, options: dict[str, Any] | None = None):
        self._replica = replica
        self._options = options or {}

    def options(self, **kwargs: Any) -> LocalFirst:
        return LocalFirst(self._replica, {**self._options, **kwargs})

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self._replica, self._options, method)


class _Method:
    def __init__(self, replica: DirectReplica, options: dict[str, Any], name: str):
        self._replica, self._options, self._name = replica, options, name

    def remote(self, *args: Any, **kwargs: Any):
        r = self._replica
        if self._name == "chat_events":
            if r.runs_here(self._options.get("session_id")):
                return LocalStream(r.chat_events(*args, **kwargs), r.engine_closed)
            r.forwarded()
        return getattr(r.peers().options(**self._options), self._name).remote(*args, **kwargs)


class DirectReplica(LLMReplica):
    """An LLM replica that is also the app's HTTP ingress (Serve's direct ingress)."""

    async def __init__(self, config: dict):
        await super().__init__(config)
        self._engine_closed = False
        self._peers: DeploymentHandle | None = None
        self._http = Ingress(LocalFirst(self), config)

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = self._http.__serve_build_asgi_app__()
        app.add_middleware(RoutedSession)
        return app

    def runs_here(self, sid: str | None) -> bool:
        """Whether a turn of ``sid`` runs in this process: a copy is here, or the route
        picker placed this request by that id (tenants' ids are scoped, so never equal)."""
        if sid is None or self._draining or self._engine_closed:
            return False
        return sid in self._local.seq or ROUTED_SESSION.get() == sid

    def engine_closed(self) -> None:
        self._engine_closed = True

    def forwarded(self) -> None:
        self._forwarded += 1

    def peers(self) -> DeploymentHandle:
        if self._peers is None:
            ctx = serve.get_replica_context()
            self._peers = serve.get_deployment_handle(ctx.deployment, ctx.app_name)
        return self._peers
