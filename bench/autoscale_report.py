"""What bench/autoscale_ramp.py derives from its samples, events and turns.

- ``decisions`` / ``first_tokens``: per replica that joined, the policy's decision
  to add it, its first report in /v1/cluster, its first generated tokens.
- ``handover``: the closing return phase's view of the scale-down: how the
  conversations last served by a drained replica found their cache.

    python bench/autoscale_report.py FILE.json...   # recompute replica_start of stored runs
"""

from __future__ import annotations

import json
import sys
from collections import Counter, deque
from pathlib import Path

HANDOVER_KINDS = ("migrated", "rebuilt", "warm", "new")


def decisions(events: list[dict]) -> list[float]:
    """Wall times of the policy's scale-up decisions, one per replica asked for.

    Serve's status is polled (one ``deployment`` event per poll), so a decision is
    seen as: the first event of an UPSCALING episode, one per replica it shows
    STARTING (at least one), then each rise of the STARTING count within the
    episode (a rise by k: k decisions at that event). Any other status ends the
    episode. A replica that Serve starts and stops between two polls is never seen."""
    out: list[float] = []
    starting: int | None = None  # STARTING count of the episode's last event; None: no episode
    for e in sorted(events, key=lambda e: e.get("t", 0)):
        if e.get("kind") != "deployment":
            continue
        if e.get("status") != "UPSCALING":
            starting = None
            continue
        now = (e.get("replica_states") or {}).get("STARTING", 0)
        rise = max(1, now) if starting is None else max(0, now - starting)
        out += [e["t"]] * rise
        starting = now
    return out


def _first_seen(samples: list[dict]) -> dict[str, dict]:
    """replica -> wall time of its first sample, and of its first with tokens generated (None: never)."""
    seen: dict[str, dict] = {}
    for s in samples:
        for rid, r in s["replicas"].items():
            first = seen.setdefault(rid, {"report": s["wall"], "tokens": None})
            if first["tokens"] is None and r["tokens_generated"]:
                first["tokens"] = s["wall"]
    return seen


def _joined_at(events: list[dict]) -> dict[str, float]:
    return {e["replica"]: e["t"] for e in reversed(events) if e.get("kind") == "replica_joined"}


def first_tokens(samples: list[dict], events: list[dict]) -> dict[str, dict]:
    """Per replica: seconds from the decision that added it to its first sample (its
    start-up), and from each to the first sample where it had generated tokens
    (None: never did; a replica that joins between phases waits for new
    conversations, so this includes that wait).

    Replicas seen before the first decision (the initial ones) have no decision.
    The others, in order of first appearance (ties: the directory's join time),
    take the decisions first in, first out; a decision later than a replica's
    first sample cannot be its cause (None). Samples are ``--sample-s`` apart and
    decisions are seen when the ingress polls Serve, so both ends are that coarse."""
    seen, joined, queue = _first_seen(samples), _joined_at(events), deque(decisions(events))
    first_decision = queue[0] if queue else float("inf")
    order = sorted(seen, key=lambda rid: (seen[rid]["report"], joined.get(rid, float("inf")), rid))
    out = {}
    for rid in order:
        report, served = seen[rid]["report"], seen[rid]["tokens"]
        decided = queue.popleft() if report >= first_decision and queue and queue[0] <= report else None
        out[rid] = {"decision_to_report_s": None if decided is None else report - decided,
                    "report_to_tokens_s": None if served is None else served - report,
                    "decision_to_tokens_s": None if served is None or decided is None else served - decided}
    return out


def handover(events: list[dict], last: dict[str, str], returns: dict[str, dict]) -> dict:
    """The return phase's count of hand-overs.

    ``last``: conversation -> replica of its last acknowledged turn before the return
    phase. ``returns``: conversation -> ``{"ok", "cache", "due_wall"}`` of its return
    turn (absent: not sent before the phase's deadline). A conversation counts as
    handed over when its replica drained before its return turn was due; ``cache``
    is how those return turns found the conversation (``migrated``: KV imported,
    ``rebuilt``: from the log), ``not_returned`` those whose return turn failed or
    was never sent."""
    drained = {e["replica"]: e["t"] for e in events if e.get("kind") == "replica_drained"}
    moved = [c for c, rid in last.items()
             if rid in drained and (c not in returns or drained[rid] < returns[c]["due_wall"])]
    back = [returns[c] for c in moved if c in returns and returns[c]["ok"]]
    kinds = Counter(r["cache"] for r in back)
    return {"sessions_drained": sum(e.get("sessions", 0) for e in events if e.get("kind") == "replica_drained"),
            "replicas_drained": sorted(drained),
            "conversations": len(last), "returned_ok": sum(r["ok"] for r in returns.values()),
            "returned_failed": sum(not r["ok"] for r in returns.values()),
            "not_sent": len(set(last) - set(returns)),
            "on_drained_replica": len(moved), "not_returned": len(moved) - len(back),
            "cache": {k: kinds.pop(k, 0) for k in HANDOVER_KINDS} | dict(kinds)}


def recompute(path: Path, command: str) -> dict:
    """Rewrite a stored run's ``replica_start`` from its own samples and events."""
    data = json.loads(path.read_text())
    data["replica_start"] = first_tokens(data["samples"], data["events"])
    data["replica_start_recomputed"] = command
    path.write_text(json.dumps(data, indent=1, default=str))  # common.write_results' format
    return data["replica_start"]


def main(argv: list[str]) -> int:
    command = " ".join(["python", "bench/autoscale_report.py", *argv])
    for name in argv:
        print(name, json.dumps(recompute(Path(name), command), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
