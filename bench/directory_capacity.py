"""Issue 12: how many warm turns per second one session directory takes. Every replica's
turns go through the same actor (deployments/sessions/directory.py): a lease
(``begin_turn``) at the start and a durable commit (``commit``, batched into the session
log) before the final chunk. This drives a real directory actor on a local Ray
cluster, closed loop, from ``--clients`` concurrent callers, each running its sessions'
turns back to back (begin_turn -> commit with a record of ``--window`` token ids), and
reports turns/s and the directory process's CPU per turn, per setting, side by side in
three modes: ``single`` (a call per commit), ``batched`` (the replicas' batched commits,
deployments/replica/commit.py) and ``unleased`` (batched, and a session's turns after its
first start without ``begin_turn``, as a replica's warm turns do: LocalSessions.warm_grant).
No engine and no HTTP: the ceiling the directory alone puts on the whole service.

    python bench/directory_capacity.py --json bench/results/directory_capacity.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from bench.common import header, save_plot  # noqa: E402
from deployments.messages import Commit, CommittedTurn  # noqa: E402
from deployments.replica.commit import CommitBatcher  # noqa: E402
from deployments.sessions.directory import directory_handle  # noqa: E402
from swiftinfer_core.protocol import SessionRecord, Usage  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / TICK


REPLICAS = 4  # callers share these replica ids (and, batched, each replica's CommitBatcher)


MODES = {"single": "one call each (directory.commit)", "batched": "batched (replica/commit.CommitBatcher)",
         "unleased": "batched, warm turns without begin_turn (replica/local_sessions.warm_grant)"}


async def _client(d, rid: str, batcher: CommitBatcher | None, sessions: list[str], window: int, stop: float,
                  unleased: bool) -> int:
    done = 0
    seqs: dict[str, int] = {}  # unleased: the seq this caller committed last
    while time.monotonic() < stop:
        for sid in sessions:
            if unleased and sid in seqs:
                seq = seqs[sid]
            else:
                seq = (await d.begin_turn.remote(sid, rid, None)).seq
            record = SessionRecord(sid, [1, 2, 3, 4], list(range(window)), [7], 4 + window + seq, seq + 1)
            turn = CommittedTurn(None, "stop", "a reply", Usage(12, 24, 12, window))
            if batcher is not None:
                ok = await batcher.commit(Commit(sid, seq, record, None, turn))
            else:
                ok = await d.commit.remote(sid, rid, seq, record, None, turn)
            if not ok:
                raise RuntimeError(f"commit of {sid} at {seq} refused")
            seqs[sid] = seq + 1
            done += 1
    return done


async def _measure(d, pid: int, clients: int, window: int, seconds: float, mode: str) -> dict:
    sids = [[f"s{c}-{i}-{uuid.uuid4().hex[:6]}" for i in range(4)] for c in range(clients)]
    batched = mode != "single"
    batchers = [CommitBatcher(d, f"r{r}") if batched else None for r in range(REPLICAS)]

    def callers(stop: float):
        return [_client(d, f"r{c % REPLICAS}", batchers[c % REPLICAS], s, window, stop, mode == "unleased")
                for c, s in enumerate(sids)]
    await asyncio.gather(*callers(time.monotonic() + 1.0))  # warm
    calls0 = sum(b.calls for b in batchers if b is not None)
    c0, t0 = _cpu_s(pid), time.monotonic()
    turns = await asyncio.gather(*callers(t0 + seconds))
    wall, cpu = time.monotonic() - t0, _cpu_s(pid) - c0
    n = sum(turns)
    commit_calls = sum(b.calls for b in batchers if b is not None) - calls0 if batched else n
    return {"mode": mode, "commits": MODES[mode], "clients": clients, "window": window, "turns": n, "wall_s": wall, "turns_per_s": n / wall,
            "commits_per_call": n / max(1, commit_calls), "directory_cpu_ms_per_turn": 1e3 * cpu / max(1, n),
            "directory_cores": cpu / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--windows", type=int, nargs="+", default=[124, 1020])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--json", type=Path, default=Path("bench/results/directory_capacity.json"))
    a = ap.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"name": f"dircap-{uuid.uuid4().hex[:6]}", "log": {"backend": "sqlite", "path": f"{tmp}/log.sqlite3"},
                "lease_stale_s": 60.0, "lease_timeout_s": 600.0}
        d = directory_handle(spec)
        pid = ray.get(d.log_stats.remote())["pid"]
        out = {**header(), "log": "sqlite (the default backend), one file on this machine's disk", "rows": []}
        for w in a.windows:
            for c in a.clients:
                for mode in a.modes:  # side by side, alternating
                    row = asyncio.run(_measure(d, pid, c, w, a.seconds, mode))
                    out["rows"].append(row)
                    print(f"window {w:5d} clients {c:4d} {mode:8}: {row['turns_per_s']:7.0f} "
                          f"turns/s, {row['commits_per_call']:.1f} commits per call, directory "
                          f"{row['directory_cpu_ms_per_turn']:.2f} CPU ms per turn ({row['directory_cores']:.2f} cores)", flush=True)
        out["log_stats"] = ray.get(d.log_stats.remote())
        ray.kill(d, no_restart=True)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for w in a.windows:
        for mode, style in zip(a.modes, ("--", "-", ":")):
            rows = [r for r in out["rows"] if r["window"] == w and r["mode"] == mode]
            ax.plot([r["clients"] for r in rows], [r["turns_per_s"] for r in rows], style, marker="o", label=f"{w} window ids, {mode}")
    ax.set_xscale("log")
    ax.set_xlabel("concurrent callers (closed loop)")
    ax.set_ylabel("warm turns/s")
    ax.set_title(f"One session directory, {os.cpu_count()} cores")
    ax.legend()
    save_plot(a.json.stem, fig, str(a.json.parent))


if __name__ == "__main__":
    main()
