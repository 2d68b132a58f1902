"""The app behind Ray Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, the
operators' ``make serve HAPROXY=1``): HAProxy on the HTTP port streams straight from
the ingress replicas, with no Python proxy. The flag is read by Serve's controller
when it starts, so this runs its own ``serve run`` on a fresh local Ray cluster
(``--address local``), HAProxy's files and ports in a temp dir, and checks what a
client relies on: SSE turns of one conversation, 4xx errors as JSON, the session
log's audit, and no HAProxy left after the app stops."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
from haproxy_helpers import haproxies, serve_behind_haproxy
from serve_helpers import ENGINE, MODEL_ID, log_path


@pytest.fixture(scope="module")
def behind_haproxy(tmp_path_factory):
    args = {"model_id": MODEL_ID, "engine": dict(ENGINE), "directory_name": "haproxy-test",
            "default_max_tokens": 8, "replica_cpus": 1, "session_log": {"path": log_path("haproxy-test")}}
    with serve_behind_haproxy(tmp_path_factory.mktemp("hapx"), args) as running:
        yield running


def _turn(url: str, sid: str, text: str) -> tuple[httpx.Response, list[dict]]:
    body = {"model": MODEL_ID, "session_id": sid, "stream": True, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": text}]}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as resp:
        lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert lines and lines[-1] == "data: [DONE]", lines
    return resp, [json.loads(ln[6:]) for ln in lines[:-1]]


def test_turns_stream_through_haproxy_and_are_logged(behind_haproxy):
    url, hap, _ = behind_haproxy
    assert haproxies(hap), "no HAProxy process with this test's config: the request did not go through it"
    generated = []
    for i, prompt in enumerate(["Name a colour.", "And another one."]):
        resp, events = _turn(url, "hap-1", prompt)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-session-id"] == "hap-1" and resp.headers["x-replica-id"]
        final = events[-1]
        assert final["choices"][0]["finish_reason"] in ("stop", "length")
        assert final["usage"]["completion_tokens"] >= 1 and final["cache"] == ("new" if i == 0 else "warm")
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        generated.append(final["usage"]["completion_tokens"])
    turns = httpx.get(f"{url}/v1/sessions/hap-1/turns", timeout=30).json()["data"]
    assert [(t["seq"], t["completion_tokens"]) for t in turns] == [(1, generated[0]), (2, generated[1])]


def test_caller_mistakes_are_json_4xx_through_haproxy(behind_haproxy):
    url, _, _ = behind_haproxy
    bad = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error", bad.text
    wrong = httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}, timeout=30)
    assert wrong.status_code == 404 and "nope" in wrong.json()["error"]["message"], wrong.text
    missing = httpx.get(f"{url}/v1/sessions/never-seen", timeout=30)
    assert missing.status_code == 404, missing.text
    # headers Serve decodes as UTF-8 before the app runs (a 500 without deployments/http/proxy_guard.py,
    # which Serve also installs in the ingress replicas' own HTTP servers)
    for name in ("x-session-id", "serve_multiplexed_model_id", "x-request-id"):
        odd = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL_ID}, headers={name: b"\x80\xff"}, timeout=30)
        assert odd.status_code == 400 and odd.json()["error"]["code"] == "invalid_header", (name, odd.status_code, odd.text)


def test_stopping_the_app_leaves_no_haproxy(behind_haproxy):
    _, hap, proc = behind_haproxy
    proc.send_signal(signal.SIGINT)  # Ctrl-C to `serve run` (not to its whole process group: Ray's own processes
    proc.wait(timeout=120)           # must live until Serve has shut down)
    deadline = time.monotonic() + 30
    while haproxies(hap) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not haproxies(hap), "HAProxy outlived `serve run`"
