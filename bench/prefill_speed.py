"""Issue 12: prefill speed. One chunk of T new tokens of one conversation, fed
into a cache slot that already holds C tokens, at the Llama-2-7B and
Llama-3.1-8B shapes, random weights, one GPU.

Per (shape, cache, C, T): wall ms (CUDA events, warm, median of --reps),
tokens/s, achieved TFLOP/s and its fraction of the device's dense bf16 peak,
the attention kernels' share (every layer's attention call timed alone, on the
same plan and caches), and beside it one read of the weights at the device's
HBM bandwidth: a short warm turn should cost about one weight read.

The timed call is what ModelRunner.forward runs for a prefill step: the
AttnBatch built on the host, the attention plan prepared, Llama.forward with
logits for the chunk's last row only (the engine samples one token after a
turn's last chunk), LM head in float32 as the engine loads it. The runner
(runner/model_runner.py) is not called: the timing covers exactly these calls.

The engine feeds at most EngineConfig.prefill_chunk tokens (default 512) of
one conversation per step; chunks above that are measured here as the kernels
allow them (a chunk longer than the window drops its own early tokens).

    python bench/prefill_speed.py [--shapes llama2-7b llama3.1-8b] [--out DIR]
    python bench/prefill_speed.py --shapes smollm2-135m --chunks 32 64 --windows 60 --layers 2 --reps 2 --warmup 1 --device cpu --out /tmp/pf   # smoke
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import batched_decode  # noqa: E402
import common  # noqa: E402
import models  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.cache.layout import StreamLayout  # noqa: E402
from swiftinfer_core.cache.pool import KVPool  # noqa: E402
from swiftinfer_core.kernels.attention import TorchAttention  # noqa: E402
from swiftinfer_core.kernels.batch import AttnBatch  # noqa: E402
from swiftinfer_core.kernels.rope import inv_freq  # noqa: E402
from swiftinfer_core.model.loader import ModelArgs  # noqa: E402

CHUNKS = [32, 64, 128, 256, 512, 1024, 2048]
LOGIT_ROWS = 1  # rows the LM head runs on: the chunk's last token
FLOPS_FORMULA = (
    "flops = 2*T*P + 2*R*V*H + 4*L*Hq*D*S, where P = L*(H*D*(Hq+2*Hkv) + Hq*D*H + 3*H*I) "
    "(qkv, o, gate+up, down weights of every layer), R = 1 logit row (the chunk's last token), "
    "S = sum over the chunk's stream indices t = C..C+T-1 of min(t+1, sinks+window) "
    "(keys each query sees: QK^T and PV, 2*D FLOPs each per key and head). Norms, RoPE, softmax, "
    "SiLU and the masked-out parts of the attention tiles are not counted."
)


def matmul_params(args: ModelArgs) -> int:
    """Weights every token multiplies by: qkv, o, gate+up and down of every layer."""
    h, d, i = args.hidden_size, args.head_dim, args.intermediate_size
    return args.num_layers * (h * d * (args.num_heads + 2 * args.num_kv_heads) + args.num_heads * d * h + 3 * h * i)


def visible_keys(layout: StreamLayout, cached: int, chunk: int) -> int:
    """Sum over the chunk's queries t = cached .. cached+chunk-1 of the keys t sees:
    all of 0..t while t+1 <= sinks+window, else sinks + window (layout.py)."""
    cap = layout.capacity
    last = cached + chunk  # queries t+1 run over cached+1 .. last
    ramp_end = min(last, cap)  # t+1 <= cap: t+1 keys
    ramp = (ramp_end * (ramp_end + 1) - cached * (cached + 1)) // 2 if ramp_end > cached else 0
    return ramp + cap * (last - max(cached, cap)) if last > cap else ramp


def prefill_flops(args: ModelArgs, layout: StreamLayout, cached: int, chunk: int) -> dict:
    """FLOPs of one chunk (FLOPS_FORMULA)."""
    mm = 2 * chunk * matmul_params(args) + 2 * LOGIT_ROWS * args.vocab_size * args.hidden_size
    att = 4 * args.num_layers * args.num_heads * args.head_dim * visible_keys(layout, cached, chunk)
    return {"flops_matmul": mm, "flops_attention": att, "flops": mm + att}


def weight_bytes(model) -> int:
    """Bytes of every weight a prefill step reads, as loaded (LM head float32); the
    embedding table is left out: a step gathers only its T rows."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("embed."))


