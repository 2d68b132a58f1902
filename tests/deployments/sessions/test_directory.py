"""The session directory as a real Ray actor over both log backends (SQLite
file, real redis-server): a restarted directory reloads every committed turn,
leases keep a session's turns from interleaving across replicas, the last turn
is replayed instead of run twice, and a drain's KV is handed over once."""

from __future__ import annotations

import time
import uuid

import pytest
import ray

from deployments.messages import TurnGrant, TurnReplay
from deployments.sessions.directory import directory_handle
from message_factories import committed_turn, replica_stats, session_record
from swiftinfer_core.errors import SessionBusyError

STALE_S = 1.0


@pytest.fixture(params=["sqlite", "redis"])
def directory(request, cluster, tmp_path):
    if request.param == "redis":
        log = {"backend": "redis", "redis_url": request.getfixturevalue("redis_url")}
    else:
        log = {"backend": "sqlite", "path": str(tmp_path / "dir.sqlite3")}
    spec = {"name": f"dir-{request.param}-{uuid.uuid4().hex[:6]}", "log": log, "lease_stale_s": STALE_S, "lease_timeout_s": 30.0}
    handle = directory_handle(spec)
    yield handle
    ray.kill(handle, no_restart=True)


def _restart(d) -> None:
    """Kill the actor; Ray restarts it (its __init__ reads the log). Calls racing
    the restart fail with ActorUnavailableError, as any caller's would."""
    old = ray.get(d.log_stats.remote())["pid"]
    ray.kill(d, no_restart=False)
    deadline = time.time() + 60
    while True:
        try:
            if ray.get(d.log_stats.remote())["pid"] != old:
                return
        except ray.exceptions.RayActorError:
            if time.time() > deadline:
                raise
        time.sleep(0.2)


_turn = committed_turn


def _commit(d, sid: str, rid: str, key: str | None, digest: str | None = None) -> bool:
    grant = ray.get(d.begin_turn.remote(sid, rid, key))
    record = session_record(sid, grant.seq + 1, (1, 2, 3))
    return ray.get(d.commit.remote(sid, rid, grant.seq, record, digest, _turn(key, f"reply {key}")))


def test_a_restarted_directory_reloads_every_committed_turn(directory):
    d = directory
    assert ray.get(d.place.remote("s", {"r1": 4}, [], False, True)) == "r1"
    assert _commit(d, "s", "r1", "k1") and _commit(d, "s", "r1", "k2", digest="dg2")
    _restart(d)
    info = ray.get(d.describe.remote("s"))
    assert (info.seq, info.owner, info.record.rounds) == (2, "r1", 2), info
    assert ray.get(d.log_stats.remote())["loaded_at_start"] == 1
    assert [t.turn_key for t in ray.get(d.turns.remote("s", 0, 10))] == ["k1", "k2"]
    assert ray.get(d.resolve_history.remote("opening", "dg2")) == ("s", True)  # id-less clients find it again
    # A retry of the last turn, even on another replica, is answered from the log, not run again.
    replay = ray.get(d.begin_turn.remote("s", "r2", "k2"))
    assert isinstance(replay, TurnReplay) and replay.seq == 2 and replay.text == "reply k2"
    assert ray.get(d.describe.remote("s")).owner == "r1"


def test_a_lease_keeps_turns_of_one_session_from_interleaving(directory):
    d = directory
    ray.get(d.report.remote("r1", replica_stats("r1")))
    grant = ray.get(d.begin_turn.remote("s", "r1", None))
    with pytest.raises(SessionBusyError):
        ray.get(d.begin_turn.remote("s", "r2", None))
    record = session_record("s", 1)
    assert not ray.get(d.commit.remote("s", "r2", 0, record, None, _turn(None)))  # not its lease
    time.sleep(STALE_S + 0.5)  # r1 went quiet (no stats report): its lease is void
    stolen = ray.get(d.begin_turn.remote("s", "r2", None))
    assert stolen.seq == grant.seq == 0
    assert not ray.get(d.commit.remote("s", "r1", 0, record, None, _turn(None)))  # r1's late commit is refused
    assert ray.get(d.commit.remote("s", "r2", 0, record, None, _turn(None)))
    assert ray.get(d.commit.remote("s", "r2", 0, record, None, _turn(None)))  # the same commit again: acknowledged ...
    assert len(ray.get(d.turns.remote("s", 0, 10))) == 1  # ... not logged twice
    assert ray.get(d.begin_turn.remote("s", "r1", None)).seq == 1  # the lease ended with the commit


