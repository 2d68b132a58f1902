"""A/B of the batch-1 int4 GEMV: the float32 kernel (kernels/quant_gemv.py, the launch
table's config) against the tensor-core kernel (kernels/quant_gemv_mma.py, several
tiles), with bf16 F.linear (cuBLAS) for reference, on the GPU, in one run.

Per weight shape [N, K] of the models (each layer's qkv, o, gate-up, down and the
LM head; bench/models.py): one random bf16 weight quantized to symmetric int4
(group 128), copied until the copies exceed 3x the L2 so that they stream from HBM;
each kernel is first checked against the float64 product of the dequantised weight,
then timed as a CUDA graph of one launch per copy: microseconds per launch and GB/s
of weight + scale bytes. Then one whole decode step's weight products (every
layer's four weights, distinct, and the head) for bf16, the float32 kernel and
the tensor-core kernel at its best tile of the per-shape runs.

    python bench/quant_mma_ab.py                          # GPU: Llama-2-7B and Llama-3.1-8B
    python bench/quant_mma_ab.py --smoke --out /tmp/mma   # CPU interpreter, a tiny shape (times mean nothing)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--smoke" in sys.argv:  # before any kernel import: @triton.jit reads it
    os.environ.setdefault("TRITON_INTERPRET", "1")
import common
import models
import torch
import torch.nn.functional as F
from quant_decode import SMOKE, weight_shapes
from quant_sweep import time_launches

from swiftinfer_core.kernels.quant_gemv import gemv_int4
from swiftinfer_core.kernels.quant_gemv_mma import gemv_int4_mma
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize, weight_bytes

GROUP = 128
# tensor-core tiles tried per shape: (block_n, warps, stages, waves, prefetch_x)
MMA_TILES = [(64, 4, 3, 4, True), (128, 4, 3, 4, True), (128, 4, 3, 4, False), (128, 4, 4, 4, True), (128, 8, 3, 4, True),
             (256, 8, 3, 4, True), (128, 4, 3, 8, True), (64, 4, 4, 8, True), (64, 4, 2, 8, True)]


def mma_cfg(t: tuple) -> dict:
    return dict(block_n=t[0], block_k=128, warps=t[1], stages=t[2], waves=t[3], prefetch_x=t[4])


def shape_point(n: int, k: int, dev, smoke: bool) -> dict:
    gen = torch.Generator(device=dev).manual_seed(n * 7 + k)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02
    qw = quantize(w, QuantFormat.INT4, GROUP)
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16, generator=gen)
    want = x.double() @ dequantize(qw).double().t()
    nbytes = weight_bytes(QuantFormat.INT4, n, k, GROUP)
    l2 = common.device_info().get("l2_mib", 0) * 2**20
    copies = 1 if smoke else int(min(32, max(2, 3 * l2 // nbytes + 1)))
    qs = [(qw.qweight, qw.scales)] + [(qw.qweight.clone(), qw.scales.clone()) for _ in range(copies - 1)]
    out = torch.empty(1, n, device=dev, dtype=torch.bfloat16)
    row = {"n": n, "k": k, "copies": copies, "MB": nbytes / 1e6}
    variants = {"f32": None} | {f"mma{t}": t for t in MMA_TILES[: 2 if smoke else None]}
    for name, t in variants.items():
        def call(q, s, t=t):
            if t is None:
                return gemv_int4(x, q, s, k, GROUP, out=out)
            return gemv_int4_mma(x, q, s, k, GROUP, out=out, cfg=mma_cfg(t))
        y = call(qw.qweight, qw.scales)
        secs = time_launches([lambda q=q, s=s: call(q, s) for q, s in qs], smoke)
        row[name] = {"us": secs * 1e6, "GBps": nbytes / secs / 1e9,
                     "rel_err": ((y.double() - want).norm() / want.norm()).item()}
    ws = [w] + [w.clone() for _ in range(copies * nbytes // (n * k * 2))]
    bf = time_launches([lambda v=v: F.linear(x, v) for v in ws], smoke)
    row["bf16_us"] = bf * 1e6
    best = min((v for v in variants if v != "f32"), key=lambda v: row[v]["us"])
    row["best_mma"] = best
    row["mma_x_f32"] = row["f32"]["us"] / row[best]["us"]
    row["mma_x_bf16"] = bf * 1e6 / row[best]["us"]
    return row


def step_point(name: str, shapes: list[tuple[int, int]], tiles: dict, dev, smoke: bool) -> list[dict]:
    """ms per decode step's weight products (batch 1): bf16, f32 GEMV, tensor-core GEMV."""
    gen = torch.Generator(device=dev).manual_seed(1)
    xs = {k: torch.randn(1, k, device=dev, dtype=torch.bfloat16, generator=gen) for _, k in shapes}
    rows = []
    for label in ("bf16", "f32", "mma"):
        ws = []
        for n, k in shapes:
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02
            ws.append(w if label == "bf16" else quantize(w, QuantFormat.INT4, GROUP))

        def step():
            for (n, k), w in zip(shapes, ws):
                if label == "bf16":
                    F.linear(xs[k], w)
                elif label == "f32":
                    gemv_int4(xs[k], w.qweight, w.scales, k, GROUP)
                else:
                    gemv_int4_mma(xs[k], w.qweight, w.scales, k, GROUP, cfg=mma_cfg(tiles[(n, k)]))

        secs = common.timed(step, reps=1, warmup=0) if smoke else common.time_graph(step, reps=10, warmup=3)[0]
        fmt = None if label == "bf16" else QuantFormat.INT4
        nbytes = sum(weight_bytes(fmt, n, k, GROUP) for n, k in shapes)
        rows.append({"shape": name, "path": label, "ms_per_step": secs * 1e3, "GBps": nbytes / secs / 1e9})
        ws.clear()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for r in rows:
        r["x_bf16"] = rows[0]["ms_per_step"] / r["ms_per_step"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "llama3.1-8b"])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="quant_mma_ab")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("quant_mma_ab.py needs a CUDA GPU (or --smoke on the CPU)")
    dev = torch.device("cuda" if not args.smoke else "cpu")
    archs = {"smoke": SMOKE} if args.smoke else {s: models.SHAPES[s] for s in args.shapes}
    shape_rows, steps = [], []
    for name, a in archs.items():
        shapes = weight_shapes(a)
        tiles = {}
        for n, k in dict.fromkeys(shapes):
            r = shape_point(n, k, dev, args.smoke)
            shape_rows.append({"model": name, **r})
            tiles[(n, k)] = eval(r["best_mma"][3:])  # "mma(128, 4, 3, 4)" -> the tuple
            print(f"{name} {n}x{k}: bf16 {r['bf16_us']:.1f} us | f32 {r['f32']['us']:.1f} us {r['f32']['GBps']:.0f} GB/s | "
                  f"best {r['best_mma']} {r[r['best_mma']]['us']:.1f} us {r[r['best_mma']]['GBps']:.0f} GB/s "
                  f"x{r['mma_x_f32']:.2f} of f32, x{r['mma_x_bf16']:.2f} of bf16, err {r[r['best_mma']]['rel_err']:.1e}", flush=True)
        steps += step_point(name, shapes, tiles, dev, args.smoke)
    note = "SMOKE RUN on the CPU interpreter: times mean nothing" if args.smoke else None
    common.write_results(args.name, {"group": GROUP, "tiles": MMA_TILES, "shapes": shape_rows, "steps": steps, "note": note},
                         args.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(archs)
    for i, path in enumerate(("bf16", "f32", "mma")):
        ax.bar([p + (i - 1) * 0.27 for p in range(len(names))],
               [next(r["ms_per_step"] for r in steps if r["shape"] == nm and r["path"] == path) for nm in names], 0.27,
               label={"bf16": "bf16 (cuBLAS)", "f32": "int4 float32 GEMV", "mma": "int4 tensor-core GEMV"}[path])
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="ms per decode step's weight products (batch 1)", title=f"int4 batch 1, {common.device_info().get('name')}")
    ax.legend(fontsize=8)
    common.save_plot(args.name, fig, args.out)
    print()
    print(common.table(steps, ["shape", "path", "ms_per_step", "GBps", "x_bf16"]))


if __name__ == "__main__":
    main()
