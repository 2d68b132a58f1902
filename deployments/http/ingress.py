"""HTTP ingress: the OpenAI-compatible API in front of the LLM replicas.

Routes (FastAPI, built per replica by ``__serve_build_asgi_app__``, no module
global app):

- ``POST /v1/chat/completions``: a turn. Session by ``session_id`` in the body
  or the ``X-Session-ID`` header (the client sends only new messages); without
  one, the conversation is found by history digest (see ``history.py``) and
  only the unseen suffix goes to the engine. The session id travels to the
  LLM deployment's router as ``handle.options(session_id=...)``: Serve does not
  forward it by itself on this second hop.
- ``POST /v1/responses``: a turn in OpenAI's Responses API, continued by
  ``previous_response_id`` (responses_schema.py, responses.py).
- ``POST /tokenize``, ``POST /detokenize`` (vLLM's shapes, tokenize_api.py),
  with the ingress's own copy of the tokenizer (tokens.py), which also names
  the tokens of ``logprobs``.
- ``GET/DELETE /v1/sessions/{id}``, ``GET /v1/sessions/{id}/turns`` (the
  session log's committed turns: the exactly-once audit; session_routes.py), ``GET /v1/models``,
  ``GET /healthz``, ``GET /metrics``; ``/openapi.json`` publishes the request
  schema (service_info.py).
- ``GET /`` (the browser playground), ``/cluster``, ``/plots``, ``/ui/...`` and
  ``GET /v1/cluster``: ``playground.py``.

A chat request may carry an ``Idempotency-Key`` header: a retry with the key of
the session's last committed turn gets that turn's reply again (``"cache":
"replayed"``) instead of a second turn. Bodies, turn times and ``max_tokens``
are capped (``limits``, see ``request_limits.py``).

Every chat and session response carries ``x-session-id`` and ``x-replica-id``.

With API keys (``auth.keys_file``) every ``/v1`` route needs ``Authorization:
Bearer <key>`` (``auth.py``); the key's tenant scopes every session id, history
digest and idempotency key the request touches (``tenants.py``), and its limits
apply (``tenant_limits.py``). Clients see only their own, unscoped ids.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from ray.serve.handle import DeploymentHandle

from deployments.http.api_keys import KeyRing
from deployments.http.auth import KeyCheck, tenant_of
from deployments.http.completion import ChatResponse
from deployments.http.completions_schema import CompletionRequest
from deployments.config import AppConfig, ReplicaTransport
from deployments.sessions.directory import directory_handle, directory_spec
from deployments.http.errors import ModelNotFoundError, ServiceStartingError, error_response, unwrap
from deployments.sessions.history import HistoryView
from deployments.http.metrics import ServiceMetrics
from deployments.messages import IngressPhase, ReplicaStats
from deployments.http.openai_schema import ChatCompletionRequest
from deployments.http.playground import Playground
from deployments.http.request_limits import read_body
from deployments.http.session_routes import NO_REPLICA, SessionRoutes
from deployments.http.tenant_limits import TenantLimiter
from deployments.sessions.tenants import client_id, history_seed, scoped
from deployments.http.tokenize_api import DetokenizeRequest, TokenizeRequest, detokenize, parse, tokenize
from deployments.http.responses import ResponsesReply
from deployments.http.responses_schema import ResponsesRequest
from deployments.http.service_info import openapi_schema, request_body, server_info
from deployments.http.text_completion import TextResponse
from deployments.http.tokens import CodecHolder
from deployments.http.turn_plan import OneCallSessions, TurnPlan, explicit_sid, plan_completion, plan_response
from deployments.http.turn_start import TurnStarter
from deployments.turn_timing import TurnTimer
from swiftinfer_core.conversation.tool_syntax import ToolSyntax
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.protocol import ToolPrompt
from swiftinfer_core.session_id import CLIENT_MAX, check_session_id

READY_CACHE_S = 5.0  # a positive readiness answer is reused this long


class Ingress:
    def __init__(self, llm: DeploymentHandle, config: dict):
        self._cfg = AppConfig.model_validate(config)
        # every call to the LLM replicas (turns here, session routes, one-call sessions) on the configured transport
        self._llm = llm = llm.options(_by_reference=self._cfg.replica_transport is ReplicaTransport.RAY)
        self._directory = directory_handle(directory_spec(self._cfg))
        self._metrics = ServiceMetrics()
        self._hops = TurnTimer(phases=IngressPhase)  # where a turn's first token goes, seen from here
        self._ready_until = 0.0
        self._created = int(time.time())
        self._server_info = server_info(self._cfg)
        auth = self._cfg.auth  # keys and tenants: auth.py, tenants.py
        self._keys = KeyRing(auth.keys_file, auth.reload_period_s) if auth.keyed else None
        self._tenant_limits = TenantLimiter(auth.tenant_limits, auth.tenant_overrides)
        self._sessions = SessionRoutes(llm, self._directory)
        self._playground = Playground(self._cfg, self._directory)  # GET /, /cluster, /v1/cluster: playground.py
        eng = self._cfg.engine
        self._codec = CodecHolder(eng.model, eng.allow_control_tokens_in_content, eng.max_turn_tokens, eng.chat_template)
        self._one_call = OneCallSessions(llm)  # completions without a session id (turn_plan.py)
        self._starter = TurnStarter(llm, self._cfg.limits, self._metrics, self._hops)  # turn_start.py

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(title="SwiftInfer Serve", docs_url=None, redoc_url=None)
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"],
                          openapi_extra={"requestBody": request_body(ChatCompletionRequest)})
        app.add_api_route("/v1/completions", self.completions, methods=["POST"], openapi_extra={"requestBody": request_body(CompletionRequest)})
        app.add_api_route("/v1/responses", self.responses, methods=["POST"], openapi_extra={"requestBody": request_body(ResponsesRequest)})
        app.add_api_route("/tokenize", self.tokenize, methods=["POST"])
        app.add_api_route("/detokenize", self.detokenize, methods=["POST"])
        self._sessions.add_routes(app)  # /v1/sessions/...: session_routes.py
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/healthz", self.healthz, methods=["GET"])
        app.add_api_route("/metrics", self.metrics, methods=["GET"])
        self._playground.add_routes(app)
        app.openapi = lambda: openapi_schema(app)
        app.add_middleware(KeyCheck, ring=self._keys, metrics_keyed=self._cfg.auth.metrics_require_key)
        return app

    # ---- readiness -------------------------------------------------------------------
    async def _live_replicas(self) -> dict[str, ReplicaStats]:
        # generous: a replica busy in a long step (or a starved host) reports late, not never
        return await self._directory.replica_stats.remote(max(10.0, 3 * self._cfg.stats_report_period_s + 1.0))

    async def _ensure_ready(self) -> None:
        """503 until some LLM replica reports in. With ``min_replicas == 0`` the
        request must go through, since it is what makes Serve start a replica."""
        if self._cfg.scaling.min_replicas == 0 or time.monotonic() < self._ready_until:
            return
        if not await self._live_replicas():
            raise ServiceStartingError("the model is loading; no LLM replica is ready yet")
        self._ready_until = time.monotonic() + READY_CACHE_S

    # ---- chat ------------------------------------------------------------------------
    async def _resolve_session(self, req: ChatCompletionRequest, messages: list[dict], header_sid: str | None,
                               tenant: str | None) -> tuple[str, list[dict], str | None]:
        """``(scoped session id, messages for the engine, history digest base)``, all in ``tenant``'s namespace."""
        explicit = explicit_sid(req.session_id, header_sid)
        if explicit:
            return scoped(tenant, explicit), messages, None
        view = HistoryView.of(messages, history_seed(tenant))
        if view.split == len(messages):
            raise InvalidRequestError("the last message is the assistant's: nothing to answer")
        sid, continues = await self._directory.resolve_history.remote(view.opening, view.prefix_digest, scoped(tenant, ""))
        return sid, (messages[view.split :] if continues else messages), view.full_digest

    def _turn_key(self, request: Request) -> str | None:
        key = request.headers.get("idempotency-key")
        return None if key is None else check_session_id(key, "Idempotency-Key", CLIENT_MAX)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve_turn(request, ChatCompletionRequest, self._plan_chat, ChatResponse)

    async def completions(self, request: Request) -> Response:
        return await self._serve_turn(request, CompletionRequest, self._plan_completion, TextResponse)

    async def responses(self, request: Request) -> Response:
        return await self._serve_turn(request, ResponsesRequest, self._plan_response, ResponsesReply)

    async def _plan_response(self, req: ResponsesRequest, request: Request, tenant: str | None) -> list[TurnPlan]:
        return [await plan_response(req, tenant, self._directory, retry=self._turn_key(request) is not None)]

    async def _plan_chat(self, req: ChatCompletionRequest, request: Request, tenant: str | None) -> list[TurnPlan]:
        syntax = await self._tool_syntax(req)
        messages = req.engine_messages(syntax)
        scoped_sid, new_messages, history_base = await self._resolve_session(req, messages, request.headers.get("x-session-id"), tenant)
        tools = req.tool_plan(syntax)  # a reply that may be calls is rendered as tool_calls (completion.py)
        shown = ToolPrompt(new_messages, tools.shown) if tools is not None and tools.shown else new_messages  # the template renders them
        return [TurnPlan(scoped_sid, shown, history_base, render={"tools": tools} if tools is not None else {})]

    async def _tool_syntax(self, req) -> ToolSyntax | None:
        """The chat template's tool syntax, read only for requests that need it (tools, tool_calls)."""
        return (await self._codec.get()).format.tool_syntax if req.needs_template() else None

    async def _plan_completion(self, req: CompletionRequest, request: Request, tenant: str | None) -> list[TurnPlan]:
        return await plan_completion(req, request.headers.get("x-session-id"), tenant, self._codec)

    async def _serve_turn(self, request: Request, schema, plan, render) -> Response:
        """One request of either API: parse ``schema``, check limits, ``plan`` its turns
        (sessions and engine inputs: one, or one per prompt of a completion batch),
        stream the replicas' events rendered by ``render``."""
        t0 = time.perf_counter()
        limits = self._cfg.limits
        deadline = time.monotonic() + limits.request_timeout_s
        sids, replicas, gens, streaming, ticket, drops = [], [], [], False, None, []
        tenant = tenant_of(request)
        self._metrics.in_flight.inc()
        try:
            req = schema.parse(await read_body(request, limits.max_body_bytes, limits.body_timeout_s))
            if req.model != self._cfg.model_id:
                raise ModelNotFoundError(f"the model {req.model!r} does not exist; this server serves {self._cfg.model_id!r}")
            params = req.sampling(self._cfg.default_max_tokens, await self._tool_syntax(req))
            if params.max_tokens > limits.max_output_tokens:
                raise InvalidRequestError(f"max_tokens is {params.max_tokens}; this server allows at most {limits.max_output_tokens}")
            turn_key = self._turn_key(request)
            # 429 past the tenant's limits; every choice of every prompt generates
            ticket = self._tenant_limits.acquire(tenant, params.max_tokens * params.n * req.turns(), req.turns())
            await self._ensure_ready()
            plans = await plan(req, request, tenant)
            sids = [client_id(tenant, p.scoped_sid) for p in plans]
            drops = [p.scoped_sid for p in plans if p.one_call]
            self._hops.record(IngressPhase.PREPARE, time.perf_counter() - t0)
            started = await self._starter.start_all(plans, params, turn_key, deadline)
            gens = [gen for gen, _, _ in started]
            replicas = [start.replica_id for _, _, start in started]
            codec = await self._codec.get() if params.logprobs else None
            first_at = time.perf_counter()
            turn = render.combine([
                render(self._cfg.model_id, replace(start, session_id=sid), ticket.meter(events), self._metrics, t0, first_at,
                       codec=codec, n=params.n, continuous_usage=req.continuous_usage(), **p.render)
                for p, sid, (_, events, start) in zip(plans, sids, started)])
            headers = {"x-session-id": ",".join(sids), "x-replica-id": ",".join(replicas)}
            self._metrics.requests.labels(status="200").inc()
            if req.stream:
                streaming = True  # from here the stream's guard owns the in-flight count (and the one-call sessions)
                return StreamingResponse(self._guard(turn.stream(), gens, ticket, drops), media_type="text/event-stream", headers=headers)
            return JSONResponse(await turn.collect(), headers=headers)
        except BaseException as exc:
            for gen in gens:
                gen.cancel()
            if not isinstance(exc, Exception):  # cancellation (client gone): nothing to answer
                raise
            headers = {"x-session-id": ",".join(sids), "x-replica-id": ",".join(replicas) or NO_REPLICA}
            resp = error_response(_unscoped(exc, tenant, sids), headers)
            self._metrics.requests.labels(status=str(resp.status_code)).inc()
            return resp
        finally:
            if not streaming:
                self._metrics.in_flight.dec()
                if ticket is not None:
                    ticket.finish()
                for sid in drops:
                    self._one_call.drop_later(sid)

    async def _guard(self, body, gens, ticket, drops: list[str]):
        """Ends the stream's in-flight count and tenant ticket; cancels the replicas'
        turns if the client leaves; deletes one-call sessions (``drops``)."""
        try:
            async for part in body:
                yield part
        finally:
            self._metrics.in_flight.dec()
            ticket.finish()
            for gen in gens:
                gen.cancel()
            for sid in drops:
                self._one_call.drop_later(sid)

    # ---- tokenizer -------------------------------------------------------------------
    async def tokenize(self, request: Request) -> Response:
        return await self._text_route(request, TokenizeRequest, lambda codec, req: tokenize(codec, req, self._cfg.engine.max_turn_tokens))

    async def detokenize(self, request: Request) -> Response:
        return await self._text_route(request, DetokenizeRequest, detokenize)

    async def _text_route(self, request: Request, cls, handler) -> Response:
        limits = self._cfg.limits
        try:
            req = parse(cls, await read_body(request, limits.max_body_bytes, limits.body_timeout_s))
            if req.model is not None and req.model != self._cfg.model_id:
                raise ModelNotFoundError(f"the model {req.model!r} does not exist; this server serves {self._cfg.model_id!r}")
            codec = await self._codec.get()
            return JSONResponse(await asyncio.to_thread(handler, codec, req))
        except Exception as exc:
            return error_response(exc, {})

    # ---- service ---------------------------------------------------------------------
    async def models(self) -> Response:
        card = {"id": self._cfg.model_id, "object": "model", "created": self._created, "owned_by": "swiftinfer",
                "swiftinfer": self._server_info}
        return JSONResponse({"object": "list", "data": [card]})

    async def healthz(self) -> Response:
        live = await self._live_replicas()
        body = {"status": "ok" if live else "starting", "replicas": len(live), "sessions": await self._directory.num_sessions.remote()}
        return JSONResponse(body, status_code=200 if live else 503, headers={} if live else {"Retry-After": "5"})

    async def metrics(self) -> Response:
        live = await self._live_replicas()
        self._metrics.set_pool(live, await self._directory.num_sessions.remote())
        self._metrics.set_ingress_phases(self._hops.summary())
        return Response(self._metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _unscoped(exc: BaseException, tenant: str | None, sids: list[str]) -> BaseException:
    """The replica's error with the client's ids in its message instead of the scoped
    ones (409 busy, not committed): clients never see ``<tenant>:<id>``."""
    inner = unwrap(exc)
    text = str(inner)
    if tenant is not None:
        for sid in sids:
            text = text.replace(repr(scoped(tenant, sid)), repr(sid))
    if text == str(inner):
        return exc
    try:
        return type(inner)(text)
    except Exception:  # an exception type that does not take one message: keep it as it is
        return exc
