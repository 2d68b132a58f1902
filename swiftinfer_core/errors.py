"""The engine's own errors. All caller mistakes are ``InvalidRequestError``
(a ``ValueError``), so the service maps them to 4xx without string matching."""

from __future__ import annotations


class SwiftInferError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidRequestError(SwiftInferError, ValueError):
    """The caller's input is wrong (HTTP 400)."""


class PromptTooLongError(InvalidRequestError):
    """A single turn is longer than the engine takes in one call (HTTP 413)."""


class SessionNotFoundError(SwiftInferError, KeyError):
    """No such session on this engine (HTTP 404)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "session not found"


class SessionBusyError(SwiftInferError):
    """The session already has a turn in flight (HTTP 409)."""


class CapacityError(SwiftInferError):
    """No room for another session or request right now (HTTP 429)."""


class StaleSessionError(SwiftInferError):
    """A turn asked to start only on an exact, resident copy of its session found
    another (or none): the caller brings the copy up to date and starts it again."""


class EngineClosedError(SwiftInferError):
    """The engine is shutting down or failed (HTTP 503)."""
