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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import quant_sweep  # noqa: E402


def points(path: Path) -> tuple[list[dict], dict]:
    """(sweep points, the file's header or {}) of a sweep file or a bare list of points."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return data, {}
    return data["points"], {k: data.get(k) for k in ("date", "command", "device")}


def variant_rows(pts: list[dict], source: str) -> list[dict]:
    """One row per (sweep point, variant): that variant's fastest config and time."""
    return [{"shape": f"{p['n']}x{p['k']}", "source": source, "variant": v, "us": r["us"], "bf16_us": p["bf16_us"],
             "cfg": r["cfg"]} for p in pts for v, r in quant_sweep.by_variant(p).items()]


def summarize(rows: list[dict], layer_shapes: list[str]) -> tuple[list[dict], dict]:
    """(the rows of each shape's last source: a later sweep re-times a shape an earlier one had,
    one layer's sums: the plain kernel ("pf0") against the fastest variant per shape, and bf16;
    {} unless every layer shape was timed)."""
    last = {r["shape"]: r["source"] for r in rows}
    cur = [r for r in rows if r["source"] == last[r["shape"]]]
    if not all(s in last for s in layer_shapes):
        return cur, {}
    plain = sum(r["us"] for r in cur if r["shape"] in layer_shapes and r["variant"] == "pf0")
    best = sum(min(r["us"] for r in cur if r["shape"] == s) for s in layer_shapes)
    bf16 = sum(next(r["bf16_us"] for r in cur if r["shape"] == s) for s in layer_shapes)
    return cur, {"shapes": layer_shapes, "plain_us": plain, "best_variant_us": best, "bf16_us": bf16,
                 "plain_x_bf16": bf16 / plain, "best_x_bf16": bf16 / best}


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
        rows += variant_rows(pts, src.name)
    cur, layer = summarize(rows, a.layer)
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
    base = {r["shape"]: r["us"] for r in rows if r["variant"] == "pf0"}
    for i, v in enumerate(variants):
        xs = [j + i * w for j, s in enumerate(shapes)]
        ax.bar(xs, [next(r["us"] for r in rows if r["shape"] == s and r["variant"] == v) / base[s] for s in shapes], w, label=v)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(shapes))], shapes)
    ax.set(ylabel="time / plain kernel's (fastest config each)", title="int4 batch-1 GEMV variants (lower is faster)")
    ax.legend(fontsize=7)
    return common.save_plot(name, fig, out)


if __name__ == "__main__":
    main()
