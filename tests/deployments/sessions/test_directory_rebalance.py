"""Rebalancing at the session directory, a real Ray actor over a SQLite log
(deployments/sessions/hand_backs.py): the quota from real reports, the pick, the
hand-back only of sessions whose KV is held at their committed turn, the races
with turns that begin meanwhile, the old owner's copy kept until the session is
owned elsewhere, the KV handed over once, and the events saying why."""

from __future__ import annotations

import time
import uuid

import pytest
import ray

from deployments.messages import TurnGrant
from deployments.sessions.directory import directory_handle
from message_factories import committed_turn, replica_stats, session_record


def _directory(tmp_path, **rebalance):
    spec = {"name": f"dir-rb-{uuid.uuid4().hex[:6]}", "log": {"backend": "sqlite", "path": str(tmp_path / "dir.sqlite3")},
            "lease_stale_s": 30.0, "lease_timeout_s": 30.0, "rebalance": rebalance}
    return directory_handle(spec)


@pytest.fixture
def directory(cluster, tmp_path):
    d = _directory(tmp_path, max_sessions_per_period=3)
    yield d
    ray.kill(d, no_restart=True)


def _commit(d, sid: str, rid: str) -> int:
    grant = ray.get(d.begin_turn.remote(sid, rid, None))
    assert ray.get(d.commit.remote(sid, rid, grant.seq, session_record(sid, grant.seq + 1, (1, 2)), None, committed_turn()))
    return grant.seq + 1


def _place_on(d, rid: str, sids: list[str]) -> None:
    for sid in sids:
        assert ray.get(d.place.remote(sid, {rid: 8}, [], False, True)) == rid
        assert _commit(d, sid, rid) == 1


def _events(d, kind: str) -> list[dict]:
    return [e for e in ray.get(d.cluster.remote(60.0))["events"] if e["kind"] == kind]


def test_sessions_above_the_fair_share_move_with_their_kv_and_turns_beginning_meanwhile_keep_theirs(directory):
    d = directory
    sids = [f"s{i}" for i in range(10)]
    _place_on(d, "A", sids)
    ray.get(d.report.remote("A", replica_stats("A", free_slots=0)))
    ray.get(d.report.remote("B", replica_stats("B")))  # joins: 8 free slots, owns nothing
    # 10 sessions over 8 + 8 slots: fair 5 each; A is 5 over, bounded to 3 per period
    assert ray.get(d.rebalance_quota.remote("A")) == 3 and ray.get(d.rebalance_quota.remote("B")) == 0
    ray.get(d.begin_turn.remote("s0", "A", None))  # s0 has a turn in flight: never picked
    picked = ray.get(d.rebalance_pick.remote("A", sids + ["nope"]))
    assert picked == ["s1", "s2", "s3"]
    assert not ray.get(d.hold_kv.remote("s0", "A", 1, [ray.put(b"busy")]))  # leased: no KV taken
    assert ray.get(d.hold_kv.remote("s1", "A", 1, [ray.put(b"kv-1")]))
    assert ray.get(d.hold_kv.remote("s2", "A", 1, [ray.put(b"kv-2")]))
    # s3's KV did not fit the byte budget: not held. s2's turn begins after hold_kv: it takes the KV.
    assert isinstance(ray.get(d.begin_turn.remote("s2", "A", None)), TurnGrant)
    ray.get(d.end_turn.remote("s2", "A"))
    assert ray.get(d.give_back.remote("A", picked)) == ["s1"]
    assert ray.get(d.owners.remote()) == {"A": 9}
    assert ray.get(d.describe.remote("s1")).owner is None
    assert ray.get(d.unowned.remote("A", ["s1"])) == []  # A keeps its copy while s1 is in transit
    # but a drain of A would not snapshot s1 again (its KV is already held)
    assert ray.get(d.owned.remote("A", ["s0", "s1", "s2", "nope"])) == ["s0", "s2"]
    # s1 in transit counts: total 10, fair 5, A 4 over, B's room 5 - 1
    assert ray.get(d.rebalance_quota.remote("A")) == 3
    (ev,) = _events(d, "sessions_handed_back")
    assert (ev["replica"], ev["sessions"], ev["reason"]) == ("A", 1, "rebalance")

    assert ray.get(d.place.remote("s1", {"A": 8, "B": 8}, [], False, True)) == "B"  # by load
    assert ray.get(d.unowned.remote("A", ["s1"])) == ["s1"]  # now A drops its copy
    grant = ray.get(d.begin_turn.remote("s1", "B", None))
    assert grant.seq == 1 and ray.get(grant.kv) == b"kv-1"
    info = ray.get(d.describe.remote("s1"))
    assert (info.owner, info.moves) == ("B", 1)
    (moved,) = _events(d, "moved")
    assert (moved["session"], moved["src"], moved["dst"], moved["reason"]) == ("s1", "A", "B", "rebalance")
    # placed: no longer in transit (total 10, fair 5, A 4 over, B owns 1: room 4)
    assert ray.get(d.rebalance_quota.remote("A")) == 3


