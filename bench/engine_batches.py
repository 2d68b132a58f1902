"""Issue 11: the real Engine at every batch size, beside bench/batched_decode.py.

For each N: N new conversations start at once and run ``--rounds`` rounds
(each round: every conversation sends a message at once and gets
``--tokens`` greedy tokens, EOS ignored), through ``Engine.chat`` with CUDA
graphs on. Every turn must finish. Reported per N: turns finished/failed,
completion tokens/s over the round (prefill included), decode tokens/s (from
the round's first token to its last), TTFT p50/p99; and, measured earlier in
the same process, ``batched_decode``'s bare graph step at the same batch with
full 4+W caches. The engine's caches are fuller each round (the prompt plus the
replies), so its decode reads less KV than the bare bench's: both are written
down with the engine's mean cache fill.

    python bench/engine_batches.py --model CFG_DIR [--sizes 1 8 32 48 49 64 96 128] [--out DIR]
    python bench/engine_batches.py --model CFG_DIR --drop-workspaces --sizes 48 64   # the old bug, reproduced

``--drop-workspaces`` frees every decode graph's split-K workspace after
capture, as the code before the fix did; the graphs keep writing into the freed
memory. Run it in its own process: a device fault poisons the CUDA context.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import torch  # noqa: E402

from bench.load_report import pct  # noqa: E402
from bench.turn_lengths import turn_tokens  # noqa: E402
from swiftinfer_core import SamplingParams  # noqa: E402
from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.engine.engine import Engine  # noqa: E402
from swiftinfer_core.model.loader import read_args  # noqa: E402

WORDS = "river stone light garden letter winter morning castle silver harbour forest candle window music".split()


def bare_decode(sizes: list[int], window: int, steps: int, vocab: int) -> dict[int, dict]:
    """batched_decode.py's 'engine' variant (one graph per step, full caches) at each size."""
    import batched_decode
    import models

    from swiftinfer_core.cache.layout import StreamLayout

    args = replace(models.model_args("llama2-7b"), vocab_size=vocab)  # the engine's vocabulary (its tokenizer's)
    model = batched_decode.build_model(args, torch.device("cuda"))
    out = {}
    for B in sizes:
        try:
            out[B] = batched_decode.measure(model, args, StreamLayout(4, window), B, torch.device("cuda"), "engine", steps)
        except torch.OutOfMemoryError:
            out[B] = {"error": "out of memory"}
        print(f"bare B={B}: {out[B]}", flush=True)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def prompt(i: int, r: int, words: int) -> str:
    return " ".join(WORDS[(i * 7 + r * 3 + k) % len(WORDS)] for k in range(words + (i % 5)))


def messages(i: int, r: int, a) -> list[dict]:
    """Round r of conversation i: its user message, after the shared system message (``--system-words``) in round 0."""
    user = [{"role": "user", "content": prompt(i, r, a.words)}]
    if r > 0 or not a.system_words:
        return user
    return [{"role": "system", "content": " ".join(WORDS[(k * 5) % len(WORDS)] for k in range(a.system_words))}] + user


async def one_round(engine: Engine, n: int, r: int, tag: str, a) -> dict:
    params = SamplingParams(max_tokens=a.tokens, ignore_eos=True)
    t0 = time.perf_counter()

    async def turn(i: int):
        first = last = None
        toks = 0
        try:
            async for c in engine.chat(f"{tag}-{i}", [{"role": "user", "content": prompt(i, r, a.words)}], params):
                now = time.perf_counter()
                toks += len(c.token_ids)
                first = first or now
                last = now
                if c.finish_reason:
                    return {"ok": c.finish_reason == "length" and toks == a.tokens, "ttft": first - t0, "first": first, "last": last, "toks": toks}
        except Exception as exc:  # noqa: BLE001 - counted and reported
            return {"ok": False, "error": repr(exc)[:300], "toks": toks}
        return {"ok": False, "error": "stream ended without a finish", "toks": toks}

    res = await asyncio.gather(*(turn(i) for i in range(n)))
    wall = time.perf_counter() - t0
    ok = [x for x in res if x["ok"]]
    row = {"N": n, "round": r, "finished": len(ok), "failed": n - len(ok), "wall_s": wall,
           "tok_s": sum(x["toks"] for x in res) / wall}
    if ok:
        span = max(x["last"] for x in ok) - min(x["first"] for x in ok)
        ttft = sorted(x["ttft"] for x in ok)
        row.update(decode_tok_s=sum(x["toks"] - 1 for x in ok) / span if span > 0 else None,
                   ttft_p50_s=statistics.median(ttft), ttft_p99_s=pct(ttft, 99))
    errors = sorted({x["error"] for x in res if "error" in x})
    if errors:
        row["errors"] = errors[:3]
    return row


