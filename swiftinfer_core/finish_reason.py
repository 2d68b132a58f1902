"""Why a reply ended, as both engines report it on the last StreamChunk.

A ``StrEnum`` (vLLM's ``FinishReason`` is the model): inside the core the
reasons are members, not loose strings; JSON, the session log and the HTTP
edge still see the plain values ("stop", "length", "abort"), and a member
equals its string, so readers that compare strings are unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class FinishReason(StrEnum):
    STOP = "stop"  # an end token, a stop string, or the grammar's end
    LENGTH = "length"  # max_tokens (or the engine's own limit on the reply)
    ABORT = "abort"  # the turn was stopped before it ended: the client left, or the session closed
