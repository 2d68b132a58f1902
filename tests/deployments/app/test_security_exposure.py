"""Safe defaults (issue 13): which hosts count as loopback, the refusal rules,
and the refusal itself on a real Ray cluster whose Serve proxy listens on 0.0.0.0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_security_loopback_detection_and_refusal_rules():
    from deployments.app.builder import parse_config
    from deployments.app.exposure import ExposureError, check_exposure, is_loopback

    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.1.2.3", "192.168.0.10", "8.8.8.8", "no-such-host.invalid"):
        assert not is_loopback(host), host
    open_cfg = parse_config({})
    with pytest.raises(ExposureError, match="refusing to start"):
        check_exposure(open_cfg, "0.0.0.0")
    check_exposure(open_cfg, "127.0.0.1")  # loopback: keys optional
    check_exposure(parse_config({"auth": {"keys_file": "/k.json"}}), "0.0.0.0")
    check_exposure(parse_config({"auth": {"allow_unauthenticated": True}}), "0.0.0.0")  # allowed, with a warning
    with pytest.raises(ValueError, match="Extra inputs"):
        parse_config({"auth": {"api_key": "plain"}})  # no place for a plain key in the config


REFUSAL = r"""
import json, logging, socket, sys
import ray
from ray import serve
from deployments.app.builder import build_app
logging.getLogger("ray.serve").addHandler(handler := logging.StreamHandler(sys.stdout))
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
serve.start(http_options={"host": "0.0.0.0", "port": port})
out = {}
try:
    build_app({"engine": {"device": "cpu"}})
    out["keyless"] = "built"
except ValueError as exc:
    out["keyless"] = str(exc)
build_app({"engine": {"device": "cpu"}, "auth": {"allow_unauthenticated": True}})
out["allowed"] = "built"
print("RESULT " + json.dumps(out))
serve.shutdown(); ray.shutdown()
"""


@pytest.mark.timeout(300)
def test_security_refuses_keyless_start_on_a_non_loopback_address(tmp_path):
    """Its own Ray cluster with Serve's proxy on 0.0.0.0 (the shared one listens on 127.0.0.1).
    The child runs in the repository root, where ``deployments`` is the package (in tests/ it
    would be the tests' folder of that name)."""
    proc = subprocess.run([sys.executable, "-c", REFUSAL], cwd=Path(__file__).resolve().parents[3], capture_output=True,
                          text=True, timeout=280, env={**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "RAY_USAGE_STATS_ENABLED": "0"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(line[len("RESULT "):])
    assert out["keyless"].startswith("refusing to start") and "'0.0.0.0'" in out["keyless"], out
    assert out["allowed"] == "built" and "SECURITY WARNING" in proc.stdout, proc.stdout[-2000:]