def test_a_turn_sent_back_to_the_old_owner_runs_there_and_the_held_kv_is_never_used_later(directory):
    d = directory
    _place_on(d, "A", ["x"])
    assert ray.get(d.hold_kv.remote("x", "A", 1, [ray.put(b"kv-at-1")]))
    assert ray.get(d.give_back.remote("A", ["x"])) == ["x"]  # no pick needed to give back
    assert ray.get(d.give_back.remote("A", ["x"])) == []  # not A's any more
    # a router remembering A sends the next turn there: A owns it again (no move) and commits turn 2
    assert _commit(d, "x", "A") == 2
    info = ray.get(d.describe.remote("x"))
    assert (info.owner, info.moves) == ("A", 0) and _events(d, "moved") == []
    # the KV held at turn 1 is gone: a later turn elsewhere rebuilds, it never imports it stale
    assert ray.get(d.begin_turn.remote("x", "B", None)).kv is None
    ray.get(d.end_turn.remote("x", "B"))
    assert ray.get(d.give_back.remote("B", ["x"])) == []  # B holds no KV of x: nothing moves


def test_a_session_handed_over_that_takes_no_turn_returns_to_its_old_owner(cluster, tmp_path):
    d = _directory(tmp_path, hold_s=0.5)
    try:
        _place_on(d, "A", ["y"])
        ray.get(d.report.remote("A", replica_stats("A")))
        assert ray.get(d.hold_kv.remote("y", "A", 1, [ray.put(b"kv")]))
        assert ray.get(d.give_back.remote("A", ["y"])) == ["y"]
        time.sleep(0.7)
        assert ray.get(d.rebalance_quota.remote("A")) == 0  # its period's call expires the transit
        assert ray.get(d.describe.remote("y")).owner == "A" and ray.get(d.owners.remote()) == {"A": 1}
        assert ray.get(d.begin_turn.remote("y", "B", None)).kv is None  # its KV left the object store
    finally:
        ray.kill(d, no_restart=True)


def test_switched_off_nothing_is_picked(cluster, tmp_path):
    d = _directory(tmp_path, enabled=False)
    try:
        _place_on(d, "A", [f"z{i}" for i in range(10)])
        ray.get(d.report.remote("A", replica_stats("A", free_slots=0)))
        ray.get(d.report.remote("B", replica_stats("B")))
        assert ray.get(d.rebalance_quota.remote("A")) == 0
        assert ray.get(d.rebalance_pick.remote("A", [f"z{i}" for i in range(10)])) == []
    finally:
        ray.kill(d, no_restart=True)


def test_a_replica_routers_saw_leave_gets_no_share_and_gives_no_room(directory):
    """Serve stops routing to a scaled-down replica before it drains (its ``__del__`` comes
    after its last turns), and until then it reports itself live and not draining. Its
    sessions will come back to the survivors, so counting it would make them hand sessions
    over only to take them back (seen on the GPU: 8 moves of 512 MiB KV at a drain)."""
    d = directory
    _place_on(d, "A", [f"a{i}" for i in range(8)])
    _place_on(d, "B", [f"b{i}" for i in range(8)])
    for rid in "ABC":
        ray.get(d.report.remote(rid, replica_stats(rid, free_slots=0 if rid != "C" else 8)))
    # 16 sessions over three replicas of 8 slots: fair 5.3 each, A and B 2.7 over, C has room
    assert ray.get(d.rebalance_quota.remote("A")) == 2
    ray.get(d.departed.remote(["C"]))  # a router saw C leave Serve's routing table
    ray.get(d.report.remote("C", replica_stats("C", free_slots=8)))  # and C still reports
    assert ray.get(d.rebalance_quota.remote("A")) == 0 and ray.get(d.rebalance_quota.remote("B")) == 0
    assert ray.get(d.rebalance_pick.remote("A", [f"a{i}" for i in range(8)])) == []
    # a place() call's departed list says the same (a router's fire-and-forget call may be lost)
    ray.get(d.report.remote("D", replica_stats("D", free_slots=8)))
    assert ray.get(d.rebalance_quota.remote("A")) == 2
    assert ray.get(d.place.remote("new", {"A": 8, "B": 8}, ["D"], False, True)) in ("A", "B")
    assert ray.get(d.rebalance_quota.remote("A")) == 0
