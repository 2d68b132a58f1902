"""A/B of the batch-1 int4 GEMV's two maths (kernels/quant_gemv.py "f32" against
kernels/quant_gemv_h2.py "h2", config key "math"), with bf16 F.linear (cuBLAS) for
reference, on the GPU.

Per weight shape [N, K] of the models (bench/models.py; each layer's qkv, o,
gate-up, down and the LM head): one random bf16 weight quantized to symmetric int4
(group 128), copied until the copies exceed 3x the L2 so that they stream from HBM
(as in bench/quant_sweep.py); each math is first checked against the float64 product
of the dequantised weight, then timed as a CUDA graph of one launch per copy (median
of replays): microseconds per launch and GB/s of weight + scale bytes. Then one whole
decode step's weight products (every layer's four weights, distinct, and the head;
as bench/quant_decode.py) for each math and bf16. Both maths use the config table's
tiles for the shape (kernels/quant_configs.py; --configs FILE for a tuned one) and
differ only in "math", so the A/B isolates the math.

    python bench/quant_h2_ab.py                          # GPU: Llama-2-7B and Llama-3.1-8B
    python bench/quant_h2_ab.py --smoke --out /tmp/h2ab  # CPU interpreter, a tiny shape:
                                                         # checks the script runs (times mean nothing)
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
import torch
import torch.nn.functional as F
from quant_decode import SMOKE, weight_shapes
from quant_sweep import time_launches

from swiftinfer_core.kernels import quant_configs
from swiftinfer_core.kernels.quant_gemv import gemv_int4
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize, weight_bytes

# each variant overrides the table's config; h2_n64: 8 rows per thread (2.75 SASS instructions per
# weight offline against 3.52 at the table's 4, since the x side is shared by more rows)
MATHS = {"f32": dict(math="f32"), "h2": dict(math="h2"), "h2_n64": dict(math="h2", block_n=64)}


def cfg_for(variant: str, n: int, k: int) -> dict:
    """The table's batch-1 int4 config for [n, k] with ``variant``'s overrides (MATHS)."""
    return dict(quant_configs.config("int4", 1, n, k), **MATHS[variant])


def shape_point(n: int, k: int, group: int, dev, smoke: bool) -> dict:
    """us and GB/s per launch of each math (and bf16) for one weight shape."""
    gen = torch.Generator(device=dev).manual_seed(n * 7 + k)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02
    qw = quantize(w, QuantFormat.INT4, group)
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16, generator=gen)
    want = x.double() @ dequantize(qw).double().t()
    nbytes = weight_bytes(QuantFormat.INT4, n, k, group)
    l2 = common.device_info().get("l2_mib", 0) * 2**20
    copies = 1 if smoke else int(min(32, max(2, 3 * l2 // nbytes + 1)))
    qs = [(qw.qweight, qw.scales)] + [(qw.qweight.clone(), qw.scales.clone()) for _ in range(copies - 1)]
    out = torch.empty(1, n, device=dev, dtype=torch.bfloat16)
    row = {"n": n, "k": k, "copies": copies, "MB": nbytes / 1e6}
    for m in MATHS:
        c = cfg_for(m, n, k)
        y = gemv_int4(x, qw.qweight, qw.scales, k, group, out=out, cfg=c)
        row[f"{m}_rel_err"] = ((y.double() - want).norm() / want.norm()).item()
        secs = time_launches([lambda q=q, s=s, c=c: gemv_int4(x, q, s, k, group, out=out, cfg=c) for q, s in qs], smoke)
        row[f"{m}_us"], row[f"{m}_GBps"] = secs * 1e6, nbytes / secs / 1e9
    ws = [w] + [w.clone() for _ in range(copies * nbytes // (n * k * 2))]  # bf16 copies of as many bytes
    bf = time_launches([lambda v=v: F.linear(x, v) for v in ws], smoke)
    row["bf16_us"], row["bf16_GBps"] = bf * 1e6, n * k * 2 / bf / 1e9
    for m in MATHS:
        row[f"{m}_x_bf16"] = row["bf16_us"] / row[f"{m}_us"]
        row[f"{m}_x_f32"] = row["f32_us"] / row[f"{m}_us"]
    return row


def step_point(name: str, shapes: list[tuple[int, int]], group: int, dev, smoke: bool) -> list[dict]:
    """ms per decode step's weight products (batch 1) for bf16 and each int4 math."""
    gen = torch.Generator(device=dev).manual_seed(1)
    xs = {k: torch.randn(1, k, device=dev, dtype=torch.bfloat16, generator=gen) for _, k in shapes}
    rows = []
    for label in ("bf16", *MATHS):
        ws = []
        for n, k in shapes:
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02
            ws.append(w if label == "bf16" else quantize(w, QuantFormat.INT4, group))
        cfgs = [None if label == "bf16" else cfg_for(label, n, k) for n, k in shapes]

        def step():
            for (n, k), w, c in zip(shapes, ws, cfgs):
                if c is None:
                    F.linear(xs[k], w)
                else:
                    gemv_int4(xs[k], w.qweight, w.scales, k, group, cfg=c)

        secs = common.timed(step, reps=1, warmup=0) if smoke else common.time_graph(step, reps=10, warmup=3)[0]
        fmt = None if label == "bf16" else QuantFormat.INT4
        nbytes = sum(weight_bytes(fmt, n, k, group) for n, k in shapes)
        rows.append({"shape": name, "path": label, "ms_per_step": secs * 1e3, "GBps": nbytes / secs / 1e9})
        ws.clear()  # free this path's weights before the next is built
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    bf = rows[0]["ms_per_step"]
    for r in rows:
        r["x_bf16"] = bf / r["ms_per_step"]
    return rows


