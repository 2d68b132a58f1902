"""Chaos under steady closed-loop load (issue 17), on CUDA replicas or on the CPU.

    python bench/chaos.py --config bench/serve_gpu7b_shared.yaml --replicas 2 --sessions 48 --rounds 12 --settle-s 240 \\
        --faults replica_sigkill,controller_kill,directory_kill,device_fault,app_restart --out bench/results --name chaos_gpu_7b

Starts a local Ray cluster and Serve, deploys the config file's application (its ``args``
through deployments.app.builder.build_app, replicas pinned to ``--replicas``), drives it with
bench/load.py's client (every turn has an Idempotency-Key and is retried until acknowledged;
all conversations start at once and send their next turn as soon as a reply ends), and applies
each fault once an equal share of the turns has been acknowledged (and, with ``--settle-s``,
once every pinned replica runs again after the previous fault, so faults do not pile up):

- replica_sigkill: SIGKILL the process of the replica that owns the most sessions;
- controller_kill: kill Serve's controller (Ray restarts it);
- directory_kill: kill the session directory (Ray restarts it; it reloads from the session log);
- device_fault: the next step of the busiest replica's engine runs on an out-of-range cache slot
  (swiftinfer_core/engine/faults.py: an illegal memory access on a GPU), so Serve must replace it;
- app_restart: delete the application, kill its directory for good, deploy it again on the same log.

Reported (JSON + PNG): per fault, when it hit, the turns in flight then, the conversations it
affected (a turn retried across it or served from a rebuilt cache) and the seconds until each of them was served again; the load's
summary; the audit of every acknowledged turn against the session log (lost, duplicated).
tests/deployments/replica/test_chaos.py runs the same on the CPU with the default model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `deployments` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chaos_faults import (  # re-exported: tests import them from here
    FAULTS,
    ChaosApp,
    settle,
)
from bench.load import LoadSpec, Progress, run_load
from bench.load_client import TurnResult


@dataclass
class FaultRecord:
    fault: str
    after_turns: int
    at: float  # perf_counter when it was applied
    took_s: float
    detail: str
    settled_s: float | None  # waited for the replicas before it (None: gave up waiting)
    affected: dict[str, float] = field(default_factory=dict)  # session -> seconds until served again


def affected_sessions(turns: list[TurnResult], at: float, until: float) -> dict[str, float]:
    """Sessions a fault at ``at`` hit: a turn of theirs needed more than one attempt, or was
    served from a cache rebuilt from the log (a lost replica's conversations: the ingress
    resends a turn that had not started streaming, so the client sees one attempt, but the KV
    is gone). The turn was in flight at ``at``, or started after it and done by ``until``
    (the next fault; a turn started after ``at`` and still in flight at ``until`` met that
    fault and counts there only, else one slow turn would show as every earlier fault's
    recovery time). Each with the seconds from ``at`` until that turn's reply ended (the
    conversation served again)."""
    out: dict[str, float] = {}
    for t in turns:
        hit = t.attempts > 1 or t.cache == "rebuilt"
        if t.ok and hit and t.done > at and t.scheduled < until and (t.scheduled <= at or t.done <= until):
            out[t.session_id] = max(out.get(t.session_id, 0.0), t.done - at)
    return out


def in_flight(turns: list[TurnResult], at: float) -> int:
    return sum(1 for t in turns if t.scheduled <= at < (t.done if t.done else float("inf")))


def run_chaos(app: ChaosApp, spec: LoadSpec, faults: list[str], wait_s: float = 600.0,
              replicas: int = 2, settle_s: float = 0.0) -> dict:
    """Deployed ``app`` under ``spec``'s load; each fault after an equal share of the turns
    (and, with ``settle_s`` > 0, after ``replicas`` run again, waiting at most that long)."""
    progress, out = Progress(), {}
    runner = threading.Thread(target=lambda: out.setdefault("result", asyncio.run(run_load(spec, progress))))
    total = spec.sessions * spec.rounds
    t0 = time.perf_counter()
    runner.start()
    records: list[FaultRecord] = []
    for i, name in enumerate(faults):
        threshold = total * (i + 1) // (len(faults) + 1)
        while progress.turns_done < threshold and runner.is_alive():
            time.sleep(0.1)
        if not runner.is_alive():
            break  # the load ended early (a failed conversation): the audit says why
        settled = settle(app, replicas, settle_s) if settle_s > 0 else 0.0
        if not runner.is_alive():
            break
        at = time.perf_counter()
        rounds_done = Counter(t.session_id for t in list(progress.results) if t.ok)
        left = sorted(sid for sid, n in rounds_done.items() if n < spec.rounds)  # a finished conversation cannot be hit
        detail = FAULTS[name](app, left)
        records.append(FaultRecord(name, progress.turns_done, at, time.perf_counter() - at, str(detail), settled))
    runner.join(wait_s)
    if runner.is_alive():
        raise TimeoutError(f"the load did not finish within {wait_s} s of the last fault")
    result = out["result"]
    turns, t_start = result.pop("_turns"), result.pop("_t_start")
    for rec, nxt in zip(records, records[1:] + [None]):
        rec.affected = affected_sessions(turns, rec.at, nxt.at if nxt else float("inf"))
    result["faults"] = [{
        "fault": r.fault, "after_turns": r.after_turns, "at_s": round(r.at - t_start, 2), "took_s": round(r.took_s, 2),
        "detail": r.detail, "settled_s": r.settled_s, "turns_in_flight": in_flight(turns, r.at), "affected_sessions": len(r.affected),
        "all_served_again_s": round(max(r.affected.values()), 2) if r.affected else None,
        "served_again_s": sorted(round(v, 2) for v in r.affected.values()),  # one per affected session
    } for r in records]
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["_turns"], result["_t_start"] = turns, t_start
    return result


def plot(result: dict, turns: list[TurnResult], t_start: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    done = sorted(t.done - t_start for t in turns if t.ok)
    ax.plot(done, range(1, len(done) + 1), color="black", lw=1.2, label="turns acknowledged")
    for f in result["faults"]:
        ax.axvline(f["at_s"], color="red", ls=":")
        served = f["all_served_again_s"]
        ax.annotate(f"{f['fault']}\n{f['affected_sessions']} affected, all back in {served} s", (f["at_s"], 0),
                    rotation=90, fontsize=7, va="bottom", ha="right")
    a = result["audit"]
    ax.set_title(f"{result['meta'].get('name', 'chaos')}: {len(done)} turns, lost {a.get('lost')}, duplicated {a.get('duplicated')}",
                 fontsize=9)
    ax.set_xlabel("seconds")
    ax.set_ylabel("turns acknowledged")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, type=Path, help="a Serve config file; its first application is deployed")
    ap.add_argument("--replicas", type=int, default=2, help="LLM replicas, pinned (min = max)")
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--settle-s", type=float, default=0.0,
                    help="before each fault wait (at most this long) until every pinned replica runs again")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--name", default="chaos")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    faults = [f.strip() for f in a.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        ap.error(f"unknown faults {unknown}; choose from {sorted(FAULTS)}")
    spec_app = yaml.safe_load(a.config.read_text())["applications"][0]
    config = dict(spec_app["args"])
    config["scaling"] = {**config.get("scaling", {}), "min_replicas": a.replicas, "max_replicas": a.replicas}

    import ray
    from ray import serve

    from swiftinfer_core.engine import faults as fault_switch

    os.environ[fault_switch.ENV] = "1"  # inherited by the replicas this cluster starts: device_fault needs it
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    app = ChaosApp(spec_app.get("name", "swiftinfer"), config, spec_app.get("route_prefix", "/"))
    app.deploy()
    url = f"http://127.0.0.1:{a.port}{app.route_prefix.rstrip('/')}"
    spec = LoadSpec(url, sessions=a.sessions, rounds=a.rounds, rate=1e6, max_tokens=a.max_tokens, retry_s=300.0,
                    timeout_s=120.0, prefix=a.name, cleanup=False)
    result = run_chaos(app, spec, faults, replicas=a.replicas, settle_s=a.settle_s)
    turns, t_start = result.pop("_turns"), result.pop("_t_start")
    result["meta"]["name"], result["meta"]["command"] = a.name, " ".join(sys.argv)
    s, au = result["summary"], result["audit"]
    print(f"turns ok {s['turns_ok']} failed {s['turns_failed']} retries {s['retries']}; audit lost {au['lost']} "
          f"duplicated {au['duplicated']}; wall {result['wall_s']} s")
    for f in result["faults"]:
        print(f"{f['fault']:<16} at {f['at_s']:>7} s  affected {f['affected_sessions']:>3}  all served again in {f['all_served_again_s']} s")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / f"{a.name}.json").write_text(json.dumps(result, indent=2, default=str))
        plot(result, turns, t_start, a.out / f"{a.name}.png")
    serve.shutdown()
    ray.shutdown()
    return 0 if s["turns_failed"] == 0 and au["lost"] == 0 and au["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
