"""Messages between a replica process and its engine process (engine/process.py).

Two one-way pipes: commands go down (``StartTurn``, ``AbortTurn``, ``Call``),
``Ready`` once and then ``StepEvents`` and ``Reply`` come up. A step's chunks for
every turn travel as one ``StepEvents``: one pickle and one wake-up per step,
not one per token.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from enum import Enum

from swiftinfer_core.config import SamplingParams
from swiftinfer_core.errors import EngineClosedError
from swiftinfer_core.protocol import Absent, SessionRecord, StreamChunk


class EngineCall(Enum):
    """The engine methods a parent may call; the child maps each to the method."""

    STATS = "stats"
    VIEW = "view"
    SESSION_STATS = "session_stats"
    HAS_SESSION = "has_session"
    CLOSE_SESSION = "close_session"
    SESSION_IDS = "session_ids"
    SLOTLESS_IDS = "slotless_ids"
    EXPORT_SESSION = "export_session"
    IMPORT_SESSION = "import_session"
    EXPORT_KV = "export_kv"
    IMPORT_KV = "import_kv"
    CHECK_HEALTH = "check_health"
    HANDOFF = "handoff"  # the child's side of engine/handoff.py, answered by its reader (no step boundary)
    INJECT_FAULT = "inject_fault"  # test-only (engine/faults.py); the parent gates it


@dataclass(frozen=True)
class StartTurn:
    turn_id: int
    session_id: str
    messages: list[dict]
    params: SamplingParams
    expect: SessionRecord | Absent | None = None  # EngineCore.add_turn's warm- or new-start condition
    sent_at: float = 0.0  # the parent's time.monotonic() as it sends it (engine/handoff.py)


@dataclass(frozen=True)
class AbortTurn:
    turn_id: int  # unknown or finished ids are ignored


@dataclass(frozen=True)
class Call:
    call_id: int
    method: EngineCall
    args: tuple


@dataclass(frozen=True)
class Reply:
    call_id: int
    value: object = None
    error: BaseException | None = None


@dataclass(frozen=True)
class StepEvents:
    items: list[tuple[int, StreamChunk | BaseException]]  # (turn id, chunk or the error that ends it)
    sent_at: float = 0.0  # the child's time.monotonic() as it sends them (engine/handoff.py)


@dataclass(frozen=True)
class Ready:
    pid: int
    error: BaseException | None = None  # the engine could not start


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else an EngineClosedError naming it
    (device errors carry objects that do not unpickle)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return EngineClosedError(f"{type(exc).__name__}: {exc}")
