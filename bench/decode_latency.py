"""Issue 6, bench 1: per-token decode latency at batch 1.

Llama-2-7B shape (32 layers, hidden 4096, 32 heads, intermediate 11008, vocab
32000) and SmolLM2-135M shape (30 layers, hidden 576, 9 q / 3 kv heads, head
dim 64, intermediate 1536, vocab 49152), random bf16 weights on the GPU, caches
4+252 .. 4+4092, all full (a long conversation). Compared:

  ours        engine model (model/llama.py) + TritonAttention, CUDA graph per token
  ours+fused  same weights, bench thin forward with kernels/fused.py, CUDA graph
  ours+gemv   same weights, thin forward reading every weight with kernels/gemv.py
              (norms, SiLU*up, residual adds fused in; configs tuned at start)
  ours+gemv+fc  the same, decode attention combining its splits in-kernel (one launch)
  (a)         eager StreamingLLM as mit-han-lab did it (bench/models.py StreamingBaseline)
  (b)         sliding-window recompute: one transformers forward over W tokens per token
  roofline    (weight bytes + KV bytes read per token) / measured copy bandwidth

Per-token times include handing the token to the host (a sync per token).
Also: weights-only and attention-only graphs (where the time goes), and a
logits check that ours and (a) compute the same thing.

    python3 bench/decode_latency.py [--models llama2-7b smollm2-135m] [--out DIR]
    python3 bench/decode_latency.py --dry-run     # CPU, tiny model, interpreter: plumbing only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if "--dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import models  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.cache.layout import StreamLayout  # noqa: E402
from swiftinfer_core.kernels.attention import TritonAttention  # noqa: E402
from swiftinfer_core.kernels.decode_attention import decode_attention  # noqa: E402
from swiftinfer_core.model.loader import ModelArgs  # noqa: E402

WINDOWS = [252, 508, 1020, 2044, 4092]


def per_token(step, n: int, warm: int = 5) -> float:
    for _ in range(warm):
        step()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


GEMV_CONFIGS = [dict(block_n=bn, block_k=bk, num_warps=nw, stages=st) for bn, bk, nw, st in
                [(4, 1024, 4, 3), (8, 512, 4, 3), (8, 1024, 8, 3), (16, 512, 8, 3), (8, 512, 4, 4), (16, 256, 4, 3)]]


def weights_only_s(model, args: ModelArgs, dev) -> float:
    """CUDA graph of just the decode step's matrix-vector products (batch 1)."""
    h = args.hidden_size
    x = torch.randn(1, h, device=dev, dtype=torch.bfloat16)
    a = torch.randn(1, args.num_heads * args.head_dim, device=dev, dtype=torch.bfloat16)
    m = torch.randn(1, args.intermediate_size, device=dev, dtype=torch.bfloat16)
    F = torch.nn.functional

    def fn():
        with torch.inference_mode():
            for L in model.layers:
                F.linear(x, L.wqkv.weight)
                F.linear(a, L.wo.weight)
                F.linear(x, L.w13.weight)
                F.linear(m, L.w2.weight)
            F.linear(x.to(model.lm_head.weight.dtype), model.lm_head.weight)

    t, g = common.time_graph(fn, reps=20)
    return t


def attention_only_s(dec: models.OurDecoder, args: ModelArgs, fused_combine: bool = False) -> float:
    """CUDA graph of the decode attention of every layer (batch as in dec)."""
    B = dec.ids.shape[0]
    dev = dec.ids.device
    q = torch.randn(B, args.num_heads, args.head_dim, device=dev, dtype=torch.bfloat16)
    k = torch.randn(B, args.num_kv_heads, args.head_dim, device=dev, dtype=torch.bfloat16)
    freqs, lay = dec.attn._freqs(dev), dec.layout

    def fn():
        for kc, vc in zip(dec.pool.k, dec.pool.v):
            decode_attention(q, k, k, kc, vc, dec.plan.slots, dec.plan.starts, freqs, args.head_dim**-0.5,
                             lay.sinks, lay.window, splits=dec.plan.splits, workspace=dec.plan.workspace,
                             fused_combine=fused_combine)

    t, g = common.time_graph(fn, reps=20)
    return t


