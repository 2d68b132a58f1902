"""The fair-share arithmetic of rebalancing (deployments/sessions/rebalance.py),
exactly, on small fake reports: how many sessions each replica is told to move."""

from __future__ import annotations

import time

from deployments.config import RebalanceConfig
from deployments.sessions import rebalance
from deployments.sessions.rebalance import Transit, moves_for
from message_factories import replica_stats

CFG = RebalanceConfig(slack_sessions=2, slack_ratio=0.1, max_sessions_per_period=100)


def _stats(**replicas: dict) -> dict:
    """name -> ReplicaStats; each replica 8 slots, all free, unless given."""
    return {r: replica_stats(r, **f) for r, f in replicas.items()}


def _moves(owned: dict[str, int], stats: dict, handed: int = 0, picked: int = 0, cfg: RebalanceConfig = CFG) -> dict[str, int]:
    return {r: moves_for(r, owned, stats, cfg, handed, picked) for r in stats}


def test_a_new_replica_takes_half_of_an_equal_pair_and_only_the_full_one_moves():
    # 10 owned, 8 + 8 slots: fair 5 each; A is 5 over (slack 2), B has room for 5
    assert _moves({"A": 10}, _stats(A={}, B={})) == {"A": 5, "B": 0}


def test_the_per_period_bound_and_sessions_in_transit():
    stats = _stats(A={}, B={})
    assert _moves({"A": 10}, stats, cfg=CFG.model_copy(update={"max_sessions_per_period": 4})) == {"A": 4, "B": 0}
    # 4 handed back, not yet placed: they still count in the total (fair 5) and fill B's room
    assert _moves({"A": 6}, stats, handed=4) == {"A": 0, "B": 0}  # 1 over: within the slack
    # 3 handed back of 12: fair 6, A is 3 over, B's room 6 minus the 3 on their way
    assert _moves({"A": 9}, stats, handed=3) == {"A": 3, "B": 0}
    assert _moves({"A": 11}, stats, handed=1) == {"A": 5, "B": 0}  # fair 6: 5 over, room 6 - 1
    # 3 picked by another replica, still owned there: not in the total twice, but they fill the room
    assert _moves({"A": 10}, stats, picked=3) == {"A": 2, "B": 0}
    assert _moves({"A": 10}, stats, handed=2, picked=3) == {"A": 1, "B": 0}  # 12: fair 6, A 4 over, room 6 - 2 - 3


def test_slack_is_the_larger_of_sessions_and_ratio():
    stats = _stats(A={}, B={})
    assert _moves({"A": 7, "B": 3}, stats) == {"A": 0, "B": 0}  # 2 over: not more than the slack of 2
    assert _moves({"A": 8, "B": 2}, stats) == {"A": 3, "B": 0}  # 3 over
    big = _stats(A={"capacity": 100, "free_slots": 100}, B={"capacity": 100, "free_slots": 100})
    # fair 50: a slack of 10% is 5 sessions, so 54 stays and 56 moves 6
    assert _moves({"A": 54, "B": 46}, big) == {"A": 0, "B": 0}
    assert _moves({"A": 56, "B": 44}, big) == {"A": 6, "B": 0}
    assert _moves({"A": 3}, stats, cfg=CFG.model_copy(update={"slack_sessions": 0, "slack_ratio": 0.0})) == {"A": 1, "B": 0}


def test_shares_follow_kv_slots():
    stats = _stats(A={"capacity": 8}, B={"capacity": 24, "free_slots": 24})
    assert _moves({"A": 12}, stats) == {"A": 9, "B": 0}  # fair 3 and 9
    assert _moves({"A": 3, "B": 9}, stats) == {"A": 0, "B": 0}
    assert _moves({"B": 12}, stats) == {"A": 0, "B": 3}  # fair 9, 3 over (> slack 2), A has room for 3


def test_the_others_deficit_bounds_the_moves_and_free_slots_bound_the_deficit():
    # three replicas: A 6 over a fair 6, B at its share, C 6 short but only 2 free slots
    stats = _stats(A={}, B={}, C={"free_slots": 2})
    assert _moves({"A": 12, "B": 6}, stats) == {"A": 2, "B": 0, "C": 0}
    assert _moves({"A": 12, "B": 5, "C": 1}, stats) == {"A": 3, "B": 0, "C": 0}  # B 1 short, C 5 short of which 2 free
    # room spread over two replicas: 140 on A, 0 on B and C of 64 slots: fair 46.67, 93.33 over, room 2 x 46.67
    wide = _stats(**{r: {"capacity": 64, "free_slots": 64} for r in "ABC"})
    assert _moves({"A": 140}, wide) == {"A": 93, "B": 0, "C": 0}
    # a replica over its share with no one below: nothing to move into
    assert _moves({"A": 9, "B": 9}, _stats(A={}, B={})) == {"A": 0, "B": 0}


def test_draining_and_unknown_replicas_count_for_nothing():
    # C drains: not a destination, and its sessions are not part of the fair share
    stats = _stats(A={}, B={}, C={"draining": True})
    assert _moves({"A": 10, "C": 50}, stats) == {"A": 5, "B": 0, "C": 0}
    assert _moves({"A": 10}, _stats(A={}, B={"capacity": 0, "free_slots": 0})) == {"A": 0, "B": 0}  # B: no slots
    assert moves_for("X", {"X": 10}, _stats(A={}, B={}), CFG) == 0  # X never reported (or went silent)
    assert _moves({"A": 10}, _stats(A={})) == {"A": 0}  # alone
    assert _moves({"A": 10}, _stats(A={}, B={}), cfg=CFG.model_copy(update={"enabled": False})) == {"A": 0, "B": 0}


def test_transit_counts_picks_and_hand_backs_and_expires_them(monkeypatch):
    t = Transit(hold_s=10.0)
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    t.picked("A", 3)
    assert (t.handed_count(), t.picked_count("B"), t.picked_count("A")) == (0, 3, 0)  # A's own pick is not in its way
    t.handed("A", ["s1", "s2"])  # one of the three picks could not be held: the pick is over
    assert (t.handed_count(), t.picked_count("B")) == (2, 0)
    t.picked("B", 1)
    assert t.picked_count("A") == 1
    now[0] += rebalance.PICK_TIMEOUT_S + 1  # B died before its give_back
    assert t.picked_count("A") == 0
    assert t.landed("s1") == "A" and t.landed("s1") is None and t.handed_count() == 1
    assert t.expired() == [("s2", "A")] and t.handed_count() == 0  # 61 s > hold_s
