"""One table and one plot from a bench/gpu_served.sh run: the Serve stack against
the engine alone at the same N, in the same run (issue 12).

    python bench/served_report.py DIR NAME [--out DIR]

Reads DIR/NAME_engine.json (engine_batches.py --closed-loop) and every
DIR/NAME_<label>_<N>.json (load.py), writes NAME.json and NAME.png: per run,
tokens/s of both and their ratio, TTFT (new and warm conversations), time per
output token, and the replica's phase times (p50 of the last /metrics sample).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

PHASES = ("admit", "lease", "sync", "first_token", "commit")
HOPS = ("prepare", "route", "replica", "return")  # deployments.messages.IngressPhase
LEGS = ("start", "queue", "first", "pipe", "wake", "lag")  # swiftinfer_core.engine.handoff.Handoff


def rows(run_dir: Path, name: str) -> tuple[list[dict], dict]:
    engine_path = run_dir / f"{name}_engine.json"
    engine = json.loads(engine_path.read_text()) if engine_path.exists() else {"rows": []}
    by_n = {r["N"]: r for r in engine["rows"] if r.get("mode") == "closed_loop"}
    out = []
    for path in sorted(run_dir.glob(f"{name}_*_*.json")):
        m = re.fullmatch(rf"{re.escape(name)}_([a-z0-9]+)_(\d+)", path.stem)
        if m is None:
            continue
        s = json.loads(path.read_text())
        summary, samples = s["summary"], s.get("server_samples") or [{}]
        n, e = summary["sessions"], by_n.get(summary["sessions"], {})
        row = {"run": m.group(1), "N": n, "serve_tok_s": summary["tokens_per_s"], "engine_tok_s": e.get("tok_s"),
               "ratio": summary["tokens_per_s"] / e["tok_s"] if e.get("tok_s") else None,
               "serve_ttft_new_p50_s": summary["ttft_new_s"]["p50"], "serve_ttft_warm_p50_s": summary["ttft_warm_s"]["p50"],
               "serve_ttft_warm_p99_s": summary["ttft_warm_s"]["p99"], "engine_ttft_warm_p50_s": e.get("ttft_warm_p50_s"),
               "engine_ttft_warm_p99_s": e.get("ttft_warm_p99_s"), "serve_tpot_p50_s": summary["tpot_s"]["p50"],
               "engine_tpot_p50_s": e.get("tpot_p50_s"), "turns_failed": summary["turns_failed"],
               "audit": {k: s["audit"].get(k) for k in ("lost", "duplicated", "out_of_order")} if s.get("audit") else None}
        row.update({f"phase_{p}_p50_s": samples[-1].get(f"phase_{p}_p50") for p in PHASES})
        row.update({f"ingress_{p}_p50_s": samples[-1].get(f"ingress_{p}_p50") for p in HOPS})
        row.update({f"handoff_{leg}_{q}_s": samples[-1].get(f"handoff_{leg}_{q}") for leg in LEGS for q in ("p50", "p99")})
        row.update(host_cpu(run_dir / f"vmstat_{m.group(1)}_{n}.txt"))
        client = summary.get("client", {})  # load.py's own CPU and loop lag (absent before --client-procs)
        row.update({"client_procs": client.get("procs"), "client_busy_cores": client.get("busy_cores"),
                    "client_loop_lag_p99_s": client.get("loop_lag_p99_s")})
        out.append(row)
    measured = {k: engine.get(k) for k in ("date", "device", "versions", "model", "cache", "slots")}
    return sorted(out, key=lambda r: (r["run"], r["N"])), measured


def host_cpu(path: Path) -> dict:
    """Means of ``vmstat -n 2`` over a run (the first row, averages since boot, left out):
    percent user / system / idle / steal of the host's CPUs and the run queue."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    head = next((ln.split() for ln in lines if ln.split()[:2] == ["r", "b"]), None)
    if head is None:
        return {}
    rows = [ln.split() for ln in lines if ln.split() and ln.split()[0].isdigit()][1:]
    rows = [r for r in rows if len(r) == len(head)]
    if not rows:
        return {}
    mean = {k: sum(float(r[head.index(k)]) for r in rows) / len(rows) for k in ("r", "us", "sy", "id", "st") if k in head}
    return {"host_runq": mean.get("r"), "host_us": mean.get("us"), "host_sy": mean.get("sy"),
            "host_idle": mean.get("id"), "host_steal": mean.get("st")}


def plot(table: list[dict], name: str, title: str, out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    runs = sorted({r["run"] for r in table})
    for run in runs:
        rs = [r for r in table if r["run"] == run]
        a.plot([r["N"] for r in rs], [r["serve_tok_s"] for r in rs], marker="o", label=f"Serve stack ({run})")
        b.plot([r["N"] for r in rs], [r["serve_ttft_warm_p50_s"] for r in rs], marker="o", label=f"Serve warm TTFT p50 ({run})")
    eng = sorted({(r["N"], r["engine_tok_s"], r["engine_ttft_warm_p50_s"]) for r in table if r["engine_tok_s"]})
    a.plot([e[0] for e in eng], [e[1] for e in eng], marker="s", ls="--", color="k", label="engine alone")
    b.plot([e[0] for e in eng], [e[2] for e in eng], marker="s", ls="--", color="k", label="engine alone warm TTFT p50")
    a.set_ylabel("output tokens/s (closed loop)")
    b.set_ylabel("seconds")
    for ax in (a, b):
        ax.set_xlabel("conversations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    common.save_plot(name, fig, out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("name")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    table, measured = rows(Path(a.dir), a.name)
    common.write_results(a.name, {"measured": measured, "rows": table}, a.out)
    dev = (measured.get("device") or {}).get("name", "?")
    plot(table, a.name, f"{measured.get('model')}, cache {measured.get('cache')}, {measured.get('slots')} slots, {dev}, {measured.get('date')}", a.out)
    print(common.table(table, ["run", "N", "serve_tok_s", "engine_tok_s", "ratio", "serve_ttft_warm_p50_s", "engine_ttft_warm_p50_s",
                               "serve_tpot_p50_s", "engine_tpot_p50_s", "phase_admit_p50_s", "phase_first_token_p50_s", "turns_failed",
                               *(f"ingress_{p}_p50_s" for p in HOPS), *(f"handoff_{leg}_p50_s" for leg in LEGS), "host_steal", "host_idle",
                               "client_busy_cores", "client_loop_lag_p99_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
