"""The ingress's calls to the LLM replicas over Ray actor calls (``replica_transport: ray``).

Every other deployment test runs the default, Serve's gRPC transport; this module
runs one app over the other one: streamed and plain turns, a warm second turn,
the replica's errors as their HTTP statuses, and the session routes."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from ray import serve

from serve_helpers import MODEL_ID, app_config, chat, deploy


@pytest.fixture(scope="module")
def ray_calls(cluster):
    prefix = deploy("tray", app_config("tray-sessions", replica_transport="ray"))
    with httpx.Client(base_url=cluster, timeout=180) as client:
        yield client, prefix
    serve.delete("tray")


def test_streamed_then_warm_turn(ray_calls):
    client, prefix = ray_calls
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 12,
            "temperature": 0, "stream": True, "session_id": "tray-1"}
    with client.stream("POST", f"{prefix}/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200 and resp.headers["x-session-id"] == "tray-1"
        data = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert chunks[-1]["usage"]["completion_tokens"] <= 12

    second = chat(client, prefix, [{"role": "user", "content": "Again."}], "tray-1")
    assert second.status_code == 200, second.text
    assert second.json()["cache"] == "warm" and second.json()["usage"]["cached_tokens"] > 0
    info = client.get(f"{prefix}/v1/sessions/tray-1")
    assert info.status_code == 200 and info.json()["seq"] == 2, info.text


def test_replica_errors_keep_their_status(ray_calls):
    client, prefix = ray_calls
    assert client.get(f"{prefix}/v1/sessions/tray-never").status_code == 404
    assert chat(client, prefix, [{"role": "user", "content": "hi"}], "tray-busy").status_code == 200
    # a long turn holds the session; a second turn of it meanwhile is refused with 409
    long_body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 200,
                 "temperature": 0, "session_id": "tray-busy", "stream": True}
    started = threading.Event()
    statuses = []

    def long_turn():
        with httpx.Client(base_url=client.base_url, timeout=180) as c, c.stream("POST", f"{prefix}/v1/chat/completions", json=long_body) as r:
            statuses.append(r.status_code)
            for line in r.iter_lines():
                if line.startswith("data: "):
                    started.set()

    t = threading.Thread(target=long_turn)
    t.start()
    assert started.wait(120)
    busy = chat(client, prefix, [{"role": "user", "content": "me too"}], "tray-busy")
    t.join()
    assert statuses == [200]
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "session_busy", busy.text
    deleted = client.delete(f"{prefix}/v1/sessions/tray-busy")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
