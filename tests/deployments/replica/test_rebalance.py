"""Rebalancing on scale-up, end to end on the shared local Ray cluster with the real
default model on CPU (deployments/replica/rebalance.py, sessions/rebalance.py).

Eight conversations in twin pairs (x_i, y_i: same messages, greedy) are placed on
the only replica A; the autoscaler adds B (16 KV slots each): fair share 4, so A
hands 4 over, the most recently used first: the y's
(each round runs every x before every y, one turn at a time, so every step runs
alone and the output depends only on the conversation's state). Each y's next
turn lands on B and imports its KV (``migrated``); its twin x, warm on A, is what
A would have produced, and the two must be identical, token for token, in usage
too. The routers remember owners for 600 s, so only the owner's ``rebalanced``
count sends them to the directory again. The log's audit shows every turn once.
"""

from __future__ import annotations

import time

import httpx
import pytest
import ray
from ray import serve

from serve_helpers import app_config, chat, deploy, wait_for

PAIRS = 4


@pytest.fixture(scope="module")
def client(cluster):
    with httpx.Client(base_url=cluster, timeout=180) as c:
        yield c


def _round(client, prefix, r: int) -> dict[str, httpx.Response]:
    """One turn of every conversation, one at a time: all x's, then all y's."""
    out = {}
    for twin in "xy":
        for i in range(PAIRS):
            sid = f"rb-{twin}{i}"
            out[sid] = resp = chat(client, prefix, [{"role": "user", "content": f"Pair {i}, round {r}: name an animal and a colour."}], sid)
            assert resp.status_code == 200, (sid, resp.text)
    return out


def _assert_twins_agree(turns: dict[str, httpx.Response]) -> None:
    for i in range(PAIRS):
        x, y = turns[f"rb-x{i}"].json(), turns[f"rb-y{i}"].json()
        assert x["choices"][0]["message"]["content"] == y["choices"][0]["message"]["content"], (i, x, y)
        assert x["usage"] == y["usage"], (i, x["usage"], y["usage"])


def _replicas() -> dict:
    return dict(serve.status().applications["rb"].deployments["LLMReplica"].replica_states)


def test_a_replica_added_under_load_takes_over_conversations_with_their_exact_kv(client):
    scaling = {"min_replicas": 1, "max_replicas": 2, "target_active_sessions": 6, "upscale_delay_s": 3,
               "downscale_delay_s": 600, "look_back_period_s": 2, "metrics_interval_s": 0.5}
    prefix = deploy("rb", app_config("rb-sessions", scaling=scaling, owner_cache_s=600))
    directory = ray.get_actor("rb-sessions", namespace="swiftinfer")
    first = _round(client, prefix, 0)
    owners = {sid: r.headers["x-replica-id"] for sid, r in first.items()}
    (a,) = set(owners.values())  # all placed before the second replica exists
    _assert_twins_agree(first)

    wait_for(lambda: _replicas() == {"RUNNING": 2}, 180, "the autoscaler to add a replica")
    stats = lambda: ray.get(directory.replica_stats.remote(30.0))  # noqa: E731
    wait_for(lambda: len(stats()) == 2, 60, "both replicas to report")
    (b,) = set(stats()) - {a}
    # A owns 8 of the 8 sessions, fair share 4: one eviction period hands the 4 y's over
    wait_for(lambda: stats()[a].rebalanced == PAIRS, 30, "A to hand its excess over")
    for i in range(PAIRS):
        assert ray.get(directory.describe.remote(f"rb-y{i}")).owner is None
        assert ray.get(directory.describe.remote(f"rb-x{i}")).owner == a
    time.sleep(4)  # routers see A's new routing stats (routing_stats_period_s 1 s)

    second = _round(client, prefix, 1)
    for i in range(PAIRS):
        x, y = second[f"rb-x{i}"], second[f"rb-y{i}"]
        assert (x.headers["x-replica-id"], x.json()["cache"]) == (a, "warm"), x.json()
        assert (y.headers["x-replica-id"], y.json()["cache"]) == (b, "migrated"), y.json()
    _assert_twins_agree(second)  # the imported KV is A's exactly: same reply as the twin that stayed
    third = _round(client, prefix, 2)  # and it continues warm on B, still in step with A
    assert {(r.headers["x-replica-id"], r.json()["cache"]) for sid, r in third.items() if "y" in sid} == {(b, "warm")}
    _assert_twins_agree(third)

    # A let go of its copies of the moved ones once B owned them
    wait_for(lambda: stats()[a].sessions == PAIRS, 30, "A to drop the copies of the sessions B owns")
    assert stats()[b].sessions == PAIRS and stats()[a].turns["migrated"] == 0 and stats()[b].turns["migrated"] == PAIRS
    for twin, replica, moves in (("x", a, 0), ("y", b, 1)):
        for i in range(PAIRS):
            sid = f"rb-{twin}{i}"
            log = ray.get(directory.turns.remote(sid, 0, 100))  # the audit: every turn committed once, in order
            assert [(t.seq, t.replica) for t in log] == [(1, a), (2, replica), (3, replica)], (sid, log)
            info = ray.get(directory.describe.remote(sid))
            assert (info.owner, info.seq, info.moves) == (replica, 3, moves)
    events = ray.get(directory.cluster.remote(60.0))["events"]
    assert [(e["replica"], e["sessions"]) for e in events if e["kind"] == "sessions_handed_back" and e["reason"] == "rebalance"] == [(a, PAIRS)]
    moved = {e["session"]: (e["src"], e["dst"]) for e in events if e["kind"] == "moved" and e.get("reason") == "rebalance"}
    assert moved == {f"rb-y{i}": (a, b) for i in range(PAIRS)}
    serve.delete("rb")