async def closed_loop(engine: Engine, n: int, tag: str, a) -> dict:
    """The load client's work without the service: N conversations, each sending
    its next message as soon as its reply ended (no think time), ``--rounds`` turns."""
    turns: list[dict] = []

    async def conversation(i: int):
        for r in range(a.rounds):
            want = turn_tokens(a.tokens, a.tokens_hi, i, r)  # the load client's draw for (i, r)
            params = SamplingParams(max_tokens=want, ignore_eos=True)
            sent = time.perf_counter()
            first, toks = None, 0
            try:
                async for c in engine.chat(f"{tag}-{i}", messages(i, r, a), params):
                    first = first or time.perf_counter()
                    toks += len(c.token_ids)
                done = time.perf_counter()
                turns.append({"ok": toks == want, "round": r, "ttft": first - sent, "toks": toks,
                              "tpot": (done - first) / max(1, toks - 1)})
            except Exception as exc:  # noqa: BLE001 - counted and reported
                turns.append({"ok": False, "round": r, "error": repr(exc)[:300], "toks": toks})

    t0 = time.perf_counter()
    await asyncio.gather(*(conversation(i) for i in range(n)))
    wall = time.perf_counter() - t0
    ok = [t for t in turns if t["ok"]]
    q = lambda xs, p: pct(sorted(xs), p) if xs else None  # noqa: E731
    new, warm = [t["ttft"] for t in ok if t["round"] == 0], [t["ttft"] for t in ok if t["round"] > 0]
    return {"N": n, "mode": "closed_loop", "rounds": a.rounds, "finished": len(ok), "failed": len(turns) - len(ok), "wall_s": wall,
            "tok_s": sum(t["toks"] for t in turns) / wall, "ttft_new_p50_s": q(new, 50), "ttft_new_p99_s": q(new, 99),
            "ttft_warm_p50_s": q(warm, 50), "ttft_warm_p99_s": q(warm, 99),
            "tpot_p50_s": q([t["tpot"] for t in ok], 50), "tpot_p99_s": q([t["tpot"] for t in ok], 99)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="config folder (config.json + tokenizer); weights are random")
    ap.add_argument("--replot", nargs="+", type=Path, default=None,
                    help="closed-loop JSON files of earlier runs: one PNG (--name, --out) with a line per file, nothing run")
    ap.add_argument("--sizes", nargs="+", type=int, default=[1, 8, 32, 48, 49, 64, 96, 128])
    ap.add_argument("--window", type=int, default=1020)
    ap.add_argument("--max-sessions", type=int, default=None, help="default: sized from free memory; always run as a size too")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--tokens-hi", type=int, default=None,
                    help="--closed-loop: each turn's reply length drawn in [--tokens, this] per (conversation, round), as load.py --max-tokens-hi draws it (bench/turn_lengths.py); default: every turn --tokens")
    ap.add_argument("--words", type=int, default=120, help="words per message (+0..4)")
    ap.add_argument("--bare-steps", type=int, default=30)
    ap.add_argument("--no-bare", action="store_true")
    ap.add_argument("--drop-workspaces", action="store_true", help="reproduce the pre-fix bug (see module doc)")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script (float32, no graphs)")
    ap.add_argument("--piecewise", action=argparse.BooleanOptionalAction, default=True,
                    help="piecewise CUDA graphs (the engine's default): mixed steps keep graphs around attention")
    ap.add_argument("--closed-loop", action="store_true", help="per N: conversations continue without waiting for each other (the load client's pattern); one row per N")
    ap.add_argument("--max-batch-tokens", type=int, default=None,
                    help="the step's token budget (EngineConfig.max_batch_tokens; default its own): a burst of warm turns "
                         "prefills in budget-sized steps, so it sets when the first of them gets a token")
    ap.add_argument("--system-words", type=int, default=0, help="closed loop: a system message of this many words, the same in every conversation's first round")
    ap.add_argument("--prefix-cache-slots", type=int, default=0, help="EngineConfig.prefix_cache_slots (shared prompt prefixes; 0: off)")
    ap.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True,
                    help="EngineConfig.overlap_postprocessing (the engine's default): a step's streamed text is made while the GPU runs the next")
    ap.add_argument("--name", default="engine_batches")
    ap.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"], help="EngineConfig.kv_cache_dtype")
    ap.add_argument("--quantization", default="none", choices=["none", "fp8", "int8", "int4"],
                    help="EngineConfig.quantization (the random weights quantized at load, rounded to nearest)")
    ap.add_argument("--fp8-activation-terms", type=int, default=1, choices=[1, 2], help="EngineConfig.fp8_activation_terms")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.replot:
        runs = {f.stem: json.loads(f.read_text()) for f in a.replot}
        plot_closed({k: d["rows"] for k, d in runs.items()}, a.name, next(iter(runs.values()))["device"]["name"], a.out)
        return 0
    if not a.model:
        ap.error("--model is required (or --replot)")

    bare = {} if a.no_bare or a.drop_workspaces else bare_decode(a.sizes, a.window, a.bare_steps, read_args(Path(a.model)).vocab_size)
    cfg = EngineConfig(model=a.model, load_format="random", device=a.device,
                       dtype="bfloat16" if a.device == "cuda" else "float32", sink_tokens=4,
                       window=a.window, max_sessions=a.max_sessions, max_turn_tokens=4096,
                       piecewise_graphs=a.piecewise, prefix_cache_slots=a.prefix_cache_slots, overlap_postprocessing=a.overlap,
                       kv_cache_dtype=a.kv_cache_dtype, quantization=a.quantization,
                       fp8_activation_terms=a.fp8_activation_terms,
                       **({"max_batch_tokens": a.max_batch_tokens} if a.max_batch_tokens else {}))
    t0 = time.perf_counter()
    engine = Engine(cfg)
    start_s = time.perf_counter() - t0
    slots = engine.stats().total_slots
    graphs = engine.core.runner.graphs
    graph_sizes = graphs.sizes if graphs is not None else []
    print(f"engine up in {start_s:.1f}s: {slots} slots, graph sizes {graph_sizes}", flush=True)
    if a.drop_workspaces:
        for st in graphs.static.values():
            st.plan.workspace = None  # the graphs still point at it: the pre-fix state
        gc.collect()
        torch.cuda.empty_cache()  # as torch.cuda.graph did on entering each later capture: the freed blocks go back to the driver
    sizes = sorted(set(a.sizes) | ({slots} if not a.drop_workspaces else set()))
    sizes = [n for n in sizes if n <= slots]
    rows = []
    if not a.drop_workspaces:  # first use compiles kernels: not part of any size's numbers
        asyncio.run(one_round(engine, min(sizes), 0, "warmup", a))
        for i in range(min(sizes)):
            engine.close_session(f"warmup-{i}")
    for n in sizes:
        if a.closed_loop:
            rows.append(asyncio.run(closed_loop(engine, n, f"n{n}", a)))
            print(rows[-1], flush=True)
        for r in range(0 if a.closed_loop else a.rounds):
            row = asyncio.run(one_round(engine, n, r, f"n{n}", a))
            row["bare_tok_s"] = bare.get(n, {}).get("tok_s")
            fills = [s.stats().cache_fill for s in engine.core.sessions.values() if s.id.startswith(f"n{n}-")]
            row["mean_cache_fill"] = statistics.mean(fills) if fills else None
            rows.append(row)
            print(row, flush=True)
            if row["failed"] and a.drop_workspaces:
                break
        for i in range(n):  # free the slots for the next size
            if engine.has_session(f"n{n}-{i}"):
                engine.close_session(f"n{n}-{i}")
    final_stats = engine.stats().to_dict()  # prefix_hits / prefix_tokens among them
    engine.close()
    m = read_args(Path(a.model))
    shape = f"hidden {m.hidden_size}, {m.num_layers} layers, {m.num_heads}/{m.num_kv_heads} heads, vocab {m.vocab_size}, rope {(m.rope_scaling or {}).get('rope_type', 'default')}"
    data = {"model": f"{Path(a.model).name}: {shape}, random bf16", "quantization": a.quantization,
            "kv_cache_dtype": a.kv_cache_dtype, "closed_loop": a.closed_loop,
            "system_words": a.system_words, "prefix_cache_slots": a.prefix_cache_slots, "engine_stats": final_stats, "cache": f"4+{a.window}", "slots": slots, "max_batch_tokens": cfg.max_batch_tokens, "engine_start_s": start_s,
            "graph_sizes": graph_sizes, "rounds": a.rounds, "tokens_per_turn": a.tokens, "tokens_per_turn_hi": a.tokens_hi, "drop_workspaces": a.drop_workspaces,
            "bare": {str(k): v for k, v in bare.items()}, "rows": rows}
    common.write_results(a.name, data, a.out)
    if a.closed_loop:
        terms = f", {a.fp8_activation_terms} e4m3 terms" if a.quantization == "fp8" else ""
        plot_closed({f"quantization {a.quantization}{terms}, KV {a.kv_cache_dtype}": rows}, a.name,
                    str(common.device_info().get("name")), a.out)
        print(common.table(rows, ["N", "finished", "failed", "tok_s", "ttft_new_p50_s", "ttft_warm_p50_s", "ttft_warm_p99_s", "tpot_p50_s"]))
        return 1 if any(r["failed"] for r in rows) else 0
    if not a.drop_workspaces:
        plot(rows, a)
    last = [r for r in rows if r["round"] == a.rounds - 1] or rows
    print()
    print(common.table(last, ["N", "finished", "failed", "tok_s", "decode_tok_s", "bare_tok_s", "mean_cache_fill", "ttft_p50_s", "ttft_p99_s"]))
    return 1 if any(r["failed"] for r in rows) else 0


