"""Start a private local Ray cluster with the Serve app, for benches on one box.

    python bench/serve_local.py --port 8000 --replicas 2 --window 252 --max-sessions 16 [--log redis://...]
    python bench/serve_local.py --model DIR --load-format random   # a tiny random model: the serving stack's own cost

Runs until interrupted (Ctrl-C or SIGTERM), then deletes the app and stops
its own Ray (never another cluster on the machine: ``address="local"``).
Prints ``READY <url>`` once the app answers. The GPU machine uses
``serve run serve_config.yaml`` instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--window", type=int, default=252)
    p.add_argument("--max-sessions", type=int, default=16)
    p.add_argument("--model", default="default", help="checkpoint folder (default: SmolLM2-135M)")
    p.add_argument("--load-format", default="auto", choices=["auto", "random"], help="random: weights drawn from config.json alone")
    p.add_argument("--max-ongoing", type=int, default=None, help="turns one replica runs at once (Serve's max_ongoing_requests)")
    p.add_argument("--log", default=None, help="redis://host:port/db for the Redis log; default: a fresh SQLite file")
    p.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the private Ray cluster")
    a = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from deployments.app.builder import build_app

    session_log = {"backend": "redis", "redis_url": a.log} if a.log else {"path": tempfile.mkstemp(suffix=".sqlite3")[1]}
    config = {
        "engine": {"model": a.model, "load_format": a.load_format, "device": "cpu", "window": a.window, "max_sessions": a.max_sessions, "max_turn_tokens": 2048},
        "scaling": {"min_replicas": a.replicas, "max_replicas": a.replicas}, "cpu_threads": 1,
        "directory_name": f"bench-{os.getpid()}", "session_log": session_log,
    }
    if a.max_ongoing:
        config["max_ongoing_requests"] = a.max_ongoing
    with socket.socket() as probe:  # Serve's proxy binds with SO_REUSEPORT: a second cluster would share the port silently
        if probe.connect_ex(("127.0.0.1", a.port)) == 0:
            sys.exit(f"port {a.port} is already served (another serve_local?): stop it first")
    ray.init(address="local", num_cpus=a.num_cpus, include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": a.port})
        serve.run(build_app(config), name="swiftinfer", route_prefix="/")
        print(f"READY http://127.0.0.1:{a.port}", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