def recompute_s(hf, vocab: int, W: int, dev, reps: int = 3) -> float:
    ids = torch.randint(0, vocab, (1, W), device=dev)

    def fn():
        with torch.inference_mode():
            hf(input_ids=ids, use_cache=False, logits_to_keep=1)

    return common.time_eager(fn, reps=reps, warmup=1)


def run_model(name: str, windows: list[int], bw: float, steps: int, dev) -> dict:
    args = models.model_args(name)
    t0 = time.time()
    hf = models.hf_model(args, dev)
    ours = models.our_model(args, hf, dev)
    print(f"[{name}] models built in {time.time() - t0:.1f}s", flush=True)
    gemv_cfg, gemv_rows = models.tune_gemv(ours, lambda fn: common.time_graph(fn, reps=10), GEMV_CONFIGS)
    for r in gemv_rows:
        if r["impl"] == "cublas" or r.get("block_n") == gemv_cfg[r["kind"]]["block_n"] and r.get("block_k") == gemv_cfg[r["kind"]]["block_k"] \
                and r.get("num_warps") == gemv_cfg[r["kind"]]["num_warps"] and r.get("stages") == gemv_cfg[r["kind"]]["stages"]:
            print(f"[{name}] gemv {r['kind']:7s} {r['N']}x{r['K']} {r['impl']:6s} {r['us_each']:.1f} us {r['GBps']:.0f} GB/s", flush=True)
    import copy

    hf32 = copy.deepcopy(hf).float()
    check = models.equivalence_check(hf, ours, args, dev, TritonAttention, hf32=hf32, gemv_cfg=gemv_cfg)
    del hf32
    torch.cuda.empty_cache()
    for k, v in check.items():
        print(f"[{name}] logits {k}: {v}", flush=True)
    w_bytes = models.weight_bytes_read(args)
    t_w = weights_only_s(ours, args, dev)
    print(f"[{name}] weights-only graph (cuBLAS) {t_w * 1e3:.3f} ms = {w_bytes / t_w / 1e9:.0f} GB/s", flush=True)
    rows = []
    for window in windows:
        layout = StreamLayout(4, window)
        kv = models.kv_bytes_read(args, layout)
        r = {"model": name, "cache": f"4+{window}", "weight_bytes": w_bytes, "kv_bytes": kv,
             "roofline_ms": (w_bytes + kv) / bw * 1e3}
        for mode, key, fc in (("engine", "ours_ms", False), ("fused", "ours_fused_ms", False), ("gemv", "ours_gemv_ms", False),
                              ("gemv", "ours_gemv_fc_ms", True)):
            dec = models.OurDecoder(ours, args, layout, 1, dev, mode, gemv_cfg=gemv_cfg, fused_combine=fc)
            dec.capture()
            r[key] = per_token(dec.step, steps) * 1e3
            r[key.replace("_ms", "_device_only_ms")] = dec.device_time_per_step() * 1e3
            if mode == "fused":
                r["attention_only_ms"] = attention_only_s(dec, args) * 1e3
            if fc:
                r["attention_only_fc_ms"] = attention_only_s(dec, args, fused_combine=True) * 1e3
            del dec
            torch.cuda.empty_cache()
        base = models.StreamingBaseline(hf, 4, window)
        base.prefill_random(layout.capacity - 1)
        tok = torch.randint(0, args.vocab_size, (1,), device=dev)
        r["baseline_a_ms"] = per_token(lambda: base.step(tok).argmax(-1).cpu(), 12, warm=3) * 1e3
        base = None  # free before the recompute baseline
        torch.cuda.empty_cache()
        r["recompute_b_ms"] = recompute_s(hf, args.vocab_size, layout.capacity, dev) * 1e3
        best = min(r["ours_ms"], r["ours_fused_ms"], r["ours_gemv_ms"], r["ours_gemv_fc_ms"])
        r.update(best_ms=best, frac_roofline=r["roofline_ms"] / best, speedup_vs_a=r["baseline_a_ms"] / best,
                 speedup_vs_b=r["recompute_b_ms"] / best, weights_only_ms=t_w * 1e3)
        rows.append(r)
        print(f"[{name}] 4+{window}: ours {r['ours_ms']:.3f} fused {r['ours_fused_ms']:.3f} gemv {r['ours_gemv_ms']:.3f} "
              f"gemv+fc {r['ours_gemv_fc_ms']:.3f} (device-only {r['ours_gemv_fc_device_only_ms']:.3f}) attn-only {r['attention_only_ms']:.3f} "
              f"(a) {r['baseline_a_ms']:.2f} (b) {r['recompute_b_ms']:.2f} roofline {r['roofline_ms']:.3f} ms", flush=True)
    del hf, ours
    torch.cuda.empty_cache()
    return {"rows": rows, "logits_check": check, "weights_only_cublas_ms": t_w * 1e3, "weights_only_cublas_GBps": w_bytes / t_w / 1e9,
            "gemv_tuning": gemv_rows, "gemv_config": gemv_cfg}