def test_uncommitted_first_turns_are_forgotten_and_deletes_reach_the_log(directory):
    d = directory
    ray.get(d.begin_turn.remote("gone", "r1", None))
    ray.get(d.end_turn.remote("gone", "r1"))
    assert ray.get(d.describe.remote("gone")) is None
    assert _commit(d, "del", "r1", "x") and ray.get(d.delete.remote("del"))
    _restart(d)
    assert ray.get(d.describe.remote("del")) is None and ray.get(d.turns.remote("del", 0, 10)) == []
    assert _commit(d, "del", "r1", "x")  # the id starts over at turn 1


def test_a_drained_owner_hands_its_kv_over_once(directory):
    d = directory
    assert _commit(d, "m", "r1", "k1")
    assert not ray.get(d.hold_kv.remote("m", "r1", 0, [ray.put(b"stale")]))  # not the committed turn
    assert not ray.get(d.hold_kv.remote("m", "r9", 1, [ray.put(b"not the owner")]))
    assert ray.get(d.hold_kv.remote("m", "r1", 1, [ray.put(b"kv-bytes")]))
    assert ray.get(d.release.remote("r1")) == 1
    grant = ray.get(d.begin_turn.remote("m", "r2", None))
    assert isinstance(grant, TurnGrant) and grant.seq == 1 and ray.get(grant.kv) == b"kv-bytes"
    ray.get(d.end_turn.remote("m", "r2"))
    assert ray.get(d.begin_turn.remote("m", "r2", None)).kv is None
    info = ray.get(d.describe.remote("m"))
    assert info.owner == "r2" and info.moves == 1


def test_sessions_given_back_without_a_slot_are_placed_by_load_and_stay_given_back_across_a_restart(directory):
    d = directory
    for sid in ("a", "b", "c"):
        assert ray.get(d.place.remote(sid, {"r1": 2}, [], False, True)) == "r1"
        assert _commit(d, sid, "r1", f"k-{sid}")
    ray.get(d.begin_turn.remote("c", "r1", None))  # c has a turn in flight: kept
    assert ray.get(d.place.remote("x", {"r2": 2}, [], False, True)) == "r2"  # x is r2's: kept
    assert ray.get(d.disown.remote("r1", ["a", "b", "c", "x", "nope"])) == []  # no other replica has a free slot
    ray.get(d.report.remote("r2", replica_stats("r2", free_slots=1)))
    ray.get(d.report.remote("r3", replica_stats("r3", free_slots=5, draining=True)))
    assert ray.get(d.disown.remote("r1", ["a", "b", "c", "x", "nope"])) == ["a"]  # r2's one free slot
    ray.get(d.report.remote("r2", replica_stats("r2", free_slots=3)))
    assert ray.get(d.disown.remote("r1", ["a", "b", "c", "x", "nope"])) == ["b"]
    assert ray.get(d.owners.remote()) == {"r1": 1, "r2": 1}
    assert ray.get(d.describe.remote("a")).moves == 1  # in memory only: a restart counts from 0
    _restart(d)
    assert ray.get(d.describe.remote("a")).owner is None and ray.get(d.describe.remote("c")).owner == "r1"
    # the next placement is by load: r2 (1 of 4 slots) beats r1 (1 of 2)
    assert ray.get(d.place.remote("a", {"r1": 2, "r2": 4}, [], False, True)) == "r2"
    info = ray.get(d.describe.remote("a"))
    assert (info.owner, info.seq) == ("r2", 1)