def plot(rows: list[dict], a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = [r for r in rows if r["round"] == a.rounds - 1]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([r["N"] for r in last], [r.get("decode_tok_s") or 0 for r in last], marker="o", label=f"Engine.chat decode, round {a.rounds}")
    ax.plot([r["N"] for r in last], [r["tok_s"] for r in last], marker="s", label=f"Engine.chat incl. prefill, round {a.rounds}")
    bare = [r for r in last if r.get("bare_tok_s")]
    ax.plot([r["N"] for r in bare], [r["bare_tok_s"] for r in bare], marker="^", ls="--", label=f"batched_decode graph, full 4+{a.window}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("conversations decoding together")
    ax.set_ylabel("tokens/s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"Llama-2-7B shape, bf16, 4+{a.window}, {common.device_info().get('name')}")
    common.save_plot(a.name, fig, a.out)


def plot_closed(runs: dict[str, list[dict]], name: str, device: str, out) -> None:
    """Closed loop: tokens/s and TPOT p50 against N, a line per run (label -> its rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label, rows in runs.items():
        ax.plot([r["N"] for r in rows], [r["tok_s"] for r in rows], marker="o", label=label)
        ax2.plot([r["N"] for r in rows], [1e3 * (r["tpot_p50_s"] or 0) for r in rows], marker="s", label=label)
    ax.set_ylabel("tokens/s (closed loop, prefill included)")
    ax2.set_ylabel("TPOT p50, ms")
    for x in (ax, ax2):
        x.set_xlabel("conversations (closed loop)")
        x.grid(alpha=0.3)
        x.legend(fontsize=7)
    fig.suptitle(f"Engine alone, closed loop, {device}")
    common.save_plot(name, fig, out)


if __name__ == "__main__":
    sys.exit(main())
