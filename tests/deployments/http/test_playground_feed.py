"""The playground's server side without a browser: which routes need a key, the
cluster feed's tenant scoping, and the directory's cluster view (tokens/s from
successive reports, owned conversations, move and replica events)."""

from __future__ import annotations

import time
import uuid

import pytest
import ray
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.http.api_keys import KeyRing, add_key
from deployments.http.auth import KeyCheck
from deployments.config import AppConfig
from deployments.sessions.directory import directory_handle
from deployments.http.playground import FILES, Playground
from message_factories import committed_turn, replica_stats, session_record


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class FakeDirectory:
    """Answers ``cluster.remote`` like the directory actor, recording the scope it was asked for."""

    def __init__(self):
        self.scopes = []

        async def cluster(max_age_s, scope=""):
            self.scopes.append(scope)
            now = time.time()
            sessions = [{"id": f"{scope}chat-1", "seq": 3, "moves": 1, "busy": False, "updated": now - 2}]
            return {"now": now, "events": [{"t": now - 1, "kind": "moved", "session": f"{scope}chat-1", "src": "r0", "dst": "r1"}],
                    "replicas": {"r1": {"reported_at": now - 0.5, "tokens_per_s": 12.5, "owned": 1, "sessions": sessions,
                                        "stats": replica_stats("r1", free_slots=7, kv_use=0.125, tokens_generated=99)}}}

        self.cluster = _Remote(cluster)


@pytest.fixture
def keyed(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "alice", "acme")
    cfg = AppConfig(auth={"keys_file": str(path)})
    directory = FakeDirectory()
    app = FastAPI()
    Playground(cfg, directory).add_routes(app)
    app.add_middleware(KeyCheck, ring=KeyRing(path), metrics_keyed=False)
    with TestClient(app) as client:
        yield client, key, directory


def test_playground_files_are_open_and_say_keys_are_required(keyed):
    client, _, _ = keyed
    for path in ["/", "/cluster", "/plots", "/ui/config.json", "/ui/plots.json"] + [f"/ui/{name}" for name in FILES]:
        assert client.get(path).status_code == 200, path
    assert client.get("/ui/config.json").json()["keys_required"] is True
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]
    assert client.get("/ui/../config.py").status_code == 404


def test_playground_cluster_feed_needs_a_key_and_shows_the_tenants_own_ids(keyed):
    client, key, directory = keyed
    assert client.get("/v1/cluster").status_code == 401
    resp = client.get("/v1/cluster", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert directory.scopes == ["acme:"]  # the directory filters by the tenant's prefix
    (replica,) = body["replicas"]
    assert replica["id"] == "r1" and replica["tokens_per_s"] == 12.5 and replica["slots"] == 8
    assert replica["conversations"] == [{"id": "chat-1", "turns": 3, "moves": 1, "busy": False, "idle_s": pytest.approx(2, abs=0.5)}]
    assert body["events"][0]["session"] == "chat-1"  # never the scoped id
    assert body["deployment"] is None  # outside a Serve replica


def test_playground_cluster_feed_from_the_directory(cluster, tmp_path):
    spec = {"name": f"dir-play-{uuid.uuid4().hex[:6]}", "log": {"backend": "sqlite", "path": str(tmp_path / "d.sqlite3")},
            "lease_stale_s": 5.0, "lease_timeout_s": 30.0}
    d = directory_handle(spec)
    try:
        ray.get(d.report.remote("A", replica_stats("A", tokens_generated=100)))
        ray.get(d.report.remote("B", replica_stats("B", tokens_generated=0)))
        time.sleep(0.5)
        ray.get(d.report.remote("A", replica_stats("A", tokens_generated=150)))
        for sid, rid in (("t1:x", "A"), ("t2:y", "B")):
            grant = ray.get(d.begin_turn.remote(sid, rid, None))
            assert ray.get(d.commit.remote(sid, rid, grant.seq, session_record(sid, 1), None, _turn()))
        view = ray.get(d.cluster.remote(30.0, "t1:"))
        a, b = view["replicas"]["A"], view["replicas"]["B"]
        assert 50 / 1.0 < a["tokens_per_s"] <= 50 / 0.5 + 1e-6 and b["tokens_per_s"] is None  # B reported once
        assert [s["id"] for s in a["sessions"]] == ["t1:x"] and b["sessions"] == [] and b["owned"] == 0  # t2's is not shown
        assert [e["kind"] for e in view["events"]] == ["replica_joined", "replica_joined"]
        ray.get(d.release.remote("A"))  # A drains; x lands on B at its next turn
        grant = ray.get(d.begin_turn.remote("t1:x", "B", None))
        assert ray.get(d.commit.remote("t1:x", "B", grant.seq, session_record("t1:x", 2), None, _turn()))
        view = ray.get(d.cluster.remote(30.0, "t1:"))
        assert set(view["replicas"]) == {"B"}
        assert view["replicas"]["B"]["sessions"][0] | {"updated": 0} == {"id": "t1:x", "seq": 2, "moves": 1, "busy": False, "updated": 0}
        kinds = [(e["kind"], e.get("session"), e.get("dst")) for e in view["events"]]
        assert kinds[-2:] == [("replica_drained", None, None), ("moved", "t1:x", "B")]
        time.sleep(0.3)
        view = ray.get(d.cluster.remote(0.1, "t1:"))  # B went silent: lost, logged once
        assert view["replicas"] == {} and [e["kind"] for e in view["events"]][-1] == "replica_lost"
        assert [e["kind"] for e in ray.get(d.cluster.remote(0.1, "t1:"))["events"]].count("replica_lost") == 1
    finally:
        ray.kill(d, no_restart=True)


def _turn():
    return committed_turn(None, "r")
