"""Issue 16's benchmark matrix in one run: the engine's whole decode step for each weight
format (bf16, fp8, int8, int4 group 128) with a bf16 or an FP8 KV cache, StreamingLLM 4+2044.

Per shape (bench/models.py; Llama-2-7B and Llama-3.1-8B by default), per weight format: the
engine's Llama with random bf16 weights (the modules' own init), its linears and LM head then
replaced in place as ``quantization`` would (model/fp8_linear.py, model/quant_linear.py;
rounded to nearest: speed does not depend on the values), so each format's products run the
kernels the engine picks for that many rows; batch-1 steps take the engine's fused GEMV chain
(model/fused_decode.py: the norms, SiLU*up and residual adds folded into the weight reads) where
the engine would (``--chain``: "engine", "unfused" as before session 35, or both side by side). Per KV dtype: B conversations with full caches
(every step reads all 4+2044 rows of each), one CUDA graph per step with attention, norms,
RoPE, the head and argmax, tokens to the host every step (bench/models.OurDecoder, as
bench/fp8_kv_decode.py). B: each of ``--batches`` that fits, and the most conversations
that fit in the free memory less ``--reserve-gib`` with a bf16 cache and with this KV dtype
(the issue's "conversations per GPU" and its "same N").

Roofline of a step: (bytes of every weight but the embedding, as held by this format,
+ B full caches) / copy bandwidth. Results are rewritten after every point, so a run cut
short keeps what it measured.

    python3 bench/formats_step.py [--shapes llama2-7b] [--formats bf16 int4] [--batches 1 32 128] [--out DIR]
    python3 bench/formats_step.py --replot bench/results/formats_step_h200.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import models  # noqa: E402
import torch  # noqa: E402
from fp8_kv_decode import measure  # noqa: E402  (one engine step of B full caches, timed)

from swiftinfer_core.cache.kv_fp8 import FP8  # noqa: E402
from swiftinfer_core.cache.layout import StreamLayout  # noqa: E402
from swiftinfer_core.cache.pool import KVPool  # noqa: E402
from swiftinfer_core.model.fp8_linear import SCALED_MM_MIN_ROWS  # noqa: E402
from swiftinfer_core.model.quant import QuantFormat  # noqa: E402

# name -> (weight format, e4m3 terms of the down projections' input on the _scaled_mm path: fp8_down_activation_terms)
FORMATS = {"bf16": (None, 1), "fp8": (QuantFormat.FP8, 1), "int8": (QuantFormat.INT8, 1), "int4": (QuantFormat.INT4, 1),
           "fp8-down2": (QuantFormat.FP8, 2)}
KV = {"bf16": torch.bfloat16, "fp8": FP8}
GROUP = 128


def build(args, fmt: QuantFormat | None, dev, down_terms: int = 1):
    """The engine model of ``args``' shape in bf16 on ``dev`` (random weights), its linears (head included) in ``fmt``;
    fp8: the down projections' input in ``down_terms`` e4m3 terms on the _scaled_mm path. Batch-1 steps through
    the fused GEMV chain where runner/build.py would take it (``model.gemv_decode``)."""
    from batched_decode import build_model

    from swiftinfer_core.model import fused_decode
    from swiftinfer_core.model.fp8_linear import quantize_fp8_linears
    from swiftinfer_core.model.quant_linear import quantize_linears

    model = build_model(args, dev)
    if fmt is QuantFormat.FP8:
        quantize_fp8_linears(model, head=True, down_terms=down_terms)
    elif fmt is not None:
        quantize_linears(model, fmt, GROUP, head=True)
    # as runner/build.py: the chain for float weights only (the folded quantized GEMVs ran slower, session 35)
    model.gemv_decode = fmt is None and fused_decode.supports(model)
    return model


def chains(model, choice: str) -> tuple[bool, ...]:
    """Batch-1 gemv_decode settings to time for --chain ``choice``: the engine's, unfused, or both where the chain runs."""
    from swiftinfer_core.model import fused_decode

    return {"engine": (model.gemv_decode,), "unfused": (False,),
            "both": (True, False) if fused_decode.supports(model) else (False,)}[choice]


