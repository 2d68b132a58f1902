"""The route picker of ``http_front: direct``: HAProxy's ingress request router.

For every request to the app, HAProxy's Lua action POSTs to ``/internal/route``
here with the client's ``x-session-id`` header (never the path or the API key) and,
when Serve runs with ``RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1``, the
request's body (cut at HAProxy's buffer size, then marked ``X-Body-Truncated``), and
forwards the connection to the replica named in the answer
(``{"host", "port", "replica_id"}``, and ``request_headers`` HAProxy sets on the
request: ``ROUTED_HEADER`` when the pick was the session's; any other status:
HAProxy answers 503).
The pick is the LLM deployment's own request router, run without dispatching
(``choose_replica``), as a turn: the session affinity router names the owner, or
places a new session by load, exactly as for the ingress front.

Without the header, a chat or completion body's own ``session_id`` (or the session a
Responses API ``previous_response_id`` continues) names the session, when the body came and is whole JSON of at most ``BODY_MAX`` bytes. A
request naming no session either way (session reads, history digests) goes to
the emptiest replicas, whose ingress code sends the turn on to the owner through
the router (direct.py). With API keys the ids are the client's unscoped ones,
and owners are kept by scoped ids: neither is used.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray.serve.handle import DeploymentHandle

from deployments.config import AppConfig
from deployments.http.responses_schema import parse_response_id
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.session_id import CLIENT_MAX, is_session_id

# Set by HAProxy from our answer, after it deleted any client header of Serve's router prefix (x-serve-router-):
# the replica knows the request was placed by this session id, not merely load-balanced (direct.py).
ROUTED_HEADER = "x-serve-router-swiftinfer-session"
BODY_MAX = 1 << 16  # a longer body (a whole history, an id-less conversation) is not parsed here: it is forwarded


def body_session(body: bytes, truncated: bool) -> str | None:
    """The session a JSON request body names at its top level: ``session_id``, or the one a
    Responses API ``previous_response_id`` continues; None if neither, or the body is cut or too long."""
    if truncated or not body or len(body) > BODY_MAX:
        return None
    try:
        doc = json.loads(body)
    except ValueError:  # a caller's malformed body: the replica answers its 400
        return None
    if not isinstance(doc, dict):
        return None
    sid, previous = doc.get("session_id"), doc.get("previous_response_id")
    if isinstance(sid, str):
        return sid
    if isinstance(previous, str):
        try:
            return parse_response_id(previous)[0]
        except InvalidRequestError:  # not one of ours: the replica answers its 400
            return None
    return None


class RoutePicker:
    def __init__(self, llm: DeploymentHandle, config: dict):
        self._keyed = AppConfig.model_validate(config).auth.keyed
        llm._init()  # before options(): Serve initialises a handle once
        self._llm = llm.options(method_name="chat_events")  # a turn: the router may claim an owner (router.TURN_METHODS)

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        app.add_api_route("/internal/route", self.route, methods=["POST"])
        return app

    async def route(self, request: Request) -> JSONResponse:
        sid = request.headers.get("x-session-id")
        if sid is None and not self._keyed:
            sid = body_session(await request.body(), "x-body-truncated" in request.headers)
        if sid is None or self._keyed or not is_session_id(sid, CLIENT_MAX):  # a bad id: the replica answers 400
            sid = None
        handle = self._llm if sid is None else self._llm.options(session_id=sid)
        try:
            async with handle.choose_replica(_reserve=False) as picked:
                replica = picked._replica  # Serve's RunningReplica (the same private field Ray Serve LLM's router reads)
                if replica.backend_http_endpoint is None:
                    return JSONResponse({"detail": f"replica {picked.replica_id} has no HTTP endpoint yet"}, status_code=503)
                host, port = replica.backend_http_endpoint
                answer = {"host": host, "port": port, "replica_id": replica.replica_id.to_full_id_str()}
                if sid is not None:
                    answer["request_headers"] = {ROUTED_HEADER: sid}
                return JSONResponse(answer)
        except Exception as exc:  # HAProxy turns any non-200 into a 503 for the client
            return JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=503)
