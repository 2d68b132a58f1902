"""Both session log backends, on a real SQLite file and a real redis-server:
exactly-once turn numbering, per-operation refusal inside a batch, reload,
release, delete, paging, namespaces."""

from __future__ import annotations

import time
import uuid

import pytest

from deployments.config import LogBackend, SessionLogConfig
from deployments.sessions.session_log import (
    CommitOp,
    DeleteOp,
    LastTurn,
    LogConflictError,
    ReleaseOp,
    SessionLog,
    SessionState,
    TurnEntry,
)
from deployments.sessions.log_backends import open_log


@pytest.fixture(params=[LogBackend.SQLITE, LogBackend.REDIS], ids=lambda b: b.value)
def make_log(request, tmp_path):
    """``make(namespace) -> SessionLog`` on one backend; every call reopens the same store."""
    if request.param is LogBackend.REDIS:
        cfg = SessionLogConfig(backend=LogBackend.REDIS, redis_url=request.getfixturevalue("redis_url"))
    else:
        cfg = SessionLogConfig(backend=LogBackend.SQLITE, path=str(tmp_path / "log.sqlite3"))
    suffix = uuid.uuid4().hex[:8]  # one redis-server serves every test: keep them apart
    opened: list[SessionLog] = []

    def make(namespace: str = "ns") -> SessionLog:
        opened.append(open_log(cfg, f"{namespace}-{suffix}"))
        return opened[-1]

    yield make
    for log in opened:
        log.close()


def commit(sid: str, seq: int, key: str | None = None, owner: str | None = "r1", text: str = "reply") -> CommitOp:
    now = time.time()
    entry = TurnEntry(sid, seq, key, owner or "r1", "stop", 10 + seq, 5, now)
    record = {"session_id": sid, "rounds": seq, "window_ids": list(range(seq * 3))}
    state = SessionState(sid, seq, record, owner, f"d{seq}", LastTurn(entry, text, {"completion_tokens": 5}), now, now)
    return CommitOp(state, entry)


def test_turns_are_numbered_without_gaps_or_repeats(make_log):
    log = make_log()
    assert log.write([commit("a", 1, "k1"), commit("a", 2, "k2"), commit("b", 1)]) == [None, None, None]
    results = log.write([
        commit("a", 2, "k2-again"),  # seq already taken
        commit("a", 4, "k4"),  # gap
        commit("a", 3, "k1"),  # key already committed
        commit("a", 3, "k3"),  # fine: refusals above did not poison the batch
    ])
    assert [type(r) for r in results] == [LogConflictError, LogConflictError, LogConflictError, type(None)]
    assert [(t.seq, t.turn_key) for t in log.turns("a", 0, 100)] == [(1, "k1"), (2, "k2"), (3, "k3")]
    assert [t.seq for t in log.turns("a", 1, 1)] == [2]
    assert log.find_turn("a", "k2").seq == 2 and log.find_turn("a", "nope") is None


def test_a_reopened_log_gives_back_every_session(make_log):
    log = make_log()
    log.write([commit("x", 1, "x1"), commit("x", 2, "x2", text="second"), commit("y", 1, owner=None)])
    states = {s.session_id: s for s in make_log().load_all()}
    assert set(states) == {"x", "y"}
    x = states["x"]
    assert (x.seq, x.owner, x.digest, x.record["rounds"], x.record["window_ids"]) == (2, "r1", "d2", 2, list(range(6)))
    assert x.last_turn.text == "second" and x.last_turn.entry.turn_key == "x2" and x.last_turn.usage == {"completion_tokens": 5}
    assert states["y"].owner is None


def test_release_and_delete(make_log):
    log = make_log()
    log.write([commit("p", 1), commit("q", 1), commit("q", 2)])
    assert log.write([ReleaseOp(["p", "never-seen"]), DeleteOp("q")]) == [None, None]
    states = {s.session_id: s for s in log.load_all()}
    assert set(states) == {"p"} and states["p"].owner is None
    assert log.turns("q", 0, 10) == []
    assert log.write([commit("q", 1)]) == [None]  # a deleted id starts over at turn 1


def test_namespaces_do_not_see_each_other(make_log):
    a, b = make_log("app-a"), make_log("app-b")
    a.write([commit("s", 1)])
    assert [s.session_id for s in a.load_all()] == ["s"] and list(b.load_all()) == []
    assert b.write([commit("s", 1)]) == [None]
