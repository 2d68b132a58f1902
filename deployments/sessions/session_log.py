"""The session log: what the directory writes before a turn is acknowledged.

One row per session (its latest committed ``SessionRecord``, owner, history
digest and the last turn's reply for idempotent retries) and one small row per
committed turn, numbered ``seq = 1, 2, 3...`` per session. The log itself
refuses a turn whose ``seq`` is not the session's ``seq + 1`` or whose turn key
was already committed, so a turn can be in it at most once, and a reader can
check that it is in it at least once (no gap in ``seq``).

Two implementations behind one protocol, picked by ``LogBackend``
(log_backends.py): ``log_sqlite.SqliteSessionLog`` (one file, one machine) and
``log_redis.RedisSessionLog`` (a server every node reaches). Writes come in
batches (``log_writer.BatchWriter``): one transaction per batch, one result per
operation, so one refused operation never fails its neighbours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence, Union, runtime_checkable



class LogConflictError(Exception):
    """The log refused an operation: wrong sequence number or a turn key seen before."""


class LogUnavailableError(Exception):
    """The log could not be written (disk, Redis down): nothing was acknowledged (503)."""


@dataclass
class TurnEntry:
    """One committed turn (kept forever: ~100 bytes, the exactly-once audit trail)."""

    session_id: str
    seq: int
    turn_key: str | None  # the client's Idempotency-Key, if it sent one
    replica: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    committed_at: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TurnEntry":
        return cls(**d)


@dataclass
class LastTurn:
    """The latest turn of a session with its reply, so a retry of it is answered
    from the log instead of running (and logging) the turn twice."""

    entry: TurnEntry
    text: str
    usage: dict  # swiftinfer_core.protocol.Usage as a dict
    others: list[dict] = field(default_factory=list)  # messages.ChoiceReply as dicts: choices 1..n-1 of a turn with several

    def to_dict(self) -> dict:
        return {"entry": self.entry.to_dict(), "text": self.text, "usage": self.usage, "others": self.others}

    @classmethod
    def from_dict(cls, d: dict) -> "LastTurn":
        return cls(TurnEntry.from_dict(d["entry"]), d["text"], d["usage"], d.get("others", []))  # rows from before n > 1 have none


@dataclass
class SessionState:
    """A session's row: everything the directory needs after a restart."""

    session_id: str
    seq: int  # committed turns
    record: dict  # SessionRecord.to_dict() after turn ``seq``
    owner: str | None  # replica that committed it (None once handed back on drain)
    digest: str | None  # history digest (id-less clients)
    last_turn: LastTurn | None
    created: float
    updated: float


@dataclass
class CommitOp:
    """Append turn ``state.seq`` and make ``state`` the session's row."""

    state: SessionState
    turn: TurnEntry = field(repr=False)


@dataclass
class ReleaseOp:
    """A draining replica handed these sessions back: no owner."""

    session_ids: list[str]


@dataclass
class DeleteOp:
    """Forget a session and its turns (DELETE /v1/sessions/{id})."""

    session_id: str


LogOp = Union[CommitOp, ReleaseOp, DeleteOp]


@runtime_checkable
class SessionLog(Protocol):
    def write(self, ops: Sequence[LogOp]) -> list[Exception | None]:
        """Apply ``ops`` in order in one transaction; per op, None or the reason it
        was refused (``LogConflictError``). Raises when nothing could be written."""
        ...

    def load_all(self) -> Iterator[SessionState]:
        """Every session, for a directory starting (or restarting)."""
        ...

    def turns(self, session_id: str, after_seq: int, limit: int) -> list[TurnEntry]:
        """Committed turns with ``seq > after_seq``, in order."""
        ...

    def find_turn(self, session_id: str, turn_key: str) -> TurnEntry | None: ...

    def close(self) -> None: ...


def default_sqlite_path(namespace: str) -> Path:
    return Path.home() / ".local" / "share" / "swiftinfer" / f"{namespace}.sqlite3"