def weight_bytes(model) -> int:
    """Bytes of every parameter and buffer a decode step reads: all but the embedding table
    (one row per token), quantized codes and scales as this format holds them."""
    skip = {id(t) for t in model.embed.parameters()} - {id(t) for t in model.lm_head.parameters()}  # a tied head is read whole
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()) if id(t) not in skip)


def batches_for(wanted: list[int], fit_kv: int, fit_bf16: int) -> list[int]:
    """``wanted`` where it fits, plus bf16's and this cache's most that fit (both at least 1)."""
    return sorted({b for b in wanted if b <= fit_kv} | {max(1, min(fit_bf16, fit_kv)), max(1, fit_kv)})


def summarize(rows: list[dict]) -> list[dict]:
    """Per shape and KV dtype, each format against bf16 weights with a bf16 cache at the same B:
    tokens/s ratios (batch 1: the ms/token ratio), and conversations that fit against bf16/bf16's."""
    chain = lambda r: r.get("gemv_chain", False)  # noqa: E731  (rows before session 35: unfused)
    ones = [r for r in rows if r["weights"] == "bf16" and r["kv"] == "bf16"]
    # the same batch-1 chain setting where both ran (--chain both), else bf16 as the engine ran it
    base = {(r["shape"], r["B"]): r for r in ones} | {(r["shape"], r["B"], chain(r)): r for r in ones}
    fit0 = {r["shape"]: r["slots_fit"] for r in ones}
    out = []
    for r in rows:
        b = base.get((r["shape"], r["B"], chain(r))) or base.get((r["shape"], r["B"]))
        out.append({k: r.get(k) for k in ("shape", "weights", "kv", "B", "gemv_chain", "tok_s", "itl_p50_ms")}
                   | {"x_bf16": None if b is None else r["tok_s"] / b["tok_s"],
                      "fit_x_bf16": r["slots_fit"] / fit0[r["shape"]] if r["shape"] in fit0 else None})
    return out


