"""Request limits applied by the ingress before and while a turn runs.

- ``read_body``: the body, capped at ``max_bytes`` (a ``Content-Length`` above it
  is refused before one byte is read; a chunked body is cut off at the cap) and
  received within ``timeout_s`` (a client dribbling bytes, slow-loris style,
  gets 408 instead of holding an ingress request forever). Nothing reaches
  the JSON parser, let alone an engine, before the whole body passed both.
- ``Deadline``: the replica's event stream, failing with ``TurnTimeoutError``
  once the turn's time is up (the caller then cancels the turn, which rolls it
  back on the replica).
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from fastapi import Request

from deployments.http.errors import BodyTimeoutError, BodyTooLargeError, TurnTimeoutError
from swiftinfer_core.errors import InvalidRequestError


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError("Content-Length must be a non-negative integer")
        if int(declared) > max_bytes:
            raise BodyTooLargeError(f"the request body is {int(declared)} bytes; the limit is {max_bytes}")
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for part in request.stream():
                size += len(part)
                if size > max_bytes:
                    raise BodyTooLargeError(f"the request body exceeds the limit of {max_bytes} bytes")
                parts.append(part)
    except TimeoutError:
        raise BodyTimeoutError(f"the request body did not arrive within {timeout_s:g} s") from None
    return b"".join(parts)


class Deadline:
    """Async iterator over ``events`` that raises ``TurnTimeoutError`` at ``deadline``
    (``time.monotonic()`` seconds)."""

    def __init__(self, events: AsyncIterator, deadline: float, timeout_s: float):
        self._events = events
        self._deadline = deadline
        self._timeout_s = timeout_s

    def __aiter__(self) -> "Deadline":
        return self

    async def __anext__(self):
        remaining = self._deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                return await self._events.__anext__()
        except TimeoutError:
            raise TurnTimeoutError(f"the turn did not finish within {self._timeout_s:g} s; it was rolled back") from None
