"""Weight-only int8/int4 against bf16: the weight products of one decode step.

For each shape (bench/models.py: Llama-2-7B, Llama-3.1-8B) it builds every
layer's four weights (qkv, o, gate-up, down; distinct per layer, so no weight
stays in L2) and the LM head with random values, in bf16 and quantized to int8
(per row) and int4 (group 128; ``int4-zp``: with a float16 min per group,
EngineConfig.quant_zero_point) by model/quant.py, then times one decode step's
products for B rows (B = 1: batch-1 ms/token; B = 32, 128: tokens/s at that many
sessions): bf16 through F.linear (cuBLAS), int8/int4 through
kernels/quant_gemv.py (B = 1) and kernels/quant_gemm.py (B > 1), each step
captured in a CUDA graph. Attention, norms and the KV cache are not in it: this
is the weight stream that quantization changes. The roofline of each format is
max(bytes / HBM bandwidth, FLOPs / bf16 peak) with bytes from model/quant.py
weight_bytes (scales included) and bench/common.py's datasheet peaks.

    python bench/quant_decode.py                    # GPU: 7B and 8B shapes
    python bench/quant_decode.py --formats bf16 int4 int4-zp --batches 1 32 --shapes llama2-7b
                                                    # GPU: zero-point int4 against symmetric and bf16
    python bench/quant_decode.py --smoke --out /tmp # CPU: a tiny shape under
        Triton's interpreter, to check the script runs (its times mean nothing)
    python bench/quant_decode.py --sweep --out DIR  # GPU: tune the kernels' configs
        (bench/quant_sweep.py) into DIR/quant_configs.json; run the bench on them
        with --configs DIR/quant_configs.json (or $SWIFTINFER_QUANT_CONFIGS)
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

from swiftinfer_core.kernels import quant_configs
from swiftinfer_core.kernels.quant_gemm import gemm_int4, gemm_int8
from swiftinfer_core.kernels.quant_gemv import gemv_int4, gemv_int8
from swiftinfer_core.model.quant import QuantFormat, quantize, weight_bytes

FORMATS = {  # label -> (format (None: bf16), zero points)
    "bf16": (None, False),
    "int8": (QuantFormat.INT8, False),
    "int4": (QuantFormat.INT4, False),
    "int4-zp": (QuantFormat.INT4, True),
}
SMOKE = {"hidden_size": 256, "intermediate_size": 384, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
         "head_dim": 64, "vocab_size": 1000}


def weight_shapes(a) -> list[tuple[int, int]]:
    """[N, K] of every weight one token reads: per layer qkv, o, gate-up, down; then the head."""
    qkv = (a["num_heads"] + 2 * a["num_kv_heads"]) * a["head_dim"]
    h, i = a["hidden_size"], a["intermediate_size"]
    layer = [(qkv, h), (h, a["num_heads"] * a["head_dim"]), (2 * i, h), (h, i)]
    return layer * a["num_layers"] + [(a["vocab_size"], h)]


def product(fmt: QuantFormat | None, w, x: torch.Tensor, group: int) -> torch.Tensor:
    """x [B, K] @ w^T in x's dtype: w a bf16 tensor (fmt None) or a QuantizedWeight
    (int4 with zero points when it carries mins)."""
    if fmt is None:
        return F.linear(x, w)
    one = x.shape[0] == 1
    if fmt is QuantFormat.INT8:
        return (gemv_int8 if one else gemm_int8)(x, w.qweight, w.scales)
    return (gemv_int4 if one else gemm_int4)(x, w.qweight, w.scales, w.in_features, group, mins=w.mins)


def time_step(fmt, shapes, batch: int, dev, group: int, smoke: bool, zero_point: bool = False) -> float:
    """Seconds of one step's products for ``batch`` rows (median)."""
    gen = torch.Generator(device=dev).manual_seed(0)
    ws = []
    for n, k in shapes:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02
        ws.append(w if fmt is None else quantize(w, fmt, group, zero_point))
    xs = {k: torch.randn(batch, k, device=dev, dtype=torch.bfloat16, generator=gen) for _, k in shapes}

    def step():
        for (_, k), w in zip(shapes, ws):
            product(fmt, w, xs[k], group)

    if smoke:
        return common.timed(step, reps=1, warmup=0)
    secs, _ = common.time_graph(step, reps=10, warmup=3)
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "llama3.1-8b"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32, 128])
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--formats", nargs="+", default=["bf16", "int8", "int4"], choices=list(FORMATS))
    ap.add_argument("--smoke", action="store_true", help="tiny shape on the CPU interpreter: checks the script only")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    ap.add_argument("--name", default=None, help="results file stem (default quant_decode)")
    ap.add_argument("--configs", default=None, help="kernel configs JSON (a --sweep's quant_configs.json)")
    ap.add_argument("--sweep", action="store_true", help="time the kernels' candidate configs instead (bench/quant_sweep.py)")
    ap.add_argument("--sweep-batches", nargs="+", type=int, default=list(quant_configs.BUCKETS))
    ap.add_argument("--budget-s", type=float, default=300.0, help="--sweep: stop starting new points after this long")
    ap.add_argument("--sweep-formats", nargs="+", default=["int4", "int8"], choices=["int4", "int8"])
    ap.add_argument("--sweep-dequant-only", action="store_true",
                    help="--sweep: from 64 rows only the table's config and the dequantise-then-cuBLAS ones")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("quant_decode.py needs a CUDA GPU (or --smoke on the CPU)")
    if args.configs:
        quant_configs.load(args.configs)
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    peaks = common.device_peaks()
    shapes = {"smoke": SMOKE} if args.smoke else {}
    if not args.smoke:
        from bench.models import SHAPES

        shapes = {s: SHAPES[s] for s in args.shapes}
    if args.sweep:
        import quant_sweep

        batches = [1, 16] if args.smoke else args.sweep_batches
        quant_sweep.run({s: weight_shapes(a) for s, a in shapes.items()}, batches, args.group, args.budget_s, args.out,
                        args.smoke, args.sweep_formats, args.sweep_dequant_only)
        return
    rows = []
    for name, a in shapes.items():
        ws = weight_shapes(a)
        params = sum(n * k for n, k in ws)
        for label in args.formats:
            fmt, zp = FORMATS[label]
            nbytes = sum(weight_bytes(fmt, n, k, args.group, zero_point=zp) for n, k in ws)
            for b in args.batches:
                secs = time_step(fmt, ws, b, dev, args.group, args.smoke, zp)
                roof = None
                if peaks["hbm_Bps"]:
                    roof = max(nbytes / peaks["hbm_Bps"], 2 * params * b / peaks["bf16_dense_flops"])
                rows.append({"shape": name, "format": label, "batch": b, "weight_GB": nbytes / 1e9,
                             "ms_per_step": secs * 1e3, "tokens_per_s": b / secs,
                             "roofline_ms": None if roof is None else roof * 1e3,
                             "of_roofline": None if roof is None else roof / secs})
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    print(common.table(rows, ["shape", "format", "batch", "weight_GB", "ms_per_step", "tokens_per_s", "roofline_ms", "of_roofline"]))
    name = (args.name or "quant_decode") + ("_smoke" if args.smoke else "")
    note = ("SMOKE RUN on the CPU under TRITON_INTERPRET: checks that the script runs; the times are the interpreter's "
            "and mean nothing about GPU speed" if args.smoke else "weight products of one decode step, CUDA graphs")
    tuned = args.configs or os.environ.get("SWIFTINFER_QUANT_CONFIGS") or "packaged/defaults"
    common.write_results(name, {"note": note, "group": args.group, "configs": tuned, "peaks": peaks, "rows": rows}, args.out)
    plot(name, rows, args.out, "format", args.formats, roofline=True)


def plot(name: str, rows: list[dict], out: str | None, key: str, series: list[str], roofline: bool) -> Path:
    """tokens/s against batch, one panel per shape, one line per ``series`` value of
    ``rows[i][key]`` (in that order; values with no rows in a panel are skipped), plus
    each line's roofline where ``roofline`` and the rows carry one. Shared with
    bench/fp8_decode.py (key "path")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({r["shape"] for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4), squeeze=False)
    for ax, s in zip(axes[0], shapes):
        for v in series:
            pts = [r for r in rows if r["shape"] == s and r[key] == v]
            if not pts:
                continue
            ax.plot([r["batch"] for r in pts], [r["tokens_per_s"] for r in pts], "o-", label=v)
            if roofline and pts[0]["roofline_ms"]:
                ax.plot([r["batch"] for r in pts], [r["batch"] / r["roofline_ms"] * 1e3 for r in pts], ":", label=f"{v} roofline")
        ax.set(title=s, xlabel="sessions (rows per step)", ylabel="tokens/s (weight products only)", xscale="log", yscale="log")
        ax.legend(fontsize=7)
    return common.save_plot(name, fig, out)


if __name__ == "__main__":
    main()
