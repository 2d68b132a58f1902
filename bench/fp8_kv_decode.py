"""Issue 16: batched decode over an FP8 (e4m3) KV cache against bf16, Llama-2-7B
shape, StreamingLLM 4+2044 (the cache a long conversation keeps).

Random bf16 weights, B conversations with full caches (every step reads all
4+2044 rows of every sequence), one CUDA graph per step (the engine's forward
and TritonAttention), tokens to the host every step, as bench/batched_decode.py.
For each KV dtype: how many conversations fit in the same free memory (minus
``--reserve-gib`` for activations and workspaces; fp8 rows are head_dim + 4
bytes: cache/kv_fp8.py), then tokens/s and inter-token latency at B = 1, 32 and
each dtype's most that fit (bf16's maximum runs in fp8 too: equal batches).

    python3 bench/fp8_kv_decode.py [--window 2044] [--batches 1 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import models  # noqa: E402
import torch  # noqa: E402
from batched_decode import build_model  # noqa: E402

from swiftinfer_core.cache.kv_fp8 import FP8  # noqa: E402
from swiftinfer_core.cache.layout import StreamLayout  # noqa: E402
from swiftinfer_core.cache.pool import KVPool  # noqa: E402

KV = {"bf16": torch.bfloat16, "fp8": FP8}


def measure(model, args, layout, B: int, dev, kv_dtype, steps: int) -> dict:
    dec = models.OurDecoder(model, args, layout, B, dev, "engine", kv_dtype=kv_dtype)
    r = models.time_steps(dec, steps, B)
    del dec
    torch.cuda.empty_cache()
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=int, default=2044)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reserve-gib", type=float, default=8.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    bw = common.copy_bandwidth()
    args = models.model_args("llama2-7b")
    model = build_model(args, dev)
    w_bytes = models.weight_bytes_read(args)
    layout = StreamLayout(4, a.window)
    free = torch.cuda.mem_get_info()[0]
    budget = free - a.reserve_gib * 2**30
    per_seq = {name: KVPool.bytes_per_slot(layout, args.num_layers, args.num_kv_heads, args.head_dim, dt) for name, dt in KV.items()}
    fit = {name: int(budget // b) for name, b in per_seq.items()}
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s; {free / 2**30:.0f} GiB free; per conversation "
          + ", ".join(f"{n} {per_seq[n] / 2**30:.3f} GiB -> {fit[n]} fit" for n in KV), flush=True)
    rows = []
    for name, dt in KV.items():
        batches = sorted({b for b in a.batches if b <= fit[name]} | {fit["bf16"], fit[name]})
        for B in batches:
            roof_s = (w_bytes + B * per_seq[name]) / bw
            r = measure(model, args, layout, B, dev, dt, a.steps)
            r.update(kv=name, cache=f"4+{a.window}", B=B, max_fit=B == fit[name], slots_fit=fit[name],
                     kv_bytes_per_seq=per_seq[name], roofline_tok_s=B / roof_s, frac_roofline=roof_s * 1e3 / r["itl_p50_ms"])
            rows.append(r)
            print(f"  {name} B={B:4d}: {r['tok_s']:9.1f} tok/s  ITL p50 {r['itl_p50_ms']:.2f} p99 {r['itl_p99_ms']:.2f} ms  "
                  f"{r['frac_roofline']:.2f} of roofline", flush=True)
    best = {n: max(r["tok_s"] for r in rows if r["kv"] == n) for n in KV}
    summary = {"slots_fit": fit, "slots_ratio": fit["fp8"] / fit["bf16"], "best_tok_s": best,
               "best_tok_s_ratio": best["fp8"] / best["bf16"]}
    common.write_results("fp8_kv_decode", {"copy_bw_Bps": bw, "model": "llama2-7b shape, random bf16 weights",
                                           "weight_bytes": w_bytes, "free_bytes": free, "reserve_gib": a.reserve_gib,
                                           "summary": summary, "rows": rows}, a.out)
    plot(rows, fit, a)
    print()
    print(common.table(rows, ["kv", "B", "tok_s", "itl_p50_ms", "itl_p99_ms", "roofline_tok_s", "frac_roofline", "slots_fit"]))
    print(summary)


def plot(rows: list[dict], fit: dict, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, color in (("bf16", "C0"), ("fp8", "C1")):
        rs = [r for r in rows if r["kv"] == name]
        ax1.plot([r["B"] for r in rs], [r["tok_s"] for r in rs], marker="o", color=color, label=f"{name} KV")
        ax1.plot([r["B"] for r in rs], [r["roofline_tok_s"] for r in rs], ls="--", color=color, alpha=0.5, label=f"{name} roofline")
        ax2.plot([r["B"] for r in rs], [r["itl_p50_ms"] for r in rs], marker="o", color=color, label=f"{name} KV p50")
        for ax in (ax1, ax2):
            ax.axvline(fit[name], color=color, ls=":", label=f"{name}: {fit[name]} conversations fit")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"concurrent conversations (full 4+{a.window} caches)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax1.set_ylabel("tokens/s (aggregate)")
    ax2.set_ylabel("inter-token latency, ms")
    ax1.set_title(f"Llama-2-7B shape, bf16 weights, KV bf16 vs fp8, {common.device_info().get('name')}")
    common.save_plot("fp8_kv_decode", fig, a.out)


if __name__ == "__main__":
    main()
