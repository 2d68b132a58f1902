"""``http_front: direct`` (app/direct.py, app/route_picker.py) on a fresh local Ray
cluster behind HAProxy with Serve's direct ingress: two LLM replicas serve the HTTP
API themselves, HAProxy asks the route picker which one takes each request.

What a client relies on: every turn of a conversation named in ``x-session-id``
runs on one replica, warm after the first, and conversations spread over both;
a conversation named only in the body (HAProxy shows the route picker the body, as
``make serve FRONT=direct`` configures it) runs on its owner too, warm, with no hop
between replicas; the session log holds each turn once; caller mistakes are JSON
4xx. The forwarding path (a turn landing away from its owner) runs in
test_direct_front_keys_drain.py, where the picker places nothing."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from haproxy_helpers import forwarded_turns as _forwarded
from haproxy_helpers import haproxy_config, serve_behind_haproxy
from serve_helpers import ENGINE, MODEL_ID, log_path

pytestmark = pytest.mark.slow
# HAProxy's Lua action that asks the route picker, with the picker's replica in its pool
ROUTED = re.compile(r"local ROUTERS = \{\s*\[\"http-swiftinfer\"\] = \{ \{ host = ")
# ... and the replicas it may name: until both are in this map a pick of the other one is a
# pin-miss, which HAProxy serves by load (the Lua action's failure semantics), not by session
TARGETS = re.compile(r"local REPLICA_TARGETS = \{\s*\[\"http-swiftinfer\"\] = \{([^}]*)\}")
SETTLE_S = 3.0  # the config unchanged this long: HAProxy has reloaded it


def _routing_ready(hap: Path) -> bool:
    cfg = haproxy_config(hap)
    targets = TARGETS.search(cfg)
    if ROUTED.search(cfg) is None or targets is None or targets.group(1).count('"] = "') != 2:
        return False
    newest = max(p.stat().st_mtime for p in hap.rglob("*") if p.suffix in (".cfg", ".lua") and p.is_file())
    return time.time() - newest > SETTLE_S


@pytest.fixture(scope="module")
def direct_app(tmp_path_factory):
    args = {"model_id": MODEL_ID, "engine": dict(ENGINE), "directory_name": "direct-test", "http_front": "direct",
            "default_max_tokens": 6, "replica_cpus": 0.5, "scaling": {"min_replicas": 2, "max_replicas": 2},
            "session_log": {"path": log_path("direct-test")}}
    # HAProxy load-balances over the replicas until the route picker runs and knows both: wait for it
    env = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1",
           "RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_BUFSIZE": "65536"}
    with serve_behind_haproxy(tmp_path_factory.mktemp("direct"), args, env,
                              ready=_routing_ready) as running:
        yield running


def _forwarded_baseline(url: str, timeout_s: float = 30.0) -> float:
    """Forwarded turns so far, once the replicas' first stats reports made the gauge appear."""
    deadline = time.monotonic() + timeout_s
    while "swiftinfer_forwarded_turns{" not in httpx.get(f"{url}/metrics", timeout=30).text and time.monotonic() < deadline:
        time.sleep(0.5)
    return _forwarded(url)


def _turn(url: str, sid: str, text: str, header: bool = True) -> tuple[httpx.Response, dict]:
    body = {"model": MODEL_ID, "stream": True, "max_tokens": 6, "temperature": 0, "messages": [{"role": "user", "content": text}]}
    if not header:
        body["session_id"] = sid
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"x-session-id": sid} if header else {},
                      timeout=120) as resp:
        lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert resp.status_code == 200 and lines and lines[-1] == "data: [DONE]", (resp.status_code, lines)
    return resp, json.loads(lines[-2][6:])


def test_haproxy_asks_the_route_picker(direct_app):
    _, hap, _ = direct_app
    cfg = haproxy_config(Path(hap))
    assert ROUTED.search(cfg) and "route_via_ingress_request_router" in cfg, cfg[-3000:]


def test_a_conversation_stays_on_its_replica_warm_and_is_logged_once(direct_app):
    url, _, _ = direct_app
    before, owners = _forwarded_baseline(url), {}
    for s in range(4):
        sid = f"direct-{s}"
        replicas, caches, generated = set(), [], []
        for i in range(3):
            resp, final = _turn(url, sid, f"Say a word, turn {i}.")
            assert resp.headers["x-session-id"] == sid
            replicas.add(resp.headers["x-replica-id"])
            caches.append(final["cache"])
            generated.append(final["usage"]["completion_tokens"])
        assert len(replicas) == 1 and caches == ["new", "warm", "warm"], (sid, replicas, caches)
        owners[sid] = replicas.pop()
        turns = httpx.get(f"{url}/v1/sessions/{sid}/turns", timeout=30).json()["data"]
        assert [(t["seq"], t["completion_tokens"]) for t in turns] == list(zip([1, 2, 3], generated))
    assert len(set(owners.values())) == 2, owners  # new conversations are placed by load over both replicas
    time.sleep(2.5)  # a stats report (stats_report_period_s 2): turns routed by x-session-id ran where they landed
    assert _forwarded(url) - before == 0
    info = httpx.get(f"{url}/v1/sessions/direct-0", timeout=30).json()  # a read lands anywhere and reaches the owner
    assert info["replica"] == owners["direct-0"]


def test_a_conversation_named_only_in_the_body_runs_on_its_owner(direct_app):
    url, _, _ = direct_app
    before, replicas, caches = _forwarded_baseline(url), set(), []
    for i in range(6):
        resp, final = _turn(url, "direct-body", f"Count to {i}.", header=False)
        replicas.add(resp.headers["x-replica-id"])
        caches.append(final["cache"])
    assert len(replicas) == 1 and caches == ["new"] + ["warm"] * 5, (replicas, caches)
    time.sleep(2.5)  # a stats report: the picker read the body's id, so no turn went through a second replica
    assert _forwarded(url) - before == 0


def test_a_responses_conversation_runs_on_its_owner(direct_app):
    """``previous_response_id`` names the session: the picker reads it from the body."""
    url, _, _ = direct_app
    before, previous, replicas, caches = _forwarded(url), None, set(), []
    for i in range(4):
        body = {"model": MODEL_ID, "input": f"Count to {i}.", "max_output_tokens": 4, "temperature": 0}
        if previous is not None:
            body["previous_response_id"] = previous
        resp = httpx.post(f"{url}/v1/responses", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        previous = resp.json()["id"]
        replicas.add(resp.headers["x-replica-id"])
        caches.append(resp.json()["cache"])
    assert len(replicas) == 1 and caches == ["new", "warm", "warm", "warm"], (replicas, caches)
    time.sleep(2.5)  # a stats report
    assert _forwarded(url) - before <= 1  # the first (no session named yet) may land anywhere


def test_caller_mistakes_are_json_4xx(direct_app):
    url, _, _ = direct_app
    bad = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error", bad.text
    wrong = httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                       headers={"x-session-id": "direct-x"}, timeout=30)
    assert wrong.status_code == 404 and "nope" in wrong.json()["error"]["message"], wrong.text
    odd = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL_ID}, headers={"x-session-id": "bad id!"}, timeout=30)
    assert odd.status_code == 400, odd.text
    assert httpx.get(f"{url}/v1/sessions/never-seen", timeout=30).status_code == 404
