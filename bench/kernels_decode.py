"""Decode attention kernel alone: KV bytes read per call over time, against the
measured device-to-device copy bandwidth.

Shapes: Llama-2-7B attention (32 q heads, 32 kv heads, head_dim 128) and GQA
(32 q / 8 kv heads), bf16, caches 4+252 .. 4+4092 full (streams wrapped many
times), batch 1/8/32/128. Each timed CUDA graph runs the kernel over L distinct
layer caches (together >= 1 GiB) so that the 60 MB L2 never holds the data a
call reads, as in a real model. With --sweep it also times block size, warps and
split-K waves and reports the best per shape. ``--kv fp8`` (or ``both``) times the
FP8 cache variant (e4m3 rows and a float32 scale per row and head, cache/kv_fp8.py):
its bytes are 1 per value plus 4 per row and head. "default" is what the engine runs:
TritonAttention's tiles, FP8_DECODE_TILES over an FP8 cache.

    python3 bench/kernels_decode.py [--sweep] [--kv bf16|fp8|both] [--windows 2044] [--batches 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import torch

from swiftinfer_core.cache.kv_fp8 import Fp8KV
from swiftinfer_core.kernels.attention import FP8_DECODE_TILES
from swiftinfer_core.kernels.decode_attention import decode_attention
from swiftinfer_core.kernels.decode_splits import decode_splits, decode_workspace
from swiftinfer_core.kernels.rope import inv_freq

SHAPES = [("MHA 32/32x128", 32, 32, 128), ("GQA 32/8x128", 32, 8, 128)]
WINDOWS = [252, 508, 1020, 2044, 4092]
BATCHES = [1, 8, 32, 128]
# register caps swept: at 4 warps 168 allows 3 programs per SM and 128 four (65,536 registers per SM), against 2 at
# the uncapped 212-255; ptxas spills below what the kernel wants (bench/attention_sass.py: fp8 16 / 68 spill
# instructions per tile at 168 / 128). Tests whether the fp8 path is bound by latency at 8 warps per SM.
REG_CAPS = (168, 128)
DEFAULT = (64, 4, None, 3, False, None)  # block_n, num_warps, waves (None: auto), stages, fused combine, maxnreg: TritonAttention's
FP8_DEFAULT = (FP8_DECODE_TILES[0], 4, None, FP8_DECODE_TILES[1], False, None)  # its tiles over an FP8 cache (bf16 query)


def layer_cache(B, hkv, cap, D, kv, dev):
    """(k, v, k_scale, v_scale) of one layer: bf16, or e4m3 with row scales (None for bf16)."""
    k, v = (torch.randn(B, hkv, cap, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
    if kv == "bf16":
        return k, v, None, None
    fk, fv = Fp8KV.quantize(k), Fp8KV.quantize(v)
    return fk.data, fv.data, fk.scale, fv.scale


def bench_point(hq, hkv, D, sinks, window, B, configs, bw, kv="bf16"):
    cap = sinks + window
    layer_bytes = 2 * B * hkv * cap * (D * 2 if kv == "bf16" else D + 4)
    L = max(1, min(64, math.ceil(2**30 / layer_bytes)))
    dev = "cuda"
    caches = [layer_cache(B, hkv, cap, D, kv, dev) for _ in range(L)]
    q = torch.randn(B, hq, D, device=dev, dtype=torch.bfloat16)
    kn = torch.randn(B, hkv, D, device=dev, dtype=torch.bfloat16)
    vn = torch.randn_like(kn)
    out = torch.empty_like(q)
    slots = torch.arange(B, dtype=torch.int32, device=dev)
    starts = torch.tensor([10 * cap + 7 * b for b in range(B)], dtype=torch.int64, device=dev)  # all full
    freqs = inv_freq(D, 10000.0).to(dev)
    res = []
    for bn, nw, waves, st, fc, mr in configs:
        splits = decode_splits(B, hkv, cap, bn, torch.cuda.get_device_properties(0).multi_processor_count, waves)
        ws = decode_workspace(B, hq, hkv, D, splits[0], dev)

        def fn():
            for k, v, ks, vs in caches:
                decode_attention(q, kn, vn, k, v, slots, starts, freqs, D**-0.5, sinks, window, out=out,
                                 block_n=bn, num_warps=nw, stages=st, splits=splits, workspace=ws, fused_combine=fc,
                                 k_scale=ks, v_scale=vs, maxnreg=mr)

        t, g = common.time_graph(fn, reps=7)
        del g
        per = t / L
        res.append({"kv": kv, "block_n": bn, "num_warps": nw, "waves": waves, "stages": st, "fused_combine": fc, "maxnreg": mr,
                    "splits": splits[0], "layers_in_graph": L,
                    "us": per * 1e6, "kv_bytes": layer_bytes, "gbps": layer_bytes / per / 1e9, "frac_copy_bw": layer_bytes / per / bw})
    caches = None  # free the layers before the next point
    torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--budget-s", type=float, default=300)
    ap.add_argument("--kv", choices=["bf16", "fp8", "both"], default="bf16")
    ap.add_argument("--windows", nargs="+", type=int, default=WINDOWS)
    ap.add_argument("--batches", nargs="+", type=int, default=BATCHES)
    ap.add_argument("--shapes", nargs="+", type=int, default=list(range(len(SHAPES))), help="indices into SHAPES")
    ap.add_argument("--name", default="kernels_decode")
    args = ap.parse_args()
    kvs = ["bf16", "fp8"] if args.kv == "both" else [args.kv]
    shapes = [SHAPES[i] for i in args.shapes]
    t_start = time.time()
    bw = common.copy_bandwidth()
    print(f"copy bandwidth (read+write): {bw / 1e9:.0f} GB/s", flush=True)
    configs = []  # beyond each kv's default (DEFAULT, FP8_DEFAULT), which runs first
    if args.sweep and args.kv == "bf16":
        configs += [(64, 4, None, 3, True, None)]
        kinds = [(32, 4, 3), (64, 4, 3), (64, 4, 4), (128, 8, 3)]
        configs += [(bn, nw, wv, st, fc, None) for bn, nw, st in kinds for wv in (1, 2, 4) for fc in (False, True)]
        configs += [(64, 4, None, 3, False, mr) for mr in REG_CAPS]
    elif args.sweep:  # with fp8: e4m3 tiles are half the bytes, so wider tiles and deeper pipelines fit; fewer points
        configs += [(bn, nw, wv, st, False, None) for bn, nw, wv, st in [(32, 4, None, 3), (64, 4, None, 4), (64, 4, None, 5), (64, 8, None, 3),
                    (128, 4, None, 3), (128, 4, None, 4), (128, 8, None, 3), (256, 8, None, 3), (64, 4, 2, 3), (64, 4, 4, 3)]]
        configs += [(bn, 4, None, 3, False, mr) for bn in (64, 128) for mr in REG_CAPS]
    rows = []
    for name, hq, hkv, D in shapes:
        for window in args.windows:
            for B in args.batches:
                for kv in kvs:
                    if time.time() - t_start > args.budget_s:
                        print("budget reached, stopping", flush=True)
                        break
                    res = bench_point(hq, hkv, D, 4, window, B, [FP8_DEFAULT if kv == "fp8" else DEFAULT] + configs, bw, kv)
                    best = min(res, key=lambda r: r["us"])
                    row = {"shape": name, "kv": kv, "cache": f"4+{window}", "B": B, "default": res[0], "best": best, "all": res}
                    rows.append(row)
                    print(f"{name} {kv} 4+{window} B={B}: default {res[0]['us']:.1f} us {res[0]['frac_copy_bw']:.2f} of copy bw; "
                      f"best {best['us']:.1f} us {best['frac_copy_bw']:.2f} (bn {best['block_n']} w {best['num_warps']} waves {best['waves']} st {best['stages']} fc {best['fused_combine']} maxnreg {best['maxnreg']})", flush=True)
    common.write_results(args.name, {"copy_bw_Bps": bw, "default_config": DEFAULT, "fp8_default_config": FP8_DEFAULT, "rows": rows}, args.out)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shapes), figsize=(11, 4), sharey=True, squeeze=False)
    for ax, (name, *_rest) in zip(axes[0], shapes):
        for B in args.batches:
            for kv in kvs:
                pts = [(int(r["cache"].split("+")[1]) + 4, r["default"]["frac_copy_bw"]) for r in rows
                       if r["shape"] == name and r["B"] == B and r["kv"] == kv]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ls="-" if kv == "bf16" else "--", label=f"batch {B}, {kv}")
        ax.set_xscale("log", base=2)
        ax.set_title(f"decode attention, {name}")
        ax.set_xlabel("cache tokens (4 sinks + window)")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("KV bytes / time, fraction of copy bandwidth")
    axes[0][0].legend()
    common.save_plot(args.name, fig, args.out)

    print("\nshape           kv    cache     B    us(def)  frac(def)  us(def+fc)  frac(best) best(bn,w,waves,st,fc,maxnreg)")
    for r in rows:
        d, b = r["default"], r["best"]
        print(f"{r['shape']:15s} {r['kv']:4s} {r['cache']:>8s} {r['B']:4d} {d['us']:9.1f} {d['frac_copy_bw']:9.2f} {r['all'][1]['us'] if len(r['all']) > 1 else float('nan'):10.1f} "
              f"{b['frac_copy_bw']:10.2f} {b['us']:8.1f} ({b['block_n']},{b['num_warps']},{b['waves']},{b['stages']},{int(b['fused_combine'])},{b['maxnreg']})")


if __name__ == "__main__":
    main()
