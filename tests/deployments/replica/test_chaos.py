"""Chaos under steady load (real Ray, real model, real HTTP): a replica process
is SIGKILLed, then the Serve controller is killed (Ray restarts it), then the
whole application is restarted (deleted, its directory killed for good,
deployed again on the same SQLite log). Every session must finish all its
rounds and the session log must hold every turn exactly once.

The load is bench/load.py's own client (Idempotency-Key per turn, retries on
failures), so this is also the load generator's end-to-end test. The run's
numbers go to $SWIFTINFER_CHAOS_RESULTS (bench/results/chaos_cpu.json to refresh
the committed ones), else to a temporary file, so a test run leaves the tree clean.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray import serve

from serve_helpers import app_config, deploy, wait_for

from bench.load import LoadSpec, Progress, run_load  # the repository root is on sys.path (pytest's pythonpath)

APP, DIRECTORY = "chaos", "chaos-sessions"
SESSIONS, ROUNDS = 8, 12
FAULT_AT = (18, 42, 66)  # acknowledged turns before each fault


def _directory():
    return ray.get_actor(DIRECTORY, namespace="swiftinfer")


def _kill_busiest_replica() -> str:
    """SIGKILL the process of the replica owning most sessions (same machine)."""
    owners = ray.get(_directory().owners.remote())
    stats = ray.get(_directory().replica_stats.remote(10.0))
    victim = max(stats, key=lambda rid: owners.get(rid, 0))
    os.kill(stats[victim].pid, signal.SIGKILL)
    return victim


def _kill_controller() -> None:
    ray.kill(ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve"), no_restart=False)


def _restart_app(config: dict) -> None:
    serve.delete(APP)  # replicas drain; sessions are handed back to the directory
    ray.kill(_directory(), no_restart=True)  # everything in memory is gone: only the log remains
    deploy(APP, config)  # a new directory reloads every session from the log


def test_chaos_replica_controller_and_app_restart_lose_no_turn(cluster):
    config = app_config(
        DIRECTORY, scaling={"min_replicas": 2, "max_replicas": 2}, graceful_shutdown_timeout_s=3,
        stats_report_period_s=0.5, owner_grace_s=1.5, routing_stats_period_s=0.5,
    )
    prefix = deploy(APP, config)
    spec = LoadSpec(f"{cluster}{prefix}", sessions=SESSIONS, rounds=ROUNDS, rate=8.0, max_tokens=6, prompt_words=8,
                    retry_s=150.0, timeout_s=60.0, prefix="chaos", cleanup=False)
    progress, out = Progress(), {}
    runner = threading.Thread(target=lambda: out.setdefault("result", asyncio.run(run_load(spec, progress))))
    t0 = time.time()
    runner.start()

    faults = []
    for threshold, (name, act) in zip(FAULT_AT, (
        ("replica_sigkill", _kill_busiest_replica),
        ("controller_kill", _kill_controller),
        ("app_restart", lambda: _restart_app(config)),
    )):
        wait_for(lambda: progress.turns_done >= threshold or not runner.is_alive(), 240, f"{threshold} turns before {name}", 0.2)
        assert runner.is_alive(), "the load ended before the faults"
        started = time.time()
        detail = act()
        faults.append({"fault": name, "after_turns": progress.turns_done, "at_s": round(started - t0, 1),
                       "took_s": round(time.time() - started, 1), "detail": detail})
    runner.join(400)
    assert not runner.is_alive(), "the load did not finish"
    result = out["result"]
    turns, summary, audit = result.pop("_turns"), result["summary"], result["audit"]
    result.pop("_t_start")

    recovered = audit["sessions_recovered"]
    report = {"meta": result["meta"], "faults": faults, "summary": summary, "audit": audit,
              "turns_by_cache": summary["cache"], "recovered_sessions": recovered, "wall_s": round(time.time() - t0, 1)}
    out = Path(os.environ.get("SWIFTINFER_CHAOS_RESULTS") or Path(tempfile.gettempdir()) / "swiftinfer_chaos_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    msg = f"chaos: {recovered} of {SESSIONS} sessions recovered; faults {faults}; summary {summary}; audit {audit}"
    print(msg)

    assert summary["turns_ok"] == SESSIONS * ROUNDS and summary["turns_failed"] == 0, msg
    assert audit["log_turns"] == SESSIONS * ROUNDS, msg
    for key in ("lost", "duplicated", "out_of_order", "unacknowledged_committed", "rounds_mismatch", "sessions_missing"):
        assert audit[key] == 0, (key, msg)
    assert summary["retries"] > 0 and summary["cache"].get("rebuilt", 0) > 0, msg  # the faults did hit turns
    assert recovered == SESSIONS, msg  # the app restart moved every session at least once
    assert all(t.ok for t in turns)
    serve.delete(APP)
