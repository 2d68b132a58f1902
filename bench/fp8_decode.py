"""FP8 (e4m3) weights against bf16 and int8: the weight products of one decode step.

bench/quant_decode.py's measurement with FP8 beside it (its weight_shapes and
product() are reused unchanged for bf16 and int8, its plot() with a line per
path): every layer's four weights (qkv, o, gate-up, down; distinct per layer, so
no weight stays in L2) and the LM head, random, quantized by model/fp8.py; one
decode step's products for B rows captured in a CUDA graph (B = 1: ms/token;
B > 1: tokens/s at B sessions).
Rows per path:

  bf16           F.linear (cuBLAS)
  int8           kernels/quant_gemv.py (B = 1) / quant_gemm.py (B > 1)
  fp8            the engine's choice (model/fp8_linear.py): kernels/fp8_gemv.py
                 (B = 1, split-K where rows are few), the weight-only split-K GEMM below
                 SCALED_MM_MIN_ROWS rows, _scaled_mm with per-row e4m3 activations from there
                 (kernels/fp8_scaled_mm.py; "fp8" before session 33 was _scaled_mm at every B > 1)
  fp8 scaled_mm  B > 1 always through _scaled_mm
  fp8 scaled_mm x2  B > 1: x as two e4m3 terms (hi and what it misses), one _scaled_mm over 2B rows,
                 the halves added (scaled_mm_fp8 two_terms: activations to ~2^-8 instead of 2^-4)
  fp8 down x2    "fp8" with the down projections' input in two terms where _scaled_mm runs
                 (fp8_down_activation_terms 2: one layer in four, the widest K)
  fp8 triton     B > 1 through the weight-only Triton GEMM (kernels/fp8_gemm.py: split-K, int8's configs
                 since session 31; before, one tile per program)
  fp8 dequant    B > 1 weight-only, the weight cast to bf16 16 MiB of rows at a time (L2-sized)
                 and multiplied by cuBLAS (kernels/quant_dequant.py; Fp8Linear batched="dequant")
  fp8 dequant whole  the same with each weight cast whole (1 GiB chunks: no L2 reuse)
  fp8 no-split   B = 1 with split-K off (what split-K buys on small layers)

The roofline is max(bytes / HBM bandwidth, FLOPs / peak) with bytes from
model/quant.py weight_bytes (scales included) and bench/common.py's datasheet
peaks (bf16 dense; FP8's tensor-core peak is twice that, so for _scaled_mm rows
the FLOP term is halved).

    python bench/fp8_decode.py                              # GPU: 7B, 8B and SmolLM2-135M shapes
    python bench/fp8_decode.py --smoke --out /tmp           # CPU: a tiny shape under Triton's
        interpreter, to check the script runs (its times mean nothing)
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
from quant_decode import SMOKE, plot, product, weight_shapes

from swiftinfer_core.kernels import quant_dequant
from swiftinfer_core.kernels.fp8_gemm import gemm_fp8
from swiftinfer_core.kernels.fp8_gemv import gemv_fp8
from swiftinfer_core.kernels.fp8_scaled_mm import scaled_mm_fp8
from swiftinfer_core.model.fp8 import quantize_fp8
from swiftinfer_core.model.fp8_linear import DEQUANT_MIB, SCALED_MM_MIN_ROWS
from swiftinfer_core.model.quant import QuantFormat, quantize, weight_bytes

# name -> (weight format, how B = 1 runs, how B > 1 runs)
PATHS = {
    "bf16": (None, "linear", "linear"),
    "int8": (QuantFormat.INT8, "quant", "quant"),
    "fp8": (QuantFormat.FP8, "gemv", "engine"),
    "fp8 scaled_mm": (QuantFormat.FP8, None, "scaled_mm"),
    "fp8 scaled_mm x2": (QuantFormat.FP8, None, "scaled_mm2"),
    "fp8 down x2": (QuantFormat.FP8, "gemv", "engine-down2"),
    "fp8 triton": (QuantFormat.FP8, None, "triton"),
    "fp8 dequant": (QuantFormat.FP8, None, "dequant"),
    "fp8 dequant whole": (QuantFormat.FP8, None, "dequant-1024"),
    "fp8 no-split": (QuantFormat.FP8, "gemv-1", None),
}


def resolved(how: str | None, rows: int) -> str | None:
    """"engine" -> the path Fp8Linear takes for ``rows`` rows (model/fp8_linear.SCALED_MM_MIN_ROWS)."""
    if how in ("engine", "engine-down2"):
        return ("scaled_mm" if how == "engine" else "scaled_mm-down2") if rows >= SCALED_MM_MIN_ROWS else "triton"
    return how


def fp8_product(how: str, w: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    q, s = w
    if how == "gemv":
        return gemv_fp8(x, q, s)
    if how == "gemv-1":
        return gemv_fp8(x, q, s, split_k=1)
    if how == "scaled_mm":
        return scaled_mm_fp8(x, q, s)
    if how == "scaled_mm2":
        return scaled_mm_fp8(x, q, s, two_terms=True)
    if how.startswith("dequant"):
        mib = int(how.partition("-")[2] or DEQUANT_MIB)
        out = torch.empty(x.shape[0], q.shape[0], dtype=x.dtype, device=x.device)
        return quant_dequant.matmul("fp8", x, q, s, None, q.shape[1], 0, out, mib)
    return gemm_fp8(x, q, s)


def make_weights(fmt: QuantFormat | None, shapes, dev) -> list:
    """Every weight of one step, random, in ``fmt`` (None: bf16); built once per format, shared by its paths."""
    gen = torch.Generator(device=dev).manual_seed(0)
    ws = []
    for n, k in shapes:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02
        ws.append(w if fmt is None else quantize_fp8(w) if fmt is QuantFormat.FP8 else quantize(w, fmt))
    return ws


def time_step(path: str, shapes, ws: list, batch: int, dev, smoke: bool) -> float | None:
    """Seconds of one step's products for ``batch`` rows (median); None where the path has no such batch."""
    fmt, one, many = PATHS[path]
    how = resolved(one if batch == 1 else many, batch)
    if how is None or (smoke and how.startswith("scaled_mm")):  # the CPU has no _scaled_mm
        return None
    gen = torch.Generator(device=dev).manual_seed(1)
    xs = {k: torch.randn(batch, k, device=dev, dtype=torch.bfloat16, generator=gen) for _, k in shapes}

    def step():
        for i, ((_, k), w) in enumerate(zip(shapes, ws)):
            if how == "scaled_mm-down2":  # weight_shapes: qkv, o, gate-up, down per layer, then the head
                fp8_product("scaled_mm2" if i % 4 == 3 and i < len(shapes) - 1 else "scaled_mm", w, xs[k])
            elif fmt is QuantFormat.FP8:
                fp8_product(how, w, xs[k])
            else:
                product(fmt, w, xs[k], 128)

    if smoke:
        return common.timed(step, reps=1, warmup=0)
    secs, _ = common.time_graph(step, reps=10, warmup=3)
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "llama3.1-8b", "smollm2-135m"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 128, 512])
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--smoke", action="store_true", help="tiny shape on the CPU interpreter: checks the script only")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("fp8_decode.py needs a CUDA GPU (or --smoke on the CPU)")
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    peaks = common.device_peaks()
    if args.smoke:
        shapes = {"smoke": SMOKE}
    else:
        from bench.models import SHAPES

        shapes = {s: SHAPES[s] for s in args.shapes}
    rows = []
    for name, a in shapes.items():
        ws = weight_shapes(a)
        params = sum(n * k for n, k in ws)
        for fmt in dict.fromkeys(PATHS[p][0] for p in args.paths):  # formats in order, each built once
            weights = make_weights(fmt, ws, dev)
            nbytes = sum(weight_bytes(fmt, n, k) for n, k in ws)
            for path, b in [(p, b) for p in args.paths if PATHS[p][0] is fmt for b in args.batches]:
                many = PATHS[path][2]
                secs = time_step(path, ws, weights, b, dev, args.smoke)
                if secs is None:
                    continue
                roof = None
                if peaks["hbm_Bps"]:
                    e4m3 = (resolved(many, b) or "").startswith("scaled_mm")  # the down-only second term: not in the FLOPs
                    flops_peak = peaks["bf16_dense_flops"] * (2 if b > 1 and e4m3 else 1)
                    roof = max(nbytes / peaks["hbm_Bps"], 2 * params * b * (2 if many == "scaled_mm2" else 1) / flops_peak)
                rows.append({"shape": name, "path": path, "batch": b, "weight_GB": nbytes / 1e9,
                             "ms_per_step": secs * 1e3, "tokens_per_s": b / secs,
                             "roofline_ms": None if roof is None else roof * 1e3,
                             "of_roofline": None if roof is None else roof / secs})
            del weights
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    for r in rows:  # speed-up over bf16 at the same shape and batch
        base = next((x for x in rows if x["shape"] == r["shape"] and x["batch"] == r["batch"] and x["path"] == "bf16"), None)
        r["x_bf16"] = None if base is None else base["ms_per_step"] / r["ms_per_step"]
    print(common.table(rows, ["shape", "path", "batch", "weight_GB", "ms_per_step", "tokens_per_s", "x_bf16",
                              "roofline_ms", "of_roofline"]))
    name = "fp8_decode_smoke" if args.smoke else "fp8_decode"
    note = ("SMOKE RUN on the CPU under TRITON_INTERPRET: checks that the script runs; the times are the interpreter's "
            "and mean nothing about GPU speed" if args.smoke else "weight products of one decode step, CUDA graphs")
    common.write_results(name, {"note": note, "paths": {k: [v[0] and v[0].value, v[1], v[2]] for k, v in PATHS.items()},
                                "peaks": peaks, "rows": rows}, args.out)
    plot(name, rows, args.out, "path", list(PATHS), roofline=False)


if __name__ == "__main__":
    main()