def run(a) -> None:
    dev = torch.device("cuda")
    bw = common.copy_bandwidth()
    layout = StreamLayout(4, a.window)
    rows: list[dict] = []
    meta = {"copy_bw_Bps": bw, "cache": f"4+{a.window}", "group": GROUP, "reserve_gib": a.reserve_gib,
            "note": "whole decode step in a CUDA graph, random weights, the LM head in the weights' format"}
    for shape in a.shapes:
        args = models.model_args(shape)
        per_seq = {n: KVPool.bytes_per_slot(layout, args.num_layers, args.num_kv_heads, args.head_dim, dt) for n, dt in KV.items()}
        for fname in a.formats:
            model = build(args, FORMATS[fname][0], dev, FORMATS[fname][1])
            w_bytes = weight_bytes(model)
            gc.collect()
            torch.cuda.empty_cache()  # the replaced bf16 weights' blocks back to the device before counting what fits
            budget = torch.cuda.mem_get_info()[0] - a.reserve_gib * 2**30
            fit = {n: int(budget // per_seq[n]) for n in KV}
            print(f"{shape} {fname}: weights {w_bytes / 1e9:.2f} GB; fit " + ", ".join(f"{n} KV {fit[n]}" for n in KV), flush=True)
            batch1 = chains(model, a.chain)  # gemv_decode only matters for one-token steps
            for kname in a.kv:
                for B in batches_for(a.batches, fit[kname], fit["bf16"]) if a.fit else [b for b in a.batches if b <= fit[kname]]:
                    if FORMATS[fname][1] == 2 and B < SCALED_MM_MIN_ROWS:
                        continue  # below _scaled_mm's rows the down projections run as in "fp8"
                    for on in batch1 if B == 1 else (False,):
                        model.gemv_decode = on
                        r = measure(model, args, layout, B, dev, KV[kname], a.steps)
                        roof_s = (w_bytes + B * per_seq[kname]) / bw
                        r.update(shape=shape, weights=fname, kv=kname, B=B, gemv_chain=on, slots_fit=fit[kname],
                                 weight_bytes=w_bytes, kv_bytes_per_seq=per_seq[kname], roofline_tok_s=B / roof_s,
                                 frac_roofline=roof_s * 1e3 / r["itl_p50_ms"])
                        rows.append(r)
                        print(f"  {kname} KV B={B:4d}{' chain' if on else ''}: {r['tok_s']:9.1f} tok/s  ITL p50 "
                              f"{r['itl_p50_ms']:.2f} ms  {r['frac_roofline']:.2f} of roofline", flush=True)
                        common.write_results(a.name, {**meta, "rows": rows, "summary": summarize(rows)}, a.out)
            del model
            gc.collect()
            torch.cuda.empty_cache()
    plot(rows, common.device_info()["name"], a.name, a.out)
    print()
    print(common.table(summarize(rows), ["shape", "weights", "kv", "B", "gemv_chain", "tok_s", "itl_p50_ms", "x_bf16", "fit_x_bf16"]))


def plot(rows: list[dict], device: str, name: str, out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(2, len(shapes), figsize=(6.5 * len(shapes), 8.5), squeeze=False)
    for col, shape in enumerate(shapes):
        top, bottom = axes[0][col], axes[1][col]
        fmts = list(dict.fromkeys(r["weights"] for r in rows if r["shape"] == shape))
        ones = [f for f in fmts if any(r["shape"] == shape and r["weights"] == f and r["B"] == 1 for r in rows)]
        for i, fname in enumerate(fmts):
            for kname, ls in (("bf16", "-"), ("fp8", "--")):
                rs = [r for r in rows if r["shape"] == shape and r["weights"] == fname and r["kv"] == kname]
                if rs:
                    top.plot([r["B"] for r in rs], [r["tok_s"] for r in rs], ls=ls, marker="o", color=f"C{i}",
                             label=f"{fname} weights, {kname} KV")
            for j, kname in enumerate(("bf16", "fp8")):
                one = [r for r in rows if r["shape"] == shape and r["weights"] == fname and r["kv"] == kname and r["B"] == 1]
                if one:
                    bottom.bar(ones.index(fname) + 0.4 * j - 0.2, one[0]["itl_p50_ms"], width=0.38, color=f"C{i}",
                               alpha=1.0 - 0.45 * j, label=f"{kname} KV" if i == 0 else None)
        top.set_xscale("log", base=2)
        top.set_xlabel("concurrent conversations (full caches)")
        top.set_ylabel("tokens/s (aggregate)")
        top.set_title(f"{shape}, whole decode step, {device}")
        top.grid(alpha=0.3, which="both")
        top.legend(fontsize=7)
        bottom.set_xticks(range(len(ones)), [f"{f} weights" for f in ones])
        bottom.set_ylabel("batch-1 ms per token (p50)")
        bottom.grid(alpha=0.3, axis="y")
        bottom.legend(fontsize=7, title="darker: bf16 KV, lighter: fp8 KV", title_fontsize=7)
    common.save_plot(name, fig, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "llama3.1-8b"], choices=sorted(models.SHAPES))
    ap.add_argument("--formats", nargs="+", default=["bf16", "fp8", "int8", "int4"], choices=list(FORMATS))
    ap.add_argument("--kv", nargs="+", default=list(KV), choices=list(KV))
    ap.add_argument("--window", type=int, default=2044)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32, 128])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reserve-gib", type=float, default=8.0)
    ap.add_argument("--chain", default="engine", choices=["engine", "unfused", "both"],
                    help="batch-1 steps: the engine's fused GEMV chain, the unfused layers, or both")
    ap.add_argument("--fit", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the most conversations that fit (bf16's and this cache's)")
    ap.add_argument("--name", default="formats_step")
    ap.add_argument("--out", default=None)
    ap.add_argument("--replot", default=None, help="draw this JSON's rows again (no GPU)")
    a = ap.parse_args()
    if a.replot:
        d = json.loads(Path(a.replot).read_text())
        plot(d["rows"], d["device"].get("name", ""), Path(a.replot).stem, a.out)
        print(common.table(summarize(d["rows"]), ["shape", "weights", "kv", "B", "gemv_chain", "tok_s", "itl_p50_ms",
                                                  "x_bf16", "fit_x_bf16"]))
        return
    run(a)


if __name__ == "__main__":
    main()
