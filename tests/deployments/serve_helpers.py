"""Helpers for the deployment tests: deploy the real app, talk HTTP, find replicas."""

from __future__ import annotations

import socket
import tempfile
import time
import uuid
from pathlib import Path

import httpx

MODEL_ID = "smollm2-135m-instruct"
# Small caches and short turns: tests must stay fast on 2 cores.
ENGINE = {"device": "cpu", "sink_tokens": 4, "window": 60, "max_sessions": 16, "max_turn_tokens": 256}


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_path(directory: str) -> str:
    """A fresh SQLite session log per app: runs never reload each other's sessions."""
    return str(Path(tempfile.gettempdir()) / "swiftinfer-tests" / f"{directory}-{uuid.uuid4().hex[:8]}.sqlite3")


def app_config(directory: str, **overrides) -> dict:
    cfg = {"model_id": MODEL_ID, "engine": dict(ENGINE), "directory_name": directory, "default_max_tokens": 8,
           "session_log": {"path": log_path(directory)}}
    cfg.update(overrides)
    return cfg


def deploy(name: str, config: dict, wait: bool = True) -> str:
    """Deploy ``build_app(config)`` as app ``name`` at ``/name``; returns the route prefix."""
    from ray.serve.api import _run

    from deployments.app.builder import build_app

    _run(build_app(config), name=name, route_prefix=f"/{name}", _blocking=wait)
    return f"/{name}"


def chat(client: httpx.Client, prefix: str, messages: list[dict], session_id: str | None = None, **params) -> httpx.Response:
    body = {"model": MODEL_ID, "messages": messages, "max_tokens": 8, "temperature": 0, **params}
    if session_id is not None:
        body["session_id"] = session_id
    return client.post(f"{prefix}/v1/chat/completions", json=body)


def replica_actors(app: str) -> dict[str, object]:
    """Serve replica id -> actor handle of the app's LLM replicas."""
    import ray

    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        name = a["name"]
        if name.startswith(f"SERVE_REPLICA::{app}#LLMReplica#"):
            out[name.rsplit("#", 1)[1]] = ray.get_actor(name, namespace=a["namespace"])
    return out


def wait_for(predicate, timeout_s: float, what: str, period_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
