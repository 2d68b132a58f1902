"""One real local Ray cluster shared by all deployment tests (the apps on it run
the real engine with the real SmolLM2-135M on CPU; see serve_helpers.py).

Logical resources: 8 CPUs on a 2-core box so that 2-3 LLM replicas (1 logical
CPU each, 1 torch thread each) plus the ingress fit.
"""

from __future__ import annotations

import os

import pytest

from serve_helpers import free_port


@pytest.fixture(scope="session")
def cluster():
    """``(base_url)`` of Serve's HTTP proxy on a fresh local Ray cluster."""
    # Autoscaling metrics every 0.5 s instead of 10 s, so scale-down tests take seconds.
    os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
    # Ray's proxy answers 500 to non-UTF-8 session/request-id headers; our guard makes that a 400.
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "deployments.http.proxy_guard:proxy_middlewares")
    # Replicas started here expose the test-only fault injection (swiftinfer_core/engine/faults.py).
    os.environ["SWIFTINFER_FAULT_INJECTION"] = "1"
    import ray
    from ray import serve

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real ``redis-server`` on loopback at a random port (installed with apt
    when missing: CI runs as root on a clean Debian machine), stopped at the end."""
    from redis_server import RedisServer

    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()