def plot(name: str, shapes: list[dict], out: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shapes)), 4))
    width = 0.8 / (1 + len(MATHS))
    for i, key in enumerate(("bf16", *MATHS)):
        ax.bar([p + (i - len(MATHS) / 2) * width for p in range(len(shapes))], [r[f"{key}_GBps"] for r in shapes], width,
               label="bf16 (cuBLAS)" if key == "bf16" else f"int4 {key}")
    ax.set_xticks(range(len(shapes)), [f"{r['n']}x{r['k']}" for r in shapes], fontsize=8)
    ax.set(ylabel="GB/s of weight bytes (batch 1)", title="int4 GEMV: f32 vs h2 math")
    ax.legend(fontsize=8)
    return common.save_plot(name, fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "llama3.1-8b"])
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--no-step", action="store_true", help="per-shape launches only")
    ap.add_argument("--configs", default=None, help="kernel configs JSON (a sweep's quant_configs.json)")
    ap.add_argument("--smoke", action="store_true", help="tiny shape on the CPU interpreter: checks the script only")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("quant_h2_ab.py needs a CUDA GPU (or --smoke on the CPU)")
    if args.configs:
        quant_configs.load(args.configs)
    dev = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        models = {"smoke": SMOKE}
    else:
        from bench.models import SHAPES

        models = {s: SHAPES[s] for s in args.shapes}
    uniq = sorted({s for a in models.values() for s in weight_shapes(a)})
    shapes = []
    for n, k in uniq:
        shapes.append(shape_point(n, k, args.group, dev, args.smoke))
        r = shapes[-1]
        print(f"{n:>6}x{k:<6} bf16 {r['bf16_us']:7.1f} us | " + " | ".join(
            f"{m} {r[f'{m}_us']:7.1f} us {r[f'{m}_GBps']:5.0f} GB/s x{r[f'{m}_x_f32']:.2f} err {r[f'{m}_rel_err']:.1e}"
            for m in MATHS), flush=True)
    steps = []
    if not args.no_step:
        for name, a in models.items():
            steps += step_point(name, weight_shapes(a), args.group, dev, args.smoke)
        print(common.table(steps, ["shape", "path", "ms_per_step", "GBps", "x_bf16"]))
    name = "quant_h2_ab" + ("_smoke" if args.smoke else "")
    note = ("SMOKE RUN on the CPU under TRITON_INTERPRET: checks that the script runs; the times mean nothing"
            if args.smoke else "batch-1 int4 GEMV, f32 vs h2 math, CUDA graphs; per shape over copies > 3x L2")
    tuned = args.configs or os.environ.get("SWIFTINFER_QUANT_CONFIGS") or "packaged/defaults"
    common.write_results(name, {"note": note, "group": args.group, "configs": tuned, "shapes": shapes, "steps": steps},
                         args.out)
    plot(name, shapes, args.out)


if __name__ == "__main__":
    main()
