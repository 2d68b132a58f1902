"""Errors -> OpenAI-style error responses.

One ordered table maps exception classes (engine errors, Serve errors, ours) to
an HTTP status and OpenAI ``type``/``code``. Exceptions raised in a replica
reach the ingress wrapped in ``RayTaskError``; ``unwrap`` gives back the cause,
so the mapping is by class, never by message text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.requests import ClientDisconnect

from deployments.sessions.session_log import LogUnavailableError

from swiftinfer_core.errors import (
    CapacityError,
    EngineClosedError,
    InvalidRequestError,
    PromptTooLongError,
    SessionBusyError,
    SessionNotFoundError,
)


class ModelNotFoundError(Exception):
    """The request names a model this service does not serve (404)."""


class ServiceStartingError(Exception):
    """No LLM replica is up yet (503)."""


class TurnNotCommittedError(Exception):
    """The session changed hands or was deleted while a turn ran; the turn was
    rolled back and is not in the log (409: retry it)."""


class PreviousResponseNotFoundError(SessionNotFoundError):
    """``previous_response_id`` names a conversation this server does not hold (404)."""


class StaleResponseError(Exception):
    """``previous_response_id`` is not its conversation's latest response: a branch the
    server's one linear cache per conversation cannot take (409)."""


class BodyTooLargeError(Exception):
    """The request body exceeds ``limits.max_body_bytes`` (413)."""


class BodyTimeoutError(Exception):
    """The request body did not arrive within ``limits.body_timeout_s`` (408)."""


class TurnTimeoutError(Exception):
    """The turn ran past ``limits.request_timeout_s``; it was rolled back (504)."""


class AuthenticationError(Exception):
    """No API key, or not an active one (401). One message for wrong, unknown and
    revoked keys: the answer says nothing about which keys exist."""


class TenantLimitError(Exception):
    """The tenant is past its concurrency or rate limit (429); ``retry_after_s``
    says when the bucket holds enough again."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str
    code: str | None
    retry_after_s: int | None = None


# Most specific first: PromptTooLongError is an InvalidRequestError.
ERROR_TABLE: tuple[tuple[type[BaseException], ErrorKind], ...] = (
    (PromptTooLongError, ErrorKind(413, "invalid_request_error", "context_length_exceeded")),
    (BodyTooLargeError, ErrorKind(413, "invalid_request_error", "request_too_large")),
    (BodyTimeoutError, ErrorKind(408, "invalid_request_error", "request_timeout")),
    (ClientDisconnect, ErrorKind(400, "invalid_request_error", "client_disconnected")),  # nobody reads it; counted as 4xx
    (InvalidRequestError, ErrorKind(400, "invalid_request_error", None)),
    (ModelNotFoundError, ErrorKind(404, "invalid_request_error", "model_not_found")),
    (PreviousResponseNotFoundError, ErrorKind(404, "invalid_request_error", "previous_response_not_found")),
    (SessionNotFoundError, ErrorKind(404, "invalid_request_error", "session_not_found")),
    (StaleResponseError, ErrorKind(409, "invalid_request_error", "previous_response_not_latest")),
    (SessionBusyError, ErrorKind(409, "invalid_request_error", "session_busy")),
    (TurnNotCommittedError, ErrorKind(409, "invalid_request_error", "turn_not_committed")),
    (AuthenticationError, ErrorKind(401, "invalid_request_error", "invalid_api_key")),
    (TenantLimitError, ErrorKind(429, "rate_limit_error", "rate_limit_exceeded", retry_after_s=1)),
    (CapacityError, ErrorKind(429, "rate_limit_error", "no_capacity", retry_after_s=1)),
    (BackPressureError, ErrorKind(429, "rate_limit_error", "queue_full", retry_after_s=1)),
    (ServiceStartingError, ErrorKind(503, "service_unavailable", "starting", retry_after_s=5)),
    (TurnTimeoutError, ErrorKind(504, "timeout", "turn_timeout")),
    (LogUnavailableError, ErrorKind(503, "service_unavailable", "session_log_unavailable", retry_after_s=1)),
    (EngineClosedError, ErrorKind(503, "service_unavailable", "engine_unavailable", retry_after_s=1)),
    (DeploymentUnavailableError, ErrorKind(503, "service_unavailable", "deployment_unavailable", retry_after_s=5)),
    (ReplicaUnavailableError, ErrorKind(503, "service_unavailable", "replica_unavailable", retry_after_s=1)),
    (RayActorError, ErrorKind(503, "service_unavailable", "replica_failed", retry_after_s=1)),
)
INTERNAL = ErrorKind(500, "server_error", "internal_error")


def unwrap(exc: BaseException) -> BaseException:
    """The replica-side exception inside a Ray task error."""
    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def classify(exc: BaseException) -> ErrorKind:
    exc = unwrap(exc)
    for cls, kind in ERROR_TABLE:
        if isinstance(exc, cls):
            return kind
    return INTERNAL


def message_of(exc: BaseException) -> str:
    exc = unwrap(exc)
    return str(exc) or type(exc).__name__


def error_body(exc: BaseException) -> tuple[ErrorKind, dict]:
    kind = classify(exc)
    msg = message_of(exc) if kind is not INTERNAL else f"internal error ({type(unwrap(exc)).__name__})"
    return kind, {"error": {"message": msg, "type": kind.type, "param": None, "code": kind.code}}


def error_response(exc: BaseException, headers: dict[str, str] | None = None) -> JSONResponse:
    kind, body = error_body(exc)
    h = dict(headers or {})
    if kind.retry_after_s is not None:  # an exception may know better (a token bucket's refill time)
        known = getattr(unwrap(exc), "retry_after_s", None)  # None where it has no opinion (Serve's BackPressureError)
        h["Retry-After"] = str(max(kind.retry_after_s, math.ceil(known or 0)))
    return JSONResponse(body, status_code=kind.status, headers=h)
