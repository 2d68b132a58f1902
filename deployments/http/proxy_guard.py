"""A guard in front of Ray Serve's HTTP proxy for header values it cannot decode.

Ray Serve 2.60's proxy decodes a few request header values as UTF-8 before any
application code runs: the session id header (``x-session-id``, also spelled
``x_session_id``), ``serve_multiplexed_model_id`` and ``x-request-id`` (and
``traceparent`` with tracing on). HTTP allows any octet >= 0x80 in a header
value, so a client sending e.g. ``x-session-id: \\x80`` gets a 500 from the
proxy itself (found by tests/deployments/http/test_fuzz.py). This ASGI middleware
answers such a request with an OpenAI-style 400 before the proxy sees it.

Install it in every proxy through Ray's hook (an environment variable of the
Ray cluster, read by the proxy processes):

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.http.proxy_guard:proxy_middlewares
"""

from __future__ import annotations

import json

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

try:  # the names Ray decodes; fall back to its defaults if its private module moves
    from ray.serve._private.constants import SERVE_HTTP_REQUEST_ID_HEADER, SERVE_MULTIPLEXED_MODEL_ID, SERVE_SESSION_ID
except ImportError:  # pragma: no cover
    SERVE_HTTP_REQUEST_ID_HEADER, SERVE_MULTIPLEXED_MODEL_ID, SERVE_SESSION_ID = "x-request-id", "serve_multiplexed_model_id", "x-session-id"


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


DECODED_HEADERS = frozenset(_norm(h) for h in (SERVE_SESSION_ID, SERVE_MULTIPLEXED_MODEL_ID, SERVE_HTTP_REQUEST_ID_HEADER, "traceparent"))


def undecodable_header(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The first header the proxy decodes whose value is not UTF-8, else None."""
    for key, value in headers:
        name = _norm(key.decode("latin-1"))
        if name in DECODED_HEADERS:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return key.decode("latin-1")
    return None


class HeaderGuard:
    """Pure ASGI middleware (streaming responses pass through untouched)."""

    def __init__(self, app: ASGIApp):
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bad = undecodable_header(scope.get("headers", [])) if scope["type"] == "http" else None
        if bad is None:
            await self._app(scope, receive, send)
            return
        body = json.dumps({"error": {"message": f"header {bad!r} must be valid UTF-8", "type": "invalid_request_error",
                                     "param": None, "code": "invalid_header"}}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list[Middleware]:
    """The callback ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` points at."""
    return [Middleware(HeaderGuard)]