def timed(fn, cuda: bool, reps: int, warmup: int) -> float:
    """Median seconds of fn(): CUDA events on a GPU, perf_counter on the CPU."""
    if cuda:
        return common.time_eager(fn, reps=reps, warmup=warmup)
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


class Slot:
    """One conversation's cache slot at ``layout`` (random K/V, never zeros) and its attention."""

    def __init__(self, model, args: ModelArgs, layout: StreamLayout, device: torch.device, dtype: torch.dtype):
        self.model, self.args, self.layout, self.device = model, args, layout, device
        self.pool = KVPool(layout, args.num_layers, 1, args.num_kv_heads, args.head_dim, dtype, device)
        models.fill_pool(self.pool)
        freqs = inv_freq(args.head_dim, args.rope_theta, args.rope_scaling).to(device)
        if device.type == "cuda":
            from swiftinfer_core.kernels.attention import TritonAttention  # needs triton

            self.attn = TritonAttention(layout, freqs, args.head_dim**-0.5)
        else:
            self.attn = TorchAttention(layout, freqs, args.head_dim**-0.5)  # the CPU engine's backend

    def prefill(self, ids: list[int], cached: int) -> torch.Tensor:
        """ModelRunner.forward for one chunk in slot 0 after ``cached`` tokens: logits [1, V]."""
        batch = AttnBatch.build([0], [cached], [len(ids)], self.device)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        rows = torch.tensor([len(ids) - 1], dtype=torch.long, device=self.device)
        return self.model(input_ids, self.attn, self.attn.prepare(batch), self.pool, rows)

    def attention_only(self, chunk: int, cached: int):
        """fn() running every layer's attention call (kernel + cache write) of the same
        step on random q/k/v, strided views of one fused qkv as in Block.forward."""
        a = self.args
        hq, hkv, d = a.num_heads, a.num_kv_heads, a.head_dim
        qkv = torch.randn(chunk, (hq + 2 * hkv) * d, device=self.device, dtype=self.pool.k[0].dtype)
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        q, k, v = q.view(chunk, hq, d), k.view(chunk, hkv, d), v.view(chunk, hkv, d)
        plan = self.attn.prepare(AttnBatch.build([0], [cached], [chunk], self.device))

        def fn():
            with torch.inference_mode():
                for i in range(a.num_layers):
                    self.attn.forward(plan, q, k, v, self.pool.k[i], self.pool.v[i])

        return fn


def measure(slot: Slot, cached: int, chunk: int, reps: int, warmup: int, peaks: dict, dtype: torch.dtype,
            read_bytes: int, copy_bw: float | None, with_attention: bool) -> dict:
    args, layout = slot.args, slot.layout
    cuda = slot.device.type == "cuda"
    ids = torch.randint(0, args.vocab_size, (chunk,)).tolist()
    wall = timed(lambda: slot.prefill(ids, cached), cuda, reps, warmup)
    fl = prefill_flops(args, layout, cached, chunk)
    peak = peaks["bf16_dense_flops"] if dtype == torch.bfloat16 else None
    read_s = read_bytes / peaks["hbm_Bps"] if peaks["hbm_Bps"] else None
    row = {
        "cache": f"{layout.sinks}+{layout.window}", "cached": cached, "chunk": chunk,
        "chunk_exceeds_window": chunk > layout.window,
        "wall_ms": wall * 1e3, "tok_s": chunk / wall, **fl, "tflops": fl["flops"] / wall / 1e12,
        "frac_bf16_peak": fl["flops"] / wall / peak if peak else None,
        "weight_read_ms": read_s * 1e3 if read_s else None,
        "weight_read_ms_copy_bw": read_bytes / copy_bw * 1e3 if copy_bw else None,
        "wall_over_weight_read": wall / read_s if read_s else None,
        "attn_ms": None, "attn_share": None,
    }
    if with_attention:
        att = timed(slot.attention_only(chunk, cached), cuda, reps, warmup)
        row.update(attn_ms=att * 1e3, attn_share=att / wall)
    return row


