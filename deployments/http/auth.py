"""The key check in front of the ingress's routes (pure ASGI middleware).

Which paths need a key:
- ``/v1`` and everything under it, ``/tokenize`` and ``/detokenize``: always, when the service has keys.
- ``/metrics``: when ``auth.metrics_require_key``.
- ``/healthz`` and ``/openapi.json``: never (probes; the schema is public);
  nor the playground's page and files (``playground.py``), whose data come
  from ``/v1`` routes.

A request carries its key as ``Authorization: Bearer <key>``. Missing, empty,
more than one Authorization header, another scheme, over ``MAX_KEY_CHARS``,
not ASCII, unknown or revoked: all get the same 401 (OpenAI's error JSON,
``WWW-Authenticate: Bearer``), before the body is read. On success the key's
tenant goes into the ASGI scope's state (``tenant_of(request)``); without keys
every request is the default tenant (None).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from deployments.http.api_keys import MAX_KEY_CHARS, KeyRing
from deployments.http.errors import AuthenticationError, error_response

_TENANT = "swiftinfer_tenant"
_UNAUTHORIZED = "a valid API key is required: send it as 'Authorization: Bearer <key>'"


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key of the single ``Authorization: Bearer`` header, or None when it is
    missing, repeated, of another scheme, too long or not printable ASCII."""
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if len(values) != 1 or len(values[0]) > MAX_KEY_CHARS + 16:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or not all(0x21 <= b <= 0x7E for b in token):
        return None
    return token.decode("ascii")


def route_path(scope) -> str:
    """The path below the application's route prefix (Serve passes ``/sec/v1/...``
    with ``root_path`` ``/sec``; Starlette routes on the rest)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


TEXT_ROUTES = ("/tokenize", "/detokenize")  # vLLM's names, outside /v1, keyed like it


def needs_key(path: str, metrics_keyed: bool) -> bool:
    return path == "/v1" or path.startswith("/v1/") or path in TEXT_ROUTES or (metrics_keyed and path == "/metrics")


class KeyCheck:
    """ASGI middleware: 401 for a keyed path without an active key, else the
    request goes on with its tenant in ``scope["state"]``."""

    def __init__(self, app, ring: KeyRing | None, metrics_keyed: bool):
        self.app = app
        self.ring = ring
        self.metrics_keyed = metrics_keyed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.ring is None:
            return await self.app(scope, receive, send)
        tenant = None
        if needs_key(route_path(scope), self.metrics_keyed):
            token = bearer_token(scope.get("headers") or [])
            tenant = self.ring.tenant_of(token) if token is not None else None
            if tenant is None:
                resp: JSONResponse = error_response(AuthenticationError(_UNAUTHORIZED), {"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, send)
        scope.setdefault("state", {})[_TENANT] = tenant
        return await self.app(scope, receive, send)


def tenant_of(request: Request) -> str | None:
    """The tenant the key check admitted this request as (None: no keys, the default tenant)."""
    return request.scope.get("state", {}).get(_TENANT)
