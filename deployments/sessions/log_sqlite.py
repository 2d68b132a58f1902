"""Session log in one SQLite file (WAL): the single-machine default.

One connection, used under a lock by whichever thread writes or reads (the
directory runs log calls in worker threads). A batch is one ``BEGIN IMMEDIATE``
... ``COMMIT``, so one fsync (``synchronous=FULL``) covers every turn in it;
each operation runs inside its own savepoint, so a refused one is rolled back
alone.

Erasure (DELETE /v1/sessions/{id}): ``secure_delete`` overwrites the freed
pages with zeros, and a batch that deleted something ends with a truncating WAL
checkpoint, so neither the database file nor its WAL keeps the old rows' bytes.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from deployments.config import SessionLogConfig
from deployments.sessions.session_log import (
    CommitOp,
    DeleteOp,
    LastTurn,
    LogConflictError,
    LogOp,
    ReleaseOp,
    SessionState,
    TurnEntry,
    default_sqlite_path,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    ns TEXT NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL, owner TEXT, digest TEXT,
    record TEXT NOT NULL, last_turn TEXT, created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (ns, session_id)
);
CREATE TABLE IF NOT EXISTS turns (
    ns TEXT NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL, turn_key TEXT, replica TEXT NOT NULL,
    finish_reason TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    committed_at REAL NOT NULL,
    PRIMARY KEY (ns, session_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS turns_by_key ON turns (ns, session_id, turn_key) WHERE turn_key IS NOT NULL;
"""
_TURN_COLUMNS = "session_id, seq, turn_key, replica, finish_reason, prompt_tokens, completion_tokens, committed_at"


class SqliteSessionLog:
    def __init__(self, config: SessionLogConfig, namespace: str):
        self.path = Path(config.path).expanduser() if config.path else default_sqlite_path(namespace)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ns = namespace
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={config.sqlite_synchronous.value}")
        self._db.execute("PRAGMA secure_delete=ON")  # a deleted conversation leaves no bytes in free pages
        self._db.executescript(SCHEMA)

    # ---- writes ----------------------------------------------------------------
    def write(self, ops: Sequence[LogOp]) -> list[Exception | None]:
        results: list[Exception | None] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    self._db.execute("SAVEPOINT op")
                    try:
                        self._apply(op)
                    except (LogConflictError, sqlite3.IntegrityError) as exc:
                        self._db.execute("ROLLBACK TO op")
                        results.append(exc if isinstance(exc, LogConflictError) else LogConflictError(str(exc)))
                    else:
                        results.append(None)
                    self._db.execute("RELEASE op")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if any(isinstance(op, DeleteOp) for op in ops):  # the WAL still holds the deleted rows' old pages
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return results

    @functools.singledispatchmethod
    def _apply(self, op: LogOp) -> None:
        raise TypeError(f"unknown log operation {type(op).__name__}")

    @_apply.register
    def _(self, op: CommitOp) -> None:
        st, t = op.state, op.turn
        row = self._db.execute("SELECT seq FROM sessions WHERE ns=? AND session_id=?", (self._ns, st.session_id)).fetchone()
        current = row[0] if row else 0
        if st.seq != current + 1 or t.seq != st.seq:
            raise LogConflictError(f"session {st.session_id!r}: turn {t.seq} after turn {current}")
        self._db.execute(
            f"INSERT INTO turns (ns, {_TURN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
            (self._ns, t.session_id, t.seq, t.turn_key, t.replica, t.finish_reason, t.prompt_tokens, t.completion_tokens, t.committed_at),
        )
        self._db.execute(
            "INSERT INTO sessions (ns, session_id, seq, owner, digest, record, last_turn, created, updated)"
            " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (ns, session_id) DO UPDATE SET seq=excluded.seq,"
            " owner=excluded.owner, digest=excluded.digest, record=excluded.record, last_turn=excluded.last_turn,"
            " updated=excluded.updated",
            (self._ns, st.session_id, st.seq, st.owner, st.digest, json.dumps(st.record),
             json.dumps(st.last_turn.to_dict()) if st.last_turn else None, st.created, st.updated),
        )

    @_apply.register
    def _(self, op: ReleaseOp) -> None:
        self._db.executemany(
            "UPDATE sessions SET owner=NULL, updated=? WHERE ns=? AND session_id=?",
            [(time.time(), self._ns, sid) for sid in op.session_ids],
        )

    @_apply.register
    def _(self, op: DeleteOp) -> None:
        self._db.execute("DELETE FROM turns WHERE ns=? AND session_id=?", (self._ns, op.session_id))
        self._db.execute("DELETE FROM sessions WHERE ns=? AND session_id=?", (self._ns, op.session_id))

    # ---- reads -----------------------------------------------------------------
    def load_all(self) -> Iterator[SessionState]:
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id, seq, record, owner, digest, last_turn, created, updated FROM sessions WHERE ns=?",
                (self._ns,),
            ).fetchall()
        for sid, seq, record, owner, digest, last, created, updated in rows:
            last_turn = LastTurn.from_dict(json.loads(last)) if last else None
            yield SessionState(sid, seq, json.loads(record), owner, digest, last_turn, created, updated)

    def turns(self, session_id: str, after_seq: int, limit: int) -> list[TurnEntry]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_TURN_COLUMNS} FROM turns WHERE ns=? AND session_id=? AND seq>? ORDER BY seq LIMIT ?",
                (self._ns, session_id, after_seq, limit),
            ).fetchall()
        return [TurnEntry(*row) for row in rows]

    def find_turn(self, session_id: str, turn_key: str) -> TurnEntry | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_TURN_COLUMNS} FROM turns WHERE ns=? AND session_id=? AND turn_key=?",
                (self._ns, session_id, turn_key),
            ).fetchone()
        return TurnEntry(*row) if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
