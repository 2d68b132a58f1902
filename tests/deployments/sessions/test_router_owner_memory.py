"""The router's owner memory forgets an owner that has handed sessions over since
it was remembered (deployments/sessions/router.py OwnerMemory, rebalancing)."""

from __future__ import annotations

from deployments.messages import RoutingStats
from deployments.sessions.router import OwnerMemory


def test_an_owner_whose_rebalanced_count_changed_is_asked_about_again():
    mem = OwnerMemory(ttl_s=600)
    mem.put("a", "r1", epoch=3)
    mem.put("b", "r2", epoch=0)
    counts = {"r1": 3, "r2": 0}
    assert mem.get("a", counts.get) == "r1" and mem.get("b", counts.get) == "r2"
    counts["r1"] = 5  # r1 handed sessions over: "a" may be one of them
    assert mem.get("a", counts.get) is None
    counts["r1"] = 3
    assert mem.get("a", counts.get) is None  # forgotten, not hidden: the directory names the owner again
    assert mem.get("b", lambda rid: None) == "r2"  # no stats for the owner yet: the memory stands
    assert mem.get("b") == "r2"


def test_routing_stats_carry_the_count():
    assert RoutingStats.of({"capacity": 8, "sessions": 3, "draining": False, "rebalanced": 7}).rebalanced == 7
    assert RoutingStats.of(None).rebalanced == 0  # before the first poll