def test_a_log_outage_refuses_the_turn_with_503_and_loses_nothing(cluster, tmp_path):
    from deployments.http.errors import classify
    from deployments.sessions.session_log import LogUnavailableError
    from redis_server import RedisServer

    server = RedisServer.start(tmp_path)
    spec = {"name": f"dir-outage-{uuid.uuid4().hex[:6]}", "log": {"backend": "redis", "redis_url": server.url},
            "lease_stale_s": STALE_S, "lease_timeout_s": 30.0}
    d = directory_handle(spec)
    try:
        assert _commit(d, "o", "r1", "k1")
        server.stop()
        with pytest.raises(LogUnavailableError) as err:
            _commit(d, "o", "r1", "k2")
        assert classify(err.value).status == 503
        assert ray.get(d.describe.remote("o")).seq == 1  # not acknowledged, not applied
        server = RedisServer.start(tmp_path, port=server.port)  # same data directory: the AOF comes back
        assert _commit(d, "o", "r1", "k2")  # the lease was freed; the retry goes through
        _restart(d)
        assert [t.turn_key for t in ray.get(d.turns.remote("o", 0, 10))] == ["k1", "k2"]
    finally:
        ray.kill(d, no_restart=True)
        server.stop()


def test_a_turn_in_flight_across_a_directory_restart_still_commits_once(directory):
    """The restarted directory reloads the owners of the last commits but no leases: a
    turn that was running commits (no retry needed), also on a replica that is not the
    owner on record; the same commit sent again (its reply lost to a restart) is
    acknowledged without a second log entry, while another turn's commit at that seq,
    or one after another replica began a turn, is refused."""
    d = directory
    assert _commit(d, "s", "r1", "k1")
    grant = ray.get(d.begin_turn.remote("s", "r1", "k2"))  # turn 2 runs on r1 ...
    _restart(d)  # ... while the directory restarts
    record = session_record("s", grant.seq + 1, (1, 2, 3))
    assert ray.get(d.commit.remote("s", "r1", grant.seq, record, None, _turn("k2", "reply k2")))
    _restart(d)  # the reply to that commit lost: the replica sends it again to the restarted directory
    assert ray.get(d.commit.remote("s", "r1", grant.seq, record, None, _turn("k2", "reply k2")))  # acknowledged
    assert not ray.get(d.commit.remote("s", "r2", grant.seq, record, None, _turn("k2", "reply k2")))  # not r2's
    assert not ray.get(d.commit.remote("s", "r1", grant.seq, record, None, _turn("k9", "other")))  # not this turn
    assert [t.turn_key for t in ray.get(d.turns.remote("s", 0, 10))] == ["k1", "k2"]  # logged once

    grant3 = ray.get(d.begin_turn.remote("s", "r3", "k3"))  # turn 3 moved to r3 (owner on record: r1) ...
    _restart(d)  # ... and the directory restarts before it commits
    assert ray.get(d.describe.remote("s")).owner == "r1"
    record3 = session_record("s", grant3.seq + 1, (1, 2, 3))
    assert ray.get(d.commit.remote("s", "r3", grant3.seq, record3, None, _turn("k3", "reply k3")))
    assert ray.get(d.describe.remote("s")).owner == "r3"

    grant4 = ray.get(d.begin_turn.remote("s", "r3", "k4"))  # turn 4 on r3; the directory restarts;
    _restart(d)
    ray.get(d.begin_turn.remote("s", "r2", "k4"))  # the client's retry begins on r2 first
    late = session_record("s", grant4.seq + 1, (1, 2, 3))
    assert not ray.get(d.commit.remote("s", "r3", grant4.seq, late, None, _turn("k4")))  # r2 holds the lease
    assert ray.get(d.describe.remote("s")).owner == "r2"
