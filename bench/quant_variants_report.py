"""Side-by-side report of the batch-1 int4 GEMV's kernel variants (kernels/quant_configs.py
GEMV_VARIANTS: register prefetch 1 or 2 K steps ahead, L2-only weight words) from sweep
files (bench/quant_sweep.py, ``--sweep``) and lists of sweep points: per weight shape, the
fastest config of each variant, all timed in one process on one GPU, and the sum over one
Llama layer's four products with the plain kernel only against the fastest variant per shape.

    python bench/quant_variants_report.py SRC.json... --name quant_variants_h100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common

import quant_sweep


def points(path: Path) -> tuple[list[dict], dict]:
    """(sweep points, the file's header or {}) of a sweep file or a bare list of points."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return data, {}
    return data["points"], {k: data.get(k) for k in ("date", "command", "device")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", type=Path)
    ap.add_argument("--layer", nargs="+", default=["12288x4096", "4096x4096", "22016x4096", "4096x11008"],
                    help="the shapes of one layer (default Llama-2-7B's qkv, o, gate-up, down)")
    ap.add_argument("--name", default="quant_variants")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows, sources = [], []
    for src in a.sources:
        pts, head = points(src)
        sources.append({"file": src.name, **head})
        for p in pts:
            for v, r in quant_sweep.by_variant(p).items():
                rows.append({"shape": f"{p['n']}x{p['k']}", "source": src.name, "variant": v, "us": r["us"],
                             "bf16_us": p["bf16_us"], "cfg": r["cfg"]})
    # per shape the last source's timings (a later sweep re-times a shape an earlier one had)
    last = {r["shape"]: r["source"] for r in rows}
    cur = [r for r in rows if r["source"] == last[r["shape"]]]
    layer = {}
    if all(s in last for s in a.layer):
        plain = sum(r["us"] for r in cur if r["shape"] in a.layer and r["variant"] == "pf0")
        best = sum(min(r["us"] for r in cur if r["shape"] == s) for s in a.layer)
        bf16 = sum(next(r["bf16_us"] for r in cur if r["shape"] == s) for s in a.layer)
        layer = {"shapes": a.layer, "plain_us": plain, "best_variant_us": best, "bf16_us": bf16,
                 "plain_x_bf16": bf16 / plain, "best_x_bf16": bf16 / best}
    print(common.table(rows, ["shape", "source", "variant", "us", "bf16_us"]))
    print(layer)
    common.write_results(a.name, {"sources": sources, "rows": rows, "layer": layer}, a.out)
    plot(a.name, cur, a.out)


def plot(name: str, rows: list[dict], out: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    variants = sorted({r["variant"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.8 / len(variants)
    for i, v in enumerate(variants):
        xs = [j + i * w for j, s in enumerate(shapes)]
        base = {r["shape"]: r["us"] for r in rows if r["variant"] == "pf0"}
        ax.bar(xs, [next(r["us"] for r in rows if r["shape"] == s and r["variant"] == v) / base[s] for s in shapes], w, label=v)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(shapes))], shapes)
    ax.set(ylabel="time / plain kernel's (fastest config each)", title="int4 batch-1 GEMV variants (lower is faster)")
    ax.legend(fontsize=7)
    return common.save_plot(name, fig, out)


if __name__ == "__main__":
    main()
