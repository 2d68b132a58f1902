"""Decode attention kernel alone: KV bytes read per call over time, against the
measured device-to-device copy bandwidth.

Shapes: Llama-2-7B attention (32 q heads, 32 kv heads, head_dim 128) and GQA
(32 q / 8 kv heads), bf16, caches 4+252 .. 4+4092 full (streams wrapped many
times), batch 1/8/32/128. Each timed CUDA graph runs the kernel over L distinct
layer caches (together >= 1 GiB) so that the 60 MB L2 never holds the data a
call reads, as in a real model. With --sweep it also times block size, warps and
split-K waves and reports the best per shape.

    python3 bench/kernels_decode.py [--sweep] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.kernels.decode_attention import decode_attention, decode_splits, decode_workspace  # noqa: E402
from swiftinfer_core.kernels.rope import inv_freq  # noqa: E402

SHAPES = [("MHA 32/32x128", 32, 32, 128), ("GQA 32/8x128", 32, 8, 128)]
WINDOWS = [252, 508, 1020, 2044, 4092]
BATCHES = [1, 8, 32, 128]
DEFAULT = (64, 4, None, 3, False)  # block_n, num_warps, waves (None: auto), stages, fused combine: TritonAttention's


def bench_point(hq, hkv, D, sinks, window, B, configs, bw):
    cap = sinks + window
    layer_bytes = 2 * B * hkv * cap * D * 2
    L = max(1, min(64, math.ceil(2**30 / layer_bytes)))
    dev = "cuda"
    caches = [(torch.randn(B, hkv, cap, D, device=dev, dtype=torch.bfloat16),
               torch.randn(B, hkv, cap, D, device=dev, dtype=torch.bfloat16)) for _ in range(L)]
    q = torch.randn(B, hq, D, device=dev, dtype=torch.bfloat16)
    kn = torch.randn(B, hkv, D, device=dev, dtype=torch.bfloat16)
    vn = torch.randn_like(kn)
    out = torch.empty_like(q)
    slots = torch.arange(B, dtype=torch.int32, device=dev)
    starts = torch.tensor([10 * cap + 7 * b for b in range(B)], dtype=torch.int64, device=dev)  # all full
    freqs = inv_freq(D, 10000.0).to(dev)
    res = []
    for bn, nw, waves, st, fc in configs:
        splits = decode_splits(B, hkv, cap, bn, torch.cuda.get_device_properties(0).multi_processor_count, waves)
        ws = decode_workspace(B, hq, hkv, D, splits[0], dev)

        def fn():
            for k, v in caches:
                decode_attention(q, kn, vn, k, v, slots, starts, freqs, D**-0.5, sinks, window, out=out,
                                 block_n=bn, num_warps=nw, stages=st, splits=splits, workspace=ws, fused_combine=fc)

        t, g = common.time_graph(fn, reps=7)
        del g
        per = t / L
        res.append({"block_n": bn, "num_warps": nw, "waves": waves, "stages": st, "fused_combine": fc, "splits": splits[0], "layers_in_graph": L,
                    "us": per * 1e6, "kv_bytes": layer_bytes, "gbps": layer_bytes / per / 1e9, "frac_copy_bw": layer_bytes / per / bw})
    caches = None  # free the layers before the next point
    torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--budget-s", type=float, default=300)
    args = ap.parse_args()
    t_start = time.time()
    bw = common.copy_bandwidth()
    print(f"copy bandwidth (read+write): {bw / 1e9:.0f} GB/s", flush=True)
    configs = [DEFAULT]
    if args.sweep:
        configs += [(64, 4, None, 3, True)]
        kinds = [(32, 4, 3), (64, 4, 3), (64, 4, 4), (128, 8, 3)]
        configs += [(bn, nw, wv, st, fc) for bn, nw, st in kinds for wv in (1, 2, 4) for fc in (False, True)]
    rows = []
    for name, hq, hkv, D in SHAPES:
        for window in WINDOWS:
            for B in BATCHES:
                if time.time() - t_start > args.budget_s:
                    print("budget reached, stopping", flush=True)
                    break
                res = bench_point(hq, hkv, D, 4, window, B, configs, bw)
                best = max(res, key=lambda r: r["gbps"])
                row = {"shape": name, "cache": f"4+{window}", "B": B, "default": res[0], "best": best, "all": res}
                rows.append(row)
                print(f"{name} 4+{window} B={B}: default {res[0]['us']:.1f} us {res[0]['frac_copy_bw']:.2f} of copy bw; "
                      f"best {best['frac_copy_bw']:.2f} (bn {best['block_n']} w {best['num_warps']} waves {best['waves']} st {best['stages']} fc {best['fused_combine']})", flush=True)
    common.write_results("kernels_decode", {"copy_bw_Bps": bw, "default_config": DEFAULT, "rows": rows}, args.out)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SHAPES), figsize=(11, 4), sharey=True)
    for ax, (name, *_rest) in zip(axes, SHAPES):
        for B in BATCHES:
            pts = [(int(r["cache"].split("+")[1]) + 4, r["default"]["frac_copy_bw"]) for r in rows if r["shape"] == name and r["B"] == B]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"batch {B}")
        ax.set_xscale("log", base=2)
        ax.set_title(f"decode attention, {name}, bf16")
        ax.set_xlabel("cache tokens (4 sinks + window)")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("KV bytes / time, fraction of copy bandwidth")
    axes[0].legend()
    common.save_plot("kernels_decode", fig, args.out)

    print("\nshape            cache     B    us(def)  frac(def)  us(def+fc)  frac(best) best(bn,w,waves,st,fc)")
    for r in rows:
        d, b = r["default"], r["best"]
        print(f"{r['shape']:15s} {r['cache']:>8s} {r['B']:4d} {d['us']:9.1f} {d['frac_copy_bw']:9.2f} {r['all'][1]['us'] if len(r['all']) > 1 else float('nan'):10.1f} "
              f"{b['frac_copy_bw']:10.2f}  ({b['block_n']},{b['num_warps']},{b['waves']},{b['stages']},{int(b['fused_combine'])})")


if __name__ == "__main__":
    main()
