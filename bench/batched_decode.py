"""Issue 6, bench 2: batched decode throughput and inter-token latency.

Llama-2-7B shape (``--shape``), random bf16 weights, B concurrent sequences with full caches
(long conversations: every step reads the whole 4+W cache of every sequence),
one CUDA graph per step, tokens handed to the host every step. For each B:
aggregate tokens/s, ITL p50/p99 (wall time between consecutive steps), and the
fraction of the roofline step time (weights once + B caches) / copy bandwidth.
B = 1, 8, 32, 128 (where it fits) and the most sequences whose caches fit.

``--breakdown`` (issue 12: why a step is not at its roofline): one eager step of the
``engine`` variant under torch.profiler, its GPU kernel time split into decode
attention (the split and combine kernels, against the KV bytes it reads), the
weight products (GEMMs, against the weight bytes) and the rest (norms, RoPE-free
elementwise work, cache writes, argmax), each with its bytes / time. The same
kernels run inside the graph, so their sum is the graph step's GPU time less
launch gaps.

    python3 bench/batched_decode.py [--shape llama3.1-8b] [--windows 1020 2044] [--breakdown] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import models  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.cache.layout import StreamLayout  # noqa: E402


def build_model(args, dev, dtype=torch.bfloat16):
    """The engine's Llama at ``args``' shape, random weights (the modules' own init), in ``dtype``;
    on GPU with its fused norms and SiLU*up (kernels/fused.py), as runner/build.py sets them."""
    from swiftinfer_core.model.llama import Llama

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            m = Llama(args)
    finally:
        torch.set_default_dtype(prev)
    m.fuse_elementwise(torch.device(dev).type == "cuda")
    return m.eval()


@contextmanager
def layers_for(model, variant: str):
    """The model's layers as ``variant`` runs them: torch's norms and SiLU*up for 'unfused', else as built."""
    fused = model.fused
    model.fuse_elementwise(fused and variant != "unfused")
    try:
        yield
    finally:
        model.fuse_elementwise(fused)


def measure(model, args, layout, B, dev, variant: str, steps: int) -> dict:
    """Variant: engine, unfused (engine with torch's norms and SiLU*up), fused (bench-only bf16 thin forward), gemv; '+fc': fused combine."""
    mode, _, fc = variant.partition("+")
    with layers_for(model, mode):
        dec = models.OurDecoder(model, args, layout, B, dev, "engine" if mode == "unfused" else mode, fused_combine=fc == "fc")
        r = models.time_steps(dec, steps, B)
    del dec
    torch.cuda.empty_cache()
    return r


FAMILIES = (("attention", common.DECODE_ATTENTION_KERNELS), ("weights", common.WEIGHT_KERNELS))


def kernel_breakdown(model, args, layout, B, dev, variant: str = "engine") -> dict:
    """GPU kernel ms of one eager decode step of the ``engine`` (or ``unfused``) variant by family."""
    with layers_for(model, variant):
        dec = models.OurDecoder(model, args, layout, B, dev, "engine")
        k = common.kernel_ms_by_family(dec._step, FAMILIES)
    del dec
    torch.cuda.empty_cache()
    return {"attention_ms": k["attention"], "weights_ms": k["weights"], "other_ms": k["other"], "kernel_ms": k["total"],
            "top_kernels": k["top"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama2-7b", choices=sorted(models.SHAPES))
    ap.add_argument("--name", default="batched_decode")
    ap.add_argument("--breakdown", action="store_true", help="kernel time by family per (cache, B), engine variant")
    ap.add_argument("--windows", nargs="+", type=int, default=[1020, 2044])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 128])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reserve-gib", type=float, default=8.0)
    ap.add_argument("--variants", nargs="+", default=["engine", "fused", "fused+fc"],
                    help="engine, unfused (the engine before its fused norms), fused (bench-only bf16 forward), +fc: fused combine")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    bw = common.copy_bandwidth()
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    args = models.model_args(a.shape)
    model = build_model(args, dev)
    w_bytes = models.weight_bytes_read(args)
    rows = []
    for window in a.windows:
        layout = StreamLayout(4, window)
        per_seq = models.kv_bytes_read(args, layout)
        free = torch.cuda.mem_get_info()[0]
        max_fit = int((free - a.reserve_gib * 2**30) // per_seq)
        batches = sorted({b for b in a.batches if b <= max_fit} | {max_fit})
        print(f"4+{window}: {per_seq / 2**30:.2f} GiB of KV per sequence, {free / 2**30:.0f} GiB free -> max {max_fit}", flush=True)
        for B in batches:
            roof_s = (w_bytes + B * per_seq) / bw
            for variant in a.variants:
                r = measure(model, args, layout, B, dev, variant, a.steps)
                r.update(cache=f"4+{window}", B=B, variant=variant, max_fit=B == max_fit,
                         roofline_step_ms=roof_s * 1e3, roofline_tok_s=B / roof_s, frac_roofline=roof_s * 1e3 / r["itl_p50_ms"])
                if a.breakdown and variant in ("engine", "unfused"):
                    try:
                        b = kernel_breakdown(model, args, layout, B, dev, variant)
                    except Exception as e:  # keep the timed row; say why the split is missing
                        r["breakdown_error"] = repr(e)
                        print(f"      breakdown failed: {e!r}", flush=True)
                    else:
                        kv = B * per_seq
                        r.update(b, attention_TBps=kv / (b["attention_ms"] * 1e-3) / 1e12 if b["attention_ms"] else None,
                                 weights_TBps=w_bytes / (b["weights_ms"] * 1e-3) / 1e12 if b["weights_ms"] else None,
                                 attention_roofline_ms=kv / bw * 1e3, weights_roofline_ms=w_bytes / bw * 1e3)
                rows.append(r)
                print(f"  B={B:4d} {variant:8s}: {r['tok_s']:9.1f} tok/s  ITL p50 {r['itl_p50_ms']:.2f} p99 {r['itl_p99_ms']:.2f} ms  "
                      f"{r['frac_roofline']:.2f} of roofline", flush=True)
                if "kernel_ms" in r:
                    print(f"      kernels {r['kernel_ms']:.2f} ms: attention {r['attention_ms']:.2f} ms ({r['attention_TBps'] or 0:.2f} TB/s, "
                          f"roofline {r['attention_roofline_ms']:.2f}), weights {r['weights_ms']:.2f} ms ({r['weights_TBps'] or 0:.2f} TB/s, "
                          f"roofline {r['weights_roofline_ms']:.2f}), other {r['other_ms']:.2f} ms", flush=True)
    common.write_results(a.name, {"copy_bw_Bps": bw, "model": f"{a.shape} shape", "weight_bytes": w_bytes, "rows": rows}, a.out)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for window in a.windows:
        for variant in a.variants:
            rs = [r for r in rows if r["cache"] == f"4+{window}" and r["variant"] == variant]
            ax1.plot([r["B"] for r in rs], [r["tok_s"] for r in rs], marker="o", label=f"4+{window} {variant}")
            ax2.plot([r["B"] for r in rs], [r["itl_p50_ms"] for r in rs], marker="o", label=f"4+{window} {variant} p50")
        rs = [r for r in rows if r["cache"] == f"4+{window}" and r["variant"] == a.variants[0]]
        ax1.plot([r["B"] for r in rs], [r["roofline_tok_s"] for r in rs], ls="--", label=f"4+{window} roofline")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent sequences")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax1.set_ylabel("tokens/s (aggregate)")
    ax2.set_ylabel("inter-token latency, ms")
    ax1.set_title(f"{a.shape} shape, bf16, {common.device_info().get('name')}")
    common.save_plot(a.name, fig, a.out)
    print()
    cols = ["cache", "B", "variant", "tok_s", "itl_p50_ms", "itl_p99_ms", "roofline_tok_s", "frac_roofline"]
    print(common.table(rows, cols + (["attention_ms", "attention_roofline_ms", "weights_ms", "weights_roofline_ms", "other_ms"] if a.breakdown else [])))


if __name__ == "__main__":
    main()
