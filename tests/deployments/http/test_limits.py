"""Limits through real HTTP on one real replica whose session log is a real
redis-server: an aborted stream frees its slot at once and is rolled back, a
turn past request_timeout_s is a 504 and rolled back, a retried turn is
replayed (not run twice), idle and excess sessions leave the replica's memory
and are rebuilt on their next turn."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import ray
from ray import serve

from serve_helpers import ENGINE, MODEL_ID, app_config, deploy, wait_for

TTL_S, CAP = 15.0, 6  # TTL well above the time 8 concurrent first turns take on a loaded 2-core box
LIMITS = {"request_timeout_s": 5.0, "idle_ttl_s": TTL_S, "max_sessions_per_replica": CAP, "max_output_tokens": 400}


@pytest.fixture(scope="module")
def api(cluster, redis_url):
    config = app_config("limits-sessions", limits=LIMITS, stats_report_period_s=0.5, engine={**ENGINE, "max_sessions": 8},
                        session_log={"backend": "redis", "redis_url": redis_url})
    prefix = deploy("limits", config)
    directory = ray.get_actor("limits-sessions", namespace="swiftinfer")
    with httpx.Client(base_url=f"{cluster}{prefix}", timeout=120) as client:
        yield client, directory
    serve.delete("limits")


def _body(sid: str, text: str, **params) -> dict:
    return {"model": MODEL_ID, "session_id": sid, "messages": [{"role": "user", "content": text}], "max_tokens": 4,
            "temperature": 0, **params}


def _replica(directory):
    (stats,) = ray.get(directory.replica_stats.remote(10.0)).values()  # a starved box reports late
    return stats


def _turn_keys(client, sid: str) -> list[str]:
    return [t["turn_key"] for t in client.get(f"/v1/sessions/{sid}/turns").json()["data"]]


def test_an_aborted_stream_frees_its_slot_at_once_and_is_rolled_back(api):
    client, directory = api
    assert client.post("/v1/chat/completions", json=_body("ab-1", "Hello."), headers={"Idempotency-Key": "ab-k1"}).status_code == 200
    generated = _replica(directory).tokens_generated
    body = _body("ab-1", "Tell a very long story.", max_tokens=300, ignore_eos=True, stream=True)
    with client.stream("POST", "/v1/chat/completions", json=body, headers={"Idempotency-Key": "ab-k2"}) as resp:
        seen = 0
        for line in resp.iter_lines():
            seen += '"content":"' in line and '"content":""' not in line
            if seen >= 2:
                break  # the client goes away mid-stream
    gone = time.time()
    stats = wait_for(lambda: (s := _replica(directory)).running == 0 and s.waiting == 0 and s, 10, "the aborted turn to stop")
    assert time.time() - gone < 3.0, "the slot was held after the client left"
    assert stats.tokens_generated - generated < 100, stats  # it stopped long before max_tokens
    info = client.get("/v1/sessions/ab-1").json()
    assert (info["rounds"], info["seq"]) == (1, 1), info  # the aborted turn is not part of the conversation
    resp = client.post("/v1/chat/completions", json=_body("ab-1", "Again."), headers={"Idempotency-Key": "ab-k3"})
    assert resp.status_code == 200 and resp.json()["cache"] == "rebuilt", resp.text
    assert _turn_keys(client, "ab-1") == ["ab-k1", "ab-k3"]


def test_a_turn_past_the_request_timeout_is_504_and_rolled_back(api):
    client, directory = api
    assert client.post("/v1/chat/completions", json=_body("slow-1", "Hi.")).status_code == 200
    t0 = time.time()
    resp = client.post("/v1/chat/completions", json=_body("slow-1", "Write a novel.", max_tokens=400, ignore_eos=True))
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "turn_timeout", resp.text
    assert LIMITS["request_timeout_s"] <= time.time() - t0 < LIMITS["request_timeout_s"] + 5
    wait_for(lambda: _replica(directory).running == 0, 10, "the timed-out turn to stop")
    assert client.get("/v1/sessions/slow-1").json()["seq"] == 1
    assert client.post("/v1/chat/completions", json=_body("slow-1", "Short, please.")).status_code == 200


def test_a_retried_turn_is_replayed_not_run_twice(api):
    client, _ = api
    first = client.post("/v1/chat/completions", json=_body("idem-1", "Pick a colour."), headers={"Idempotency-Key": "t1"})
    again = client.post("/v1/chat/completions", json=_body("idem-1", "Pick a colour."), headers={"Idempotency-Key": "t1"})
    assert first.status_code == again.status_code == 200
    assert again.json()["cache"] == "replayed"
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert again.json()["usage"] == first.json()["usage"]
    assert client.post("/v1/chat/completions", json=_body("idem-1", "Another."), headers={"Idempotency-Key": "t2"}).status_code == 200
    # An older key is no longer replayable: the log refuses to record it twice, the turn is rolled back.
    stale = client.post("/v1/chat/completions", json=_body("idem-1", "Pick a colour."), headers={"Idempotency-Key": "t1"})
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "turn_not_committed", stale.text
    assert _turn_keys(client, "idem-1") == ["t1", "t2"] and client.get("/v1/sessions/idem-1").json()["rounds"] == 2


def test_idle_and_excess_sessions_leave_memory_and_are_rebuilt(api):
    client, directory = api
    sids = [f"idle-{i}" for i in range(CAP + 2)]
    with ThreadPoolExecutor(len(sids)) as pool:
        assert all(r.status_code == 200 for r in pool.map(lambda s: client.post("/v1/chat/completions", json=_body(s, "Hi.")), sids))
    # Beyond max_sessions_per_replica the least recently used leave first, before any TTL ran out...
    held = wait_for(lambda: (n := _replica(directory).sessions) <= CAP and n, TTL_S - 1, f"at most {CAP} sessions held")
    assert held == CAP
    # ...then every idle one once the TTL passed: slots released, ids dropped.
    wait_for(lambda: _replica(directory).sessions == 0, TTL_S + 10, "idle sessions to be evicted")
    stats = _replica(directory)
    assert stats.resident == 0 and stats.free_slots == stats.capacity and stats.idle_evicted >= len(sids)
    for sid in sids:
        resp = client.post("/v1/chat/completions", json=_body(sid, "Back again."))
        assert resp.status_code == 200 and resp.json()["cache"] == "rebuilt", resp.text
        assert client.get(f"/v1/sessions/{sid}").json()["rounds"] == 2