def dry_run():
    """CPU plumbing check: tiny model, Triton interpreter, equivalence only."""
    from swiftinfer_core.kernels.attention import TorchAttention

    models.SHAPES["tiny"] = dict(vocab_size=500, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
                                 intermediate_size=256, rope_theta=10000.0, tie_embeddings=False)
    args = models.model_args("tiny")
    hf = models.hf_model(args, "cpu", torch.float32)
    ours = models.our_model(args, hf, "cpu", torch.float32)
    for cls in (TorchAttention, TritonAttention):
        for k, v in models.equivalence_check(hf, ours, args, "cpu", cls, prompt=12, decode=4, window=8).items():
            print(cls.__name__, k, v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["llama2-7b", "smollm2-135m"])
    ap.add_argument("--windows", nargs="+", type=int, default=WINDOWS)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default=None)
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    if a.dry_run:
        return dry_run()
    dev = torch.device("cuda")
    bw = common.copy_bandwidth()
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    results = {name: run_model(name, a.windows, bw, a.steps, dev) for name in a.models}
    common.write_results("decode_latency", {"copy_bw_Bps": bw, "models": results}, a.out)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2))
    axes = [axes] if len(results) == 1 else axes
    for ax, (name, res) in zip(axes, results.items()):
        xs = [int(r["cache"].split("+")[1]) + 4 for r in res["rows"]]
        for key, lab in [("ours_ms", "ours (engine model)"), ("ours_fused_ms", "ours + fused norm/SiLU"), ("ours_gemv_ms", "ours + fused GEMV"), ("ours_gemv_fc_ms", "ours + fused GEMV + in-kernel combine"),
                         ("baseline_a_ms", "(a) eager StreamingLLM"), ("recompute_b_ms", "(b) window recompute"),
                         ("roofline_ms", "roofline")]:
            ax.plot(xs, [r[key] for r in res["rows"]], marker="o", label=lab, ls="--" if key == "roofline_ms" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("cache tokens (4 sinks + window)")
        ax.set_ylabel("ms per token, batch 1")
        ax.set_title(f"{name} shape, bf16, {common.device_info().get('name')}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    common.save_plot("decode_latency", fig, a.out)

    cols = ["model", "cache", "ours_ms", "ours_fused_ms", "ours_gemv_ms", "ours_gemv_fc_ms", "attention_only_ms", "baseline_a_ms", "recompute_b_ms",
            "roofline_ms", "frac_roofline", "speedup_vs_a", "speedup_vs_b"]
    print()
    print(common.table([r for res in results.values() for r in res["rows"]], cols))


if __name__ == "__main__":
    main()
