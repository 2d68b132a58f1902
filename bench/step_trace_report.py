"""Summarise engine step traces (EngineConfig.step_trace, engine/step_trace.py).

Per step path (graph / piecewise / eager / split): how many steps, their host
milliseconds (whole step, model run + sampling, postprocessing) at p50 / p99, and
the decode rows and chunk tokens they carried; pure decode steps against mixed
steps by decode rows; per turn (warm and cold apart): milliseconds from arrival to
being scheduled, steps its input took, milliseconds to its first token. A trace
is cut into segments where the engine idled (one per load run); each gets its own
summary. Writes NAME.json and NAME.png.

    python bench/step_trace_report.py TRACE.jsonl [...] --name step_trace --out DIR [--labels N=32 N=128]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def spread(xs: list[float]) -> dict:
    return {"n": len(xs), "p50": pct(xs, 0.5), "p99": pct(xs, 0.99), "mean": sum(xs) / len(xs) if xs else None}


def summarise(records: list[dict]) -> dict:
    steps = [r for r in records if r["kind"] == "step"]
    turns = [r for r in records if r["kind"] == "turn"]
    by_path: dict[str, list[dict]] = defaultdict(list)
    for s in steps:
        by_path[s["path"]].append(s)
    paths = {
        p: {"steps": len(ss), "share_of_time": sum(s["ms"] for s in ss) / max(1e-9, sum(s["ms"] for s in steps)),
            "ms": spread([s["ms"] for s in ss]), "run_ms": spread([s["run_ms"] for s in ss]),
            "post_ms": spread([s["post_ms"] for s in ss]), "schedule_ms": spread([s["schedule_ms"] for s in ss]),
            "decode_rows": spread([s["decode"] for s in ss]), "chunk_tokens": spread([s["chunk_tokens"] for s in ss])}
        for p, ss in sorted(by_path.items())
    }
    # step time by decode rows (buckets of 32), pure decode against mixed
    rows: dict[tuple[str, int], list[float]] = defaultdict(list)
    for s in steps:
        rows[("mixed" if s["chunks"] else "decode", 32 * (s["decode"] // 32))].append(s["ms"])
    by_rows = [{"kind": k, "decode_rows_from": b, **spread(v)} for (k, b), v in sorted(rows.items())]
    out_turns = {}
    for warm in (True, False):
        ts = [t for t in turns if t["warm"] is warm]
        out_turns["warm" if warm else "cold"] = {
            "queue_ms": spread([t["queue_ms"] for t in ts]), "steps": spread([t["steps"] for t in ts]),
            "first_token_ms": spread([t["first_token_ms"] for t in ts]), "input_tokens": spread([t["input_tokens"] for t in ts]),
        }
    total_ms = sum(s["ms"] for s in steps)
    return {
        "steps": len(steps), "turns": len(turns), "paths": paths, "by_decode_rows": by_rows, "turn_first_token": out_turns,
        "host_shares": {k: sum(s[k] for s in steps) / max(1e-9, total_ms) for k in ("schedule_ms", "run_ms", "post_ms")},
    }


def segments(recs: list[dict], gap_s: float) -> list[list[dict]]:
    """One trace's records cut where the engine idled longer than gap_s (between load runs)."""
    out: list[list[dict]] = []
    last = None
    for r in recs:
        if r["kind"] == "step":
            if last is None or r["t"] - last > gap_s:
                out.append([])
            last = r["t"]
        if out:
            out[-1].append(r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", nargs="+", type=Path)
    ap.add_argument("--name", default="step_trace")
    ap.add_argument("--labels", nargs="*", default=[], help="one per segment (a load run, e.g. N=32), in order")
    ap.add_argument("--gap-s", type=float, default=1.5, help="an engine idle this long ends a segment")
    ap.add_argument("--min-steps", type=int, default=20, help="shorter segments are dropped (stray requests)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    segs = []
    for path in a.traces:
        recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        segs += [sg for sg in segments(recs, a.gap_s) if sum(r["kind"] == "step" for r in sg) >= a.min_steps]
    labels = a.labels + [f"segment {i}" for i in range(len(a.labels), len(segs))]
    if len(a.labels) not in (0, len(segs)):
        print(f"warning: {len(segs)} segments, {len(a.labels)} labels", file=sys.stderr)
    out = [{"label": lab, **summarise(sg)} for lab, sg in zip(labels, segs)]
    common.write_results(a.name, {"traces": [str(p) for p in a.traces], "gap_s": a.gap_s, "segments": out}, a.out)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for lab, sg in zip(labels, segs):
        for kind in ("decode", "mixed"):
            pts = [(r["decode"], r["ms"]) for r in sg if r["kind"] == "step" and bool(r["chunks"]) == (kind == "mixed")]
            if pts:
                ax1.scatter(*zip(*pts), s=3, alpha=0.3, label=f"{lab} {kind}")
        xs = sorted(t["first_token_ms"] for t in sg if t["kind"] == "turn" and t["warm"])
        if xs:
            ax2.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=lab)
    ax1.set_xlabel("decode rows in the step")
    ax1.set_ylabel("step, ms (host wall time)")
    ax1.legend(fontsize=7, markerscale=4)
    ax2.set_xlabel("warm turn: engine arrival -> first token, ms")
    ax2.set_ylabel("fraction of warm turns")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.suptitle(f"engine step traces ({common.device_info().get('name')})")
    common.save_plot(a.name, fig, a.out)
    for seg in out:
        print(f"-- {seg['label']}: {seg['steps']} steps, host shares " + ", ".join(f"{k} {v:.0%}" for k, v in seg["host_shares"].items()))
        for p, v in seg["paths"].items():
            print(f"  {p:10s} {v['steps']:6d} steps ({v['share_of_time']:.0%} of time)  ms p50/p99 {v['ms']['p50']:.2f}/{v['ms']['p99']:.2f}  "
                  f"post p50 {v['post_ms']['p50']:.2f}  decode rows p50 {v['decode_rows']['p50']}  chunk tokens p50 {v['chunk_tokens']['p50']}")
        for k, v in seg["turn_first_token"].items():
            if v["first_token_ms"]["n"]:
                print(f"  {k} turns {v['first_token_ms']['n']}: queue p50/p99 {v['queue_ms']['p50']:.1f}/{v['queue_ms']['p99']:.1f} ms, "
                      f"steps p50/p99 {v['steps']['p50']}/{v['steps']['p99']}, first token p50/p99 "
                      f"{v['first_token_ms']['p50']:.1f}/{v['first_token_ms']['p99']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
