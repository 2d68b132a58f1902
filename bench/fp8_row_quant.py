"""What the e4m3 row quantization in front of torch._scaled_mm costs, per tile (kernels/fp8_scaled_mm.RowTile).

One Triton program per activation row makes two passes over it (amax, then the rounded row;
three for two terms), ``block_k`` values a step. With 1,024 a step (the engine's tile before this
bench) a 7B down projection's 11,008-wide row takes 11 dependent steps a pass, while the 64-128
programs of a decode batch leave most SMs idle. A wider step loads the row in one go, the next
passes hitting L1. Per K of the Llama-2-7B / Llama-3.1-8B products and per row count, in CUDA
graphs of 20 back-to-back launches: quantize_rows and quantize_rows_two alone per tile, then the
whole product (scaled_mm_fp8, one and two terms) at the narrow tile (RowTile(), "default": the only one
before this bench) and the fastest, beside
bf16's F.linear of the same shape.

    python3 bench/fp8_row_quant.py [--rows 65 128 512 2048] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from swiftinfer_core.kernels.fp8_scaled_mm import RowTile, quantize_rows, quantize_rows_two, scaled_mm_fp8  # noqa: E402
from swiftinfer_core.model.fp8 import quantize_fp8  # noqa: E402

# (name, N, K): products whose K differ (7B qkv/o/gate-up read K 4096; down 11,008; 8B down 14,336)
PRODUCTS = [("7B qkv", 12288, 4096), ("7B down", 4096, 11008), ("8B down", 4096, 14336)]
TILES = [RowTile(1024, 4), RowTile(2048, 4), RowTile(4096, 8), RowTile(8192, 8), RowTile(16384, 16)]
LAUNCHES = 20


def timed(fn) -> float:
    """Microseconds per call: LAUNCHES calls in one CUDA graph, median of 10 replays."""
    secs, _ = common.time_graph(lambda: [fn() for _ in range(LAUNCHES)], reps=10, warmup=3)
    return secs / LAUNCHES * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", nargs="+", type=int, default=[65, 128, 256, 512, 2048])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for name, n, k in PRODUCTS:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02
        q, s = quantize_fp8(w)
        for m in a.rows:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, generator=gen)
            quant, seen = {}, set()
            for tile in TILES:
                launch = tuple(tile.launch(k).values())
                if launch in seen:
                    continue  # a tile wider than the row: the same launch as one already timed
                seen.add(launch)
                one, two = timed(lambda: quantize_rows(x, tile)), timed(lambda: quantize_rows_two(x, tile))
                quant[tile] = (one, two)
                rows.append({"product": name, "N": n, "K": k, "M": m, "what": "quantize", "block_k": tile.block_k,
                             "num_warps": tile.num_warps, "one_term_us": one, "two_terms_us": two})
            best = {terms: min(quant, key=lambda t: quant[t][terms]) for terms in (0, 1)}
            bf16 = timed(lambda: F.linear(x, w))
            for label, tile, terms in (("default", RowTile(), 0), ("default", RowTile(), 1), ("fastest", best[0], 0), ("fastest", best[1], 1)):
                us = timed(lambda: scaled_mm_fp8(x, q, s, two_terms=bool(terms), tile=tile))
                rows.append({"product": name, "N": n, "K": k, "M": m, "what": f"product, {label} tile", "terms": terms + 1,
                             "block_k": tile.block_k, "num_warps": tile.num_warps, "us": us, "bf16_us": bf16, "x_bf16": bf16 / us})
            print(f"{name} M={m}: quantize one/two term us " + ", ".join(f"{t.block_k}/{t.num_warps}w {v[0]:.1f}/{v[1]:.1f}"
                  for t, v in quant.items()) + f"; bf16 {bf16:.1f} us", flush=True)
    common.write_results("fp8_row_quant", {"launches_per_graph": LAUNCHES, "rows": rows}, a.out)
    plot(rows, a.out)
    prods = [r for r in rows if r["what"].startswith("product")]
    print(common.table(prods, ["product", "M", "what", "terms", "block_k", "num_warps", "us", "bf16_us", "x_bf16"]))


def plot(rows: list[dict], out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["product"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        qs = [r for r in rows if r["product"] == name and r["what"] == "quantize"]
        for i, key in enumerate(dict.fromkeys((r["block_k"], r["num_warps"]) for r in qs)):
            rs = [r for r in qs if (r["block_k"], r["num_warps"]) == key]
            ax.plot([r["M"] for r in rs], [r["one_term_us"] for r in rs], marker="o", color=f"C{i}", label=f"{key[0]}/{key[1]}w one term")
            ax.plot([r["M"] for r in rs], [r["two_terms_us"] for r in rs], marker="x", ls="--", color=f"C{i}", label="two terms")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("rows")
        ax.set_ylabel("row quantization, us per call")
        ax.set_title(f"{name} (K {qs[0]['K']}), {common.device_info()['name']}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2)
    common.save_plot("fp8_row_quant", fig, out)


if __name__ == "__main__":
    main()
