"""Several bench/quant_quality_cpu.py runs in one file and one plot: how much a
calibrated variant's perplexity ratio moves with the calibration draw (seed,
token count, sequence length, damping), which one run cannot show.

Each input run is kept whole (its header: date, command, versions) under
``runs``; ``points`` lists (variant, calibration, seed, ratio) per cache for
the plot, one dot per run and variant.

    python bench/quant_draws_report.py RUN.json ... --json bench/results/quant_quality_cpu_gptq_draws.json
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import header, save_plot  # noqa: E402


def calibration_label(run: dict) -> str:
    """Short name of a run's calibration from its command's flags."""
    argv = shlex.split(run["command"])
    flag = lambda name, default: argv[argv.index(name) + 1] if name in argv else default  # noqa: E731
    if flag("--calib-source", "plays") == "plays":
        return f"plays {flag('--calib-tokens', '2048')}"
    parts = [f"self {flag('--calib-tokens', '2048')}", f"x{flag('--calib-seq-len', '256')}"]
    if "--calib-joined" in argv:
        parts.append("joined")
    if flag("--calib-top-p", "1.0") not in ("1", "1.0"):
        parts.append(f"top-p {flag('--calib-top-p', '')}")
    return " ".join(parts)


def points(run: dict) -> list[dict]:
    argv = shlex.split(run["command"])
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    out = []
    for variant, res in run["results"].items():
        if variant == "float32":
            continue
        damp = re.search(r"damp ([0-9.]+)", variant)
        base = re.sub(r" damp [0-9.]+", "", variant)
        calib = calibration_label(run) + (f" damp {damp.group(1)}" if damp else "")
        for cache, r in res.items():
            if "+" in cache:
                out.append({"variant": base, "calibration": calib, "seed": seed, "cache": cache,
                            "evaluated_tokens": run["tokens"], "ratio_vs_float32": r["ratio_vs_float32"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in a.runs]
    out = {**header(), "note": "aggregated from the runs below (each with its own date and command)",
           "points": [p for r in runs for p in points(r)], "runs": runs}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1) + "\n")
    plot(out, a.json.with_suffix(".png"))


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in out["points"] if p["cache"] == "4+256" and "act e4m3" not in p["variant"]]
    variants = sorted({p["variant"] for p in pts})
    fig, axes = plt.subplots(1, len(variants), figsize=(5 * len(variants), 5), squeeze=False)
    for ax, v in zip(axes[0], variants):
        mine = [p for p in pts if p["variant"] == v]
        labels = sorted({p["calibration"] for p in mine})
        for i, lab in enumerate(labels):
            ys = [p["ratio_vs_float32"] - 1 for p in mine if p["calibration"] == lab]
            ax.plot([i] * len(ys), ys, "o", alpha=0.7)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.axhline(0.01, color="gray", ls=":")
        ax.set_title(v, fontsize=8)
        ax.set_ylabel("perplexity / float32 - 1 (4+256)")
    fig.suptitle("SmolLM2-135M, plays, emulated on the CPU: one dot per calibration draw", fontsize=9)
    fig.tight_layout()
    save_plot(path.stem, fig, str(path.parent))


if __name__ == "__main__":
    main()
