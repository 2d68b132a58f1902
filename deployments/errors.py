"""Errors -> OpenAI-style error responses.

One ordered table maps exception classes (engine errors, Serve errors, ours) to
an HTTP status and OpenAI ``type``/``code``. Exceptions raised in a replica
reach the ingress wrapped in ``RayTaskError``; ``unwrap`` gives back the cause,
so the mapping is by class, never by message text.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.requests import ClientDisconnect

from deployments.session_log import LogUnavailableError

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


class BodyTooLargeError(Exception):
    """The request body exceeds ``limits.max_body_bytes`` (413)."""


class BodyTimeoutError(Exception):
    """The request body did not arrive within ``limits.body_timeout_s`` (408)."""


class TurnTimeoutError(Exception):
    """The turn ran past ``limits.request_timeout_s``; it was rolled back (504)."""


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
    (SessionNotFoundError, ErrorKind(404, "invalid_request_error", "session_not_found")),
    (SessionBusyError, ErrorKind(409, "invalid_request_error", "session_busy")),
    (TurnNotCommittedError, ErrorKind(409, "invalid_request_error", "turn_not_committed")),
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
    if kind.retry_after_s is not None:
        h["Retry-After"] = str(kind.retry_after_s)
    return JSONResponse(body, status_code=kind.status, headers=h)
