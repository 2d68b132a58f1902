"""A 3-node Ray cluster on one machine serving the real app (real SmolLM2 on CPU):
head without replicas plus two workers, each with one ``llm_slot``; the app of
serve_config.yaml, deployed with ``cluster/node.sh deploy`` (validate, ``serve
deploy``, wait for RUNNING) with 2 replicas that each need an ``llm_slot``.

Checks: the replicas land on the two worker nodes; several sessions over several
rounds keep their replica (``x-replica-id``) and their warm cache, with sessions
on both nodes; ``serve status`` reports the application RUNNING and healthy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
import yaml

from local_cluster import BIN, LocalRayCluster, free_port

ROOT = Path(__file__).resolve().parents[2]
APP = "swiftinfer"
WORKERS = {"worker_a": {"llm_slot": 1, "worker_a": 1}, "worker_b": {"llm_slot": 1, "worker_b": 1}}

pytestmark = pytest.mark.slow


def _wait(predicate, timeout_s: float, what: str, period_s: float = 1.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _api(cluster: LocalRayCluster, path: str):
    req = urllib.request.Request(cluster.dashboard_url + path, headers={"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _alive_nodes(cluster: LocalRayCluster) -> list[dict]:
    try:
        nodes = _api(cluster, "/api/v0/nodes?detail=1&limit=100")["data"]["result"]["result"]
    except OSError:
        return []
    return [n for n in nodes if n["state"] == "ALIVE"]


@pytest.fixture(scope="module")
def multinode(tmp_path_factory):
    """``(cluster, worker node id -> name)``; always torn down, by our own pids only."""
    temp_dir = Path(tempfile.mkdtemp(prefix="simn", dir="/tmp"))  # short: Ray's socket paths live under it
    logs = tmp_path_factory.mktemp("ray-nodes")
    cluster = LocalRayCluster(temp_dir, logs)
    cluster.env["PATH"] = f"{BIN}{os.pathsep}{cluster.env.get('PATH', '')}"
    try:
        cluster.start_head(num_cpus=2)
        # 240 s: in a fresh clone this is the suite's first Ray start, whose dashboard imports
        # Ray's modules uncompiled (no .pyc yet); it once took over 90 s on the 2-core box
        _wait(lambda: len(_alive_nodes(cluster)) == 1, 240, "the head node")
        for expected, (name, resources) in enumerate(WORKERS.items(), start=2):
            for _attempt in range(3):  # one at a time; `ray start` gives up when its startup RPC times out on a loaded box
                launcher = cluster.add_worker(name, num_cpus=1, resources=resources)
                _wait(lambda: launcher.poll() is not None or len(_alive_nodes(cluster)) >= expected, 240, f"node {name}")
                if launcher.poll() is None:
                    break
            else:
                raise AssertionError(f"worker {name} did not start in 3 attempts; logs in {logs}")
        nodes = _wait(lambda: (n := _alive_nodes(cluster)) and len(n) == 3 and n, 120, "3 alive nodes")
        workers = {n["node_id"]: name for n in nodes for name in WORKERS if name in n["resources_total"]}
        assert len(workers) == 2, nodes
        yield cluster, workers
    finally:
        leftovers = cluster.stop()
        assert cluster.alive_launchers() == 0
        shutil.rmtree(temp_dir, ignore_errors=True)
        if leftovers:
            print(f"killed {len(leftovers)} leftover Ray processes of this test's cluster: {leftovers}")


def _test_config(http_port: int, log_path: str) -> dict:
    """serve_config.yaml, scaled down: 2 replicas, one per llm_slot, small cache, one proxy."""
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cfg["proxy_location"] = "HeadOnly"  # one machine: per-node proxies would share the port
    cfg["http_options"] = {"host": "127.0.0.1", "port": http_port}
    (app,) = cfg["applications"]
    args = app["args"]
    args["engine"].update({"device": "cpu", "window": 60, "max_sessions": 8, "max_turn_tokens": 256})
    args["scaling"] = {"min_replicas": 2, "max_replicas": 2}
    args.update({"replica_cpus": 1, "cpu_threads": 1, "replica_resources": {"llm_slot": 1}, "default_max_tokens": 4,
                 "directory_name": "swiftinfer-sessions-multinode",
                 "session_log": {"path": log_path}})  # a fresh session log: earlier runs' sessions must not come back
    return cfg


def _replicas(cluster: LocalRayCluster) -> list[dict]:
    apps = _api(cluster, "/api/serve/applications/")["applications"]
    return [r for r in apps[APP]["deployments"]["LLMReplica"]["replicas"] if r["state"] == "RUNNING"]


def test_multinode_replicas_spread_and_sessions_stick(multinode, tmp_path):
    cluster, workers = multinode
    http_port = free_port()
    config = tmp_path / "serve_multinode.yaml"
    config.write_text(yaml.safe_dump(_test_config(http_port, str(tmp_path / "sessions.sqlite3"))))

    env = {**cluster.env, "DASHBOARD_PORT": str(cluster.dashboard_port), "DEPLOY_TIMEOUT_S": "180"}
    deploy = subprocess.run(["bash", str(ROOT / "cluster" / "node.sh"), "deploy", str(config)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    # replicas: one on each worker node, none on the head
    replicas = _wait(lambda: (r := _replicas(cluster)) and len(r) == 2 and r, 60, "2 running LLM replicas")
    node_of = {r["replica_id"]: r["node_id"] for r in replicas}
    assert sorted(workers[n] for n in node_of.values()) == ["worker_a", "worker_b"], (node_of, workers)

    # sessions: every round on the same replica, cache warm after the first; sessions on both nodes
    base = f"http://127.0.0.1:{http_port}"
    owner: dict[str, str] = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        _wait(lambda: client.get("/healthz").status_code == 200, 60, "/healthz 200")
        for rnd in range(3):
            for s in range(6):
                sid = f"mn-{s}"
                body = {"model": "smollm2-135m-instruct", "session_id": sid, "max_tokens": 4, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Round {rnd}: name a colour."}]}
                resp = client.post("/v1/chat/completions", json=body)
                assert resp.status_code == 200, resp.text
                replica = resp.headers["x-replica-id"]
                assert replica in node_of, (replica, node_of)
                assert owner.setdefault(sid, replica) == replica, f"{sid} moved from {owner[sid]} to {replica} in round {rnd}"
                assert resp.json()["cache"] == ("new" if rnd == 0 else "warm"), (sid, rnd, resp.json())
    assert {workers[node_of[r]] for r in owner.values()} == {"worker_a", "worker_b"}, owner

    status = cluster.run("serve", "status", "--address", cluster.dashboard_url, timeout=60)
    assert status.returncode == 0, status.stderr
    app = yaml.safe_load(status.stdout)["applications"][APP]
    assert app["status"] == "RUNNING", app
    assert {name: d["status"] for name, d in app["deployments"].items()} == {"Ingress": "HEALTHY", "LLMReplica": "HEALTHY"}, app
