"""``http_front: direct`` with API keys and a scale-down drain, on a fresh local Ray cluster
behind HAProxy with Serve's direct ingress (test_direct_front.py covers the keyless front).

With keys, the route picker cannot see the tenant (HAProxy forwards it only the
``x-session-id`` header), so it places nothing by session: HAProxy balances by load and a
turn that lands away from its session's copy goes on to the owner through the router.
What a client relies on: the tenant's key is required, two tenants naming the same
session id hold two conversations, each warm after its first turn and logged once;
and when the autoscaler removes one of the two replicas, every conversation carries
on with nothing lost, its KV migrated from the draining replica."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from haproxy_helpers import forwarded_turns, haproxy_config, serve_behind_haproxy
from serve_helpers import ENGINE, MODEL_ID, log_path

pytestmark = pytest.mark.slow
ROUTED = re.compile(r"local ROUTERS = \{\s*\[\"http-swiftinfer\"\] = \{ \{ host = ")
TENANTS = {"alice": "acme", "bob": "beta"}
SESSIONS = ("chat-0", "chat-1", "chat-2")  # per tenant: 6 active sessions keep both replicas up (4 per replica)


@pytest.fixture(scope="module")
def keyed_app(tmp_path_factory):
    from deployments.http.api_keys import add_key

    tmp = tmp_path_factory.mktemp("direct-keys")
    keys = {name: add_key(tmp / "keys.json", name, tenant) for name, tenant in TENANTS.items()}
    # idle, the policy wants one replica: the delay covers HAProxy's start before the first test talks (6 active
    # sessions then keep two), and the second test waits it out
    scaling = {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 2, "target_active_sessions": 4, "active_window_s": 6,
               "target_ongoing_requests": 8, "downscale_delay_s": 30, "upscale_delay_s": 600, "look_back_period_s": 2,
               "metrics_interval_s": 0.5}
    args = {"model_id": MODEL_ID, "engine": dict(ENGINE), "directory_name": "direct-keys", "http_front": "direct",
            "default_max_tokens": 6, "replica_cpus": 0.5, "scaling": scaling, "stats_report_period_s": 0.5,
            "session_log": {"path": log_path("direct-keys")}, "auth": {"keys_file": str(tmp / "keys.json")}}
    with serve_behind_haproxy(tmp, args, {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"},
                              ready=lambda hap: ROUTED.search(haproxy_config(hap)) is not None) as (url, _, _):
        _wait(lambda: httpx.get(f"{url}/healthz", timeout=10).json().get("replicas") == 2, 120, "both replicas to report")
        yield url, keys


def _wait(pred, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _turn(url: str, key: str | None, sid: str, text: str) -> httpx.Response:
    body = {"model": MODEL_ID, "stream": True, "max_tokens": 6, "temperature": 0, "messages": [{"role": "user", "content": text}]}
    headers = {"x-session-id": sid, **({"authorization": f"Bearer {key}"} if key else {})}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120) as resp:
        resp.read()
    return resp


def _final(resp: httpx.Response) -> dict:
    lines = [ln for ln in resp.text.splitlines() if ln.startswith("data: ")]
    assert resp.status_code == 200 and lines and lines[-1] == "data: [DONE]", (resp.status_code, resp.text[-500:])
    return json.loads(lines[-2][6:])


def _round(url: str, keys: dict, r: int) -> dict[tuple[str, str], dict]:
    """One turn of every tenant's every session, concurrently: (tenant key name, session) -> final chunk."""
    jobs = [(who, sid) for who in keys for sid in SESSIONS]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {j: pool.submit(_turn, url, keys[j[0]], j[1], f"{j[0]} {j[1]} round {r}: name a colour.") for j in jobs}
        return {j: _final(f.result()) for j, f in futures.items()}


def _turns(url: str, key: str, sid: str) -> list[dict]:
    resp = httpx.get(f"{url}/v1/sessions/{sid}/turns", headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def test_keys_are_required_and_tenants_keep_their_own_conversations(keyed_app):
    url, keys = keyed_app
    assert httpx.get(f"{url}/healthz", timeout=10).json().get("replicas") == 2  # not yet scaled down while idle
    missing = _turn(url, None, "chat-0", "hello")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key", missing.text
    wrong = _turn(url, "sk-si-" + "x" * 43, "chat-0", "hello")
    assert wrong.status_code == 401, wrong.text
    caches: dict[tuple[str, str], list[str]] = {}
    generated: dict[tuple[str, str], list[int]] = {}
    for r in range(3):
        for j, final in _round(url, keys, r).items():
            assert final["session_id"] == j[1]  # the client's own id, not the tenant-scoped one
            caches.setdefault(j, []).append(final["cache"])
            generated.setdefault(j, []).append(final["usage"]["completion_tokens"])
    for j, seen in caches.items():
        assert seen == ["new", "warm", "warm"], (j, seen)  # a forwarded turn still ran on the copy's owner
    time.sleep(1.5)  # a stats report (stats_report_period_s 0.5)
    assert forwarded_turns(url) > 0  # HAProxy balanced 36 turns over two replicas: some landed away from their owner
    for who, key in keys.items():
        for sid in SESSIONS:
            turns = _turns(url, key, sid)
            # three turns each: two tenants naming one id never share a conversation (merged, there would be six)
            assert [(t["seq"], t["completion_tokens"]) for t in turns] == list(zip([1, 2, 3], generated[(who, sid)]))


def test_scale_down_in_direct_mode_loses_no_conversation(keyed_app):
    url, keys = keyed_app
    before = {j: _turns(url, keys[j[0]], j[1]) for j in ((w, s) for w in keys for s in SESSIONS)}
    # nothing talks now: after active_window_s + downscale_delay_s the policy asks for one replica
    _wait(lambda: httpx.get(f"{url}/healthz", timeout=10).json().get("replicas") == 1, 180, "the autoscaler to drain one replica")
    time.sleep(3)  # HAProxy's backends follow Serve's replica set
    finals = _round(url, keys, 3)
    for j, final in finals.items():
        assert final["cache"] in ("warm", "migrated"), (j, final["cache"])  # the drained replica's KV came with it: none rebuilt
        turns = _turns(url, keys[j[0]], j[1])
        assert [t["seq"] for t in turns] == [1, 2, 3, 4] and turns[:3] == before[j], (j, turns)
    health = httpx.get(f"{url}/healthz", timeout=10).json()
    assert health.get("replicas") == 1, health