def cached_values(spec: list[str], layout: StreamLayout) -> list[int]:
    """--cached entries: an int, or "full": the window less 20 (1000 for 4+1020), the
    slot mostly full but not yet wrapped."""
    out = []
    for s in spec:
        c = max(layout.window - 20, 0) if s == "full" else int(s)
        if c < 0:
            raise ValueError(f"--cached {s}: must be >= 0")
        out.append(c)
    return sorted(set(out))


def plot(rows: list[dict], shapes: dict, name: str, out: str | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.4))
    has_peak = any(r["frac_bf16_peak"] is not None for r in rows)
    for shape in shapes:
        keys = sorted({(r["cache"], r["cached"]) for r in rows if r["shape"] == shape})
        for cache, cached in keys:
            rs = [r for r in rows if r["shape"] == shape and r["cache"] == cache and r["cached"] == cached]
            label = f"{shape} {cache} C={cached}"
            ax1.plot([r["chunk"] for r in rs], [r["wall_ms"] for r in rs], marker="o", label=label)
            ax2.plot([r["chunk"] for r in rs], [r["tok_s"] for r in rs], marker="o", label=label)
            ax3.plot([r["chunk"] for r in rs], [r["frac_bf16_peak"] if has_peak else r["tflops"] for r in rs], marker="o", label=label)
        read = shapes[shape]["weight_read_ms"]
        if read:
            ax1.axhline(read, ls="--", color="gray", lw=0.8)
            ax1.annotate(f"{shape}: one weight read", (min(r["chunk"] for r in rows), read), fontsize=7, va="bottom")
    ax1.set_ylabel("wall ms per chunk")
    ax1.set_yscale("log")
    ax2.set_ylabel("prefill tokens/s")
    ax3.set_ylabel("fraction of dense bf16 peak" if has_peak else "achieved TFLOP/s")
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("chunk tokens T")
        ax.grid(alpha=0.3, which="both")
    ax3.legend(fontsize=7)
    ax1.set_title(title)
    common.save_plot(name, fig, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "llama3.1-8b"], choices=sorted(models.SHAPES))
    ap.add_argument("--chunks", nargs="+", type=int, default=CHUNKS)
    ap.add_argument("--windows", nargs="+", type=int, default=[1020, 2044], help="caches of 4+W")
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--cached", nargs="+", default=["0", "full"], help='tokens already in the slot: ints or "full" (W-20)')
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers than the shape's (smoke runs)")
    ap.add_argument("--no-attention", action="store_true", help="skip timing the attention calls alone")
    ap.add_argument("--compare-unfused", action="store_true",
                    help="also time each chunk with torch's norms and SiLU*up (Llama.fuse_elementwise(False)), side by side")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bfloat16 on cuda, float32 on cpu (as the engine)")
    ap.add_argument("--name", default="prefill_speed")
    ap.add_argument("--out", default=None, help="default: $OUT, else bench/results")
    a = ap.parse_args(argv)
    if any(c < 1 for c in a.chunks):
        ap.error("--chunks must be >= 1")
    if any(w <= a.sinks for w in a.windows) or a.sinks < 0:
        ap.error("every --windows must exceed --sinks >= 0")
    if a.reps < 1 or a.warmup < 0 or (a.layers is not None and a.layers < 1):
        ap.error("--reps >= 1, --warmup >= 0, --layers >= 1")
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is visible (use --device cpu for a smoke run)")
    dev = torch.device(a.device)
    dtype = getattr(torch, a.dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
    peaks = common.device_peaks() if dev.type == "cuda" else common.device_peaks("cpu")
    copy_bw = common.copy_bandwidth() if dev.type == "cuda" else None
    layouts = [StreamLayout(a.sinks, w) for w in a.windows]
    try:
        cached = {lay: cached_values(a.cached, lay) for lay in layouts}
    except ValueError as exc:
        ap.error(str(exc))
    torch.manual_seed(0)

    rows, shapes = [], {}
    for shape in a.shapes:
        args = models.model_args(shape)
        if a.layers is not None:
            args = replace(args, num_layers=a.layers)
        model = batched_decode.build_model(args, dev, dtype)
        model.lm_head.float()  # as the engine loads it (EngineConfig.lm_head_fp32)
        read_bytes = weight_bytes(model)
        shapes[shape] = {"args": {k: v for k, v in vars(args).items() if k != "eos_token_ids"},
                         "matmul_params": matmul_params(args), "weight_bytes": read_bytes,
                         "weight_read_ms": read_bytes / peaks["hbm_Bps"] * 1e3 if peaks["hbm_Bps"] else None,
                         "weight_read_ms_copy_bw": read_bytes / copy_bw * 1e3 if copy_bw else None}
        print(f"{shape}: {read_bytes / 2**30:.2f} GiB of weights read per step, "
              f"{matmul_params(args) / 1e9:.2f} B matmul params", flush=True)
        for lay in layouts:
            slot = Slot(model, args, lay, dev, dtype)
            for c in cached[lay]:
                for t in a.chunks:
                    r = measure(slot, c, t, a.reps, a.warmup, peaks, dtype, read_bytes, copy_bw, not a.no_attention)
                    if a.compare_unfused and model.fused:
                        model.fuse_elementwise(False)
                        u = measure(slot, c, t, a.reps, a.warmup, peaks, dtype, read_bytes, copy_bw, False)
                        model.fuse_elementwise(True)
                        r.update(wall_ms_unfused=u["wall_ms"], fused_speedup=u["wall_ms"] / r["wall_ms"])
                    rows.append({"shape": shape, **r})
                    print(f"  {shape} {r['cache']} C={c:5d} T={t:5d}: {r['wall_ms']:9.2f} ms  {r['tok_s']:10.0f} tok/s  "
                          f"{r['tflops']:7.2f} TFLOP/s  peak frac {common._fmt(r['frac_bf16_peak'])}  "
                          f"attn share {common._fmt(r['attn_share'])}", flush=True)
            del slot
        del model
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    common.write_results(a.name, {
        "what": "one prefill chunk of T tokens into a cache slot holding C tokens, random weights, warm",
        "timing": f"{'CUDA events' if dev.type == 'cuda' else 'perf_counter'}, median of {a.reps} after {a.warmup} warm-up calls; "
                  "the call is ModelRunner.forward's (AttnBatch on the host, plan, Llama.forward, 1 logit row)",
        "dtype": str(dtype).removeprefix("torch."), "lm_head": "float32", "layers_override": a.layers,
        "flops_formula": FLOPS_FORMULA,
        "peaks": peaks, "copy_bw_Bps": copy_bw,
        "weight_read": "weight_bytes (all weights but the embedding table, LM head float32) / peaks.hbm_Bps; "
                       "weight_read_ms_copy_bw uses the measured device-to-device copy bandwidth instead",
        "attention": None if a.no_attention else "attn_ms: every layer's attention call (prefill kernel + cache write) timed alone",
        "engine_prefill_chunk": "EngineConfig.prefill_chunk defaults to 512 (max_batch_tokens 2048): the engine feeds at most "
                                "that many tokens of one conversation per step; larger T here need it raised",
        "shapes": shapes, "rows": rows,
    }, a.out)
    plot(rows, shapes, a.name, a.out, f"prefill, {str(dtype).removeprefix('torch.')}, {peaks['device']}")
    print()
    print(common.table(rows, ["shape", "cache", "cached", "chunk", "wall_ms", "tok_s", "tflops", "frac_bf16_peak",
                              "attn_share", "wall_over_weight_read"] + (["wall_ms_unfused", "fused_speedup"] if a.compare_unfused else [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
