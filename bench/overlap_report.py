"""Issue 12: the engine alone with and without overlapped postprocessing
(EngineConfig.overlap_postprocessing), from pairs of ``bench/engine_batches.py
--closed-loop --overlap / --no-overlap`` runs made back to back on one GPU: per pair
and N, tokens/s, time per output token and TTFT of both, and their ratios; one PNG.

    python bench/overlap_report.py --pairs r3 r4 --name overlap_8b_h100 [--results bench/results]

Pair ``rK`` reads ``engine_8b_overlap_rK.json`` and ``engine_8b_no-overlap_rK.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

KEYS = ("tok_s", "tpot_p50_s", "ttft_warm_p50_s", "ttft_warm_p99_s", "ttft_new_p50_s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", nargs="+", required=True)
    ap.add_argument("--prefix", default="engine_8b")
    ap.add_argument("--results", default=str(common.RESULTS))
    ap.add_argument("--name", default="overlap_8b")
    ap.add_argument("--note", default="", help="what differs between the pairs, if anything")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows, device, commands = [], None, []
    for pair in a.pairs:
        runs = {way: json.loads((Path(a.results) / f"{a.prefix}_{way}_{pair}.json").read_text()) for way in ("overlap", "no-overlap")}
        device = runs["overlap"]["device"]
        commands += [r["command"] for r in runs.values()]
        for on, off in zip(runs["overlap"]["rows"], runs["no-overlap"]["rows"]):
            row = {"pair": pair, "N": on["N"]}
            for k in KEYS:
                row[f"{k}_on"], row[f"{k}_off"] = on[k], off[k]
                row[f"{k}_ratio"] = on[k] / off[k]
            rows.append(row)
    common.write_results(a.name, {"command": " ".join(sys.argv), "runs": commands, "run_device": device, "note": a.note,
                                  "ratio": "overlap / no overlap", "rows": rows}, a.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label in zip(axes, ("tok_s", "tpot_p50_s", "ttft_warm_p50_s"), ("tokens/s", "time per output token p50", "warm TTFT p50")):
        labels = [f"{r['pair']} N={r['N']}" for r in rows]
        ax.bar(range(len(rows)), [r[f"{key}_ratio"] for r in rows])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(rows)), labels, rotation=30, fontsize=8)
        ax.set_title(f"{label}: overlap / none")
    fig.suptitle(f"engine alone, closed loop, {device.get('name') if device else '?'}")
    common.save_plot(a.name, fig, a.out)
    print(common.table(rows, ["pair", "N"] + [f"{k}_{s}" for k in ("tok_s", "ttft_warm_p50_s") for s in ("on", "off", "ratio")]
                       + ["tpot_p50_s_ratio"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
