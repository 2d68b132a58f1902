"""One real local Ray cluster shared by all deployment tests (the apps on it run
the real engine with the real SmolLM2-135M on CPU; see serve_helpers.py).

Logical resources: 8 CPUs on a 2-core box so that 2-3 LLM replicas (1 logical
CPU each, 1 torch thread each) plus the ingress fit.
"""

from __future__ import annotations

import os
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cluster():
    """``(base_url)`` of Serve's HTTP proxy on a fresh local Ray cluster."""
    # Autoscaling metrics every 0.5 s instead of 10 s, so scale-down tests take seconds.
    os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
    # Ray's proxy answers 500 to non-UTF-8 session/request-id headers; our guard makes that a 400.
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "deployments.proxy_guard:proxy_middlewares")
    import ray
    from ray import serve

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    port = _free_port()
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
    import shutil
    import subprocess
    import time

    if shutil.which("redis-server") is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], env=env, check=True, capture_output=True)
    import redis

    port, data = _free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.time() + 20
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start (exit code {proc.poll()})") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
