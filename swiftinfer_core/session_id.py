"""The one rule for a session id, and its one message.

A session id is 1..N characters of ``[A-Za-z0-9_.:-]``. A client sends up to
``CLIENT_MAX`` (128); engines take up to ``SCOPED_MAX`` (256), room for the
tenant prefix the serving layer puts in front (deployments/sessions/tenants.py).
The same alphabet serves ids that travel beside session ids in headers (the
Idempotency-Key), so they are checked here too, under their own name.
"""

from __future__ import annotations

import re

from swiftinfer_core.errors import InvalidRequestError

CLIENT_MAX = 128
SCOPED_MAX = 256
ALPHABET = "A-Za-z0-9_.:-"
PATTERN = rf"^[A-Za-z0-9_.:\-]{{1,{CLIENT_MAX}}}$"  # a client's id (JSON schema of the request bodies)
_CHARS = re.compile(r"[A-Za-z0-9_.:\-]+")


class InvalidSessionIdError(InvalidRequestError):
    """A session id (or a key of the same form) breaks the rule (HTTP 400)."""


def is_session_id(value: object, max_len: int = SCOPED_MAX) -> bool:
    return isinstance(value, str) and len(value) <= max_len and _CHARS.fullmatch(value) is not None


def check_session_id(value: object, name: str = "session_id", max_len: int = SCOPED_MAX) -> str:
    """``value`` when it is a session id of at most ``max_len`` characters, else
    InvalidSessionIdError saying ``<name> must be 1-<max_len> characters of [...]``."""
    if not is_session_id(value, max_len):
        raise InvalidSessionIdError(f"{name} must be 1-{max_len} characters of [{ALPHABET}]")
    return value
