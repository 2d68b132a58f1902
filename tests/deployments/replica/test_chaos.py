"""Chaos under steady load (real Ray, real model, real HTTP), through bench/chaos.py, the
bench that runs the same on GPU replicas: a replica process is SIGKILLed, the Serve controller
is killed (Ray restarts it), the session directory is killed (Ray restarts it and it reloads
from the log), one replica's engine hits a device fault (Serve replaces the replica), and the
whole application is restarted (deleted, its directory killed for good, deployed again on the
same SQLite log). Every session must finish all its rounds and the session log must hold every
turn exactly once.

The load is bench/load.py's own client (Idempotency-Key per turn, retries on failures), so
this is also the load generator's end-to-end test. The run's numbers go to
$SWIFTINFER_CHAOS_RESULTS (bench/results/chaos_cpu.json to refresh the committed ones), else to
a temporary file, so a test run leaves the tree clean.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ray import serve
from serve_helpers import app_config

from bench.chaos import (  # the repository root is on sys.path (pytest's pythonpath)
    FAULTS,
    ChaosApp,
    run_chaos,
)
from bench.load import LoadSpec

SESSIONS, ROUNDS = 8, 12


def test_chaos_every_fault_loses_no_turn(cluster):
    config = app_config(
        "chaos-sessions", scaling={"min_replicas": 2, "max_replicas": 2}, graceful_shutdown_timeout_s=3,
        stats_report_period_s=0.5, owner_grace_s=1.5, routing_stats_period_s=0.5,
    )
    app = ChaosApp("chaos", config, "/chaos")
    app.deploy()
    spec = LoadSpec(f"{cluster}/chaos", sessions=SESSIONS, rounds=ROUNDS, rate=8.0, max_tokens=6, prompt_words=8,
                    retry_s=150.0, timeout_s=60.0, prefix="chaos", cleanup=False)
    # the restart in the middle: every session still has rounds to go when the app is back
    order = ["replica_sigkill", "controller_kill", "app_restart", "directory_kill", "device_fault"]
    assert sorted(order) == sorted(FAULTS)
    result = run_chaos(app, spec, order, wait_s=400)
    turns, t_start = result.pop("_turns"), result.pop("_t_start")
    summary, audit, faults = result["summary"], result["audit"], result["faults"]
    recovered = audit["sessions_recovered"]
    report = {"meta": result["meta"], "faults": faults, "summary": summary, "audit": audit,
              "turns_by_cache": summary["cache"], "recovered_sessions": recovered, "wall_s": result["wall_s"]}
    out = Path(os.environ.get("SWIFTINFER_CHAOS_RESULTS") or Path(tempfile.gettempdir()) / "swiftinfer_chaos_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    msg = f"chaos: {recovered} of {SESSIONS} sessions recovered; faults {faults}; summary {summary}; audit {audit}"
    print(msg)

    assert [f["fault"] for f in faults] == order, msg  # every fault was applied under load
    assert summary["turns_ok"] == SESSIONS * ROUNDS and summary["turns_failed"] == 0, msg
    assert audit["log_turns"] == SESSIONS * ROUNDS, msg
    for key in ("lost", "duplicated", "out_of_order", "unacknowledged_committed", "rounds_mismatch", "sessions_missing"):
        assert audit[key] == 0, (key, msg)
    assert summary["retries"] > 0 and summary["cache"].get("rebuilt", 0) > 0, msg  # the faults did hit turns
    restart = next(f for f in faults if f["fault"] == "app_restart")
    # every session talking once the app was back rebuilt its cache (all KV died with the app):
    # its first turn served by a replica of the new app is "rebuilt". A turn sent while
    # serve.delete drained the old app may still be served, warm, by an old replica (a
    # full-suite run saw that), so turns of replicas that served before the restart are
    # left out. (The audit's "recovered" flag is not used: a directory restarted later
    # reloads records from the log without their move counts.)
    began, back = t_start + restart["at_s"], t_start + restart["at_s"] + restart["took_s"]
    talking_after = {t.session_id for t in turns if t.scheduled > back}
    assert all(t.replica for t in turns if t.ok), msg  # every final chunk names its replica
    old_app = {t.replica for t in turns if t.ok and t.done <= began}
    first_new: dict[str, str] = {}
    for t in sorted((t for t in turns if t.ok and t.sent > began and t.replica not in old_app), key=lambda t: t.sent):
        first_new.setdefault(t.session_id, t.cache)
    assert talking_after and all(first_new.get(sid) == "rebuilt" for sid in talking_after), (first_new, msg)
    by_name = {f["fault"]: f for f in faults}
    # no finished turn was refused at commit: its commit waits for a restarting directory, which
    # accepts it without the lease it lost (the directory kill used to make turns run twice)
    assert summary["attempt_errors"].get("sse_turn_not_committed", 0) == 0, msg
    for name in ("replica_sigkill", "device_fault"):  # a replica lost: its conversations were served again
        assert by_name[name]["affected_sessions"] > 0 and by_name[name]["all_served_again_s"] is not None, msg
    assert all(t.ok for t in turns)
    serve.delete("chaos")
