"""Shared prompt prefixes (engine/prefix_cache.py): the first token of new
conversations that all start with one system prompt, with the prefix cache off
and on, side by side in one process over the same weights.

For each system-prompt length S (tokens of the plays, cut to S): K new
conversations, each "system: <S tokens>" plus its own short question, run
through the public Engine API (chat), either one after another on an idle
engine (``sequential``: TTFT of one new conversation) or, after that, all K at
once (``burst``: TTFT p50/p99 of K arriving together). The first conversation of
the "on" engine computes the prompt and stores it; every later one copies it (a
prompt longer than the cache: the first two compute it, the second stores the
slot where it parts from the first). Greedy, 8 tokens: the replies of "off" and
"on" are compared token for token.

    python bench/prefix_cache.py [--model default] [--device cpu] [--lengths 256 900] [--conversations 8]
    python bench/prefix_cache.py --model .carry/r8b --device cuda --dtype bfloat16 --random --lengths 900 1900 --window 2044
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench.load_report import pct  # noqa: E402
from shakespeare import build_corpus  # noqa: E402

from swiftinfer_core.config import EngineConfig, SamplingParams  # noqa: E402
from swiftinfer_core.engine.core import EngineCore  # noqa: E402
from swiftinfer_core.engine.engine import Engine  # noqa: E402
from swiftinfer_core.engine.engine_model import build_engine_model, relayout  # noqa: E402
from swiftinfer_core.model.fetch import models_home  # noqa: E402

PARAMS = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
QUESTIONS = ["Who speaks first?", "Summarise the scene.", "Name two characters.", "Where does it happen?",
             "What is the mood?", "Quote one line.", "Who is in love?", "What happens next?"]


def system_prompt(tokenizer, n_tokens: int) -> str:
    text = build_corpus(models_home().parent / "shakespeare.txt").read_text(encoding="utf-8")
    start = text.find("ACT")
    ids = tokenizer(text[start : start + 12 * n_tokens], add_special_tokens=False).input_ids[:n_tokens]
    return tokenizer.decode(ids)


def messages(system: str, i: int) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" ({i})"}]


async def one(engine: Engine, sid: str, msgs: list[dict]) -> tuple[float, list[int], dict]:
    t0 = time.perf_counter()
    ttft, ids, usage = None, [], None
    async for chunk in engine.chat(sid, msgs, PARAMS):
        if ttft is None and chunk.token_ids:
            ttft = time.perf_counter() - t0
        ids.extend(chunk.token_ids)
        if chunk.usage is not None:
            usage = chunk.usage.to_dict()
    return ttft, ids, usage


async def run_mode(engine: Engine, tag: str, system: str, k: int, burst: bool) -> list[tuple[float, list[int], dict]]:
    if burst:
        return list(await asyncio.gather(*(one(engine, f"{tag}-{i}", messages(system, i)) for i in range(k))))
    return [await one(engine, f"{tag}-{i}", messages(system, i)) for i in range(k)]


def summary(rows, skip: int) -> dict:
    """TTFTs (ms) of the conversations that could reuse the prompt (all but the first ``skip``)."""
    use = rows[skip:]
    t = [r[0] * 1e3 for r in use]
    return {"ttft_ms_p50": round(statistics.median(t), 2), "ttft_ms_p99": round(pct(t, 99), 2),
            "ttft_ms_all": [round(r[0] * 1e3, 2) for r in rows],
            "prefilled_tokens": [r[2]["prefilled_tokens"] for r in rows], "cached_tokens": [r[2]["cached_tokens"] for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--random", action="store_true", help="load_format random (a shape's speed, not its text)")
    ap.add_argument("--quantization", default="none", help="EngineConfig.quantization ('auto': int8 on the CPU, as serve_config.yaml)")
    ap.add_argument("--window", type=int, default=1020)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 900])
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--name", default="prefix_cache_cpu")
    ap.add_argument("--out", default=None, help="results folder (default: $OUT, else bench/results)")
    a = ap.parse_args()
    k = a.conversations
    base = dict(model=a.model, device=a.device, dtype=a.dtype, window=a.window, max_sessions=4 * k + 4,
                load_format="random" if a.random else "auto", prefill_chunk=2048, max_batch_tokens=4096, quantization=a.quantization)
    cfg_off = EngineConfig(**base)
    cfg_on = EngineConfig(**base, prefix_cache_slots=4)
    loaded = build_engine_model(cfg_off)
    engines = {"off": Engine(core=EngineCore(cfg_off, loaded)),
               "on": Engine(core=EngineCore(cfg_on, relayout(loaded, cfg_on, cfg_on.max_sessions)))}
    results = []
    try:
        for e in engines.values():
            e.warm_up()
        for n in a.lengths:
            system = system_prompt(loaded.tokenizer, n)
            for burst in (False, True):
                mode = "burst" if burst else "sequential"
                row = {"system_tokens": n, "mode": mode, "conversations": k}
                outs = {}
                for name, e in engines.items():
                    rows = asyncio.run(run_mode(e, f"{name}-{n}-{mode}", system, k, burst))
                    # sequential: the first "on" conversation stores the prompt (one longer than the cache: the
                    # second, which finds it shared with the first); burst (after it): all K can reuse it
                    row[name] = summary(rows, skip=0 if burst else (2 if n > a.window + 4 else 1))
                    outs[name] = [r[1] for r in rows]
                    for sid in e.session_ids():
                        e.close_session(sid)
                row["same_tokens"] = sum(x == y for x, y in zip(outs["off"], outs["on"]))
                row["ttft_ratio_off_over_on"] = round(row["off"]["ttft_ms_p50"] / row["on"]["ttft_ms_p50"], 2)
                results.append(row)
                print(f"S={n:5d} {mode:10s} TTFT p50 off {row['off']['ttft_ms_p50']:8.1f} ms  on {row['on']['ttft_ms_p50']:8.1f} ms"
                      f"  x{row['ttft_ratio_off_over_on']:.2f}  same replies {row['same_tokens']}/{k}", flush=True)
        stats = engines["on"].stats().to_dict()
    finally:
        for e in engines.values():
            e.close()
    out = {"config": {k2: str(v) for k2, v in base.items()}, "results": results, "on_engine_stats": stats,
           "note": "TTFT from the Engine API's chat() call to its first chunk with tokens; sequential p50/p99 over conversations 2..K "
                   "(the first 'on' one computes and stores the prompt; with a system prompt longer than the cache, over 3..K: "
                   "the second finds it shared with the first and stores the slot where they part); burst: all K at once, after the sequential run, so the 'on' engine "
                   "holds the prompt already (a service's steady state with a hot system prompt): p50/p99 over all K."}
    common.write_results(a.name, out, a.out)
    common.save_plot(a.name, plot(results, common.device_info()["name"]), a.out)


def plot(results: list[dict], device: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq = [r for r in results if r["mode"] == "sequential"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = range(len(seq))
    ax.bar([x - 0.2 for x in xs], [r["off"]["ttft_ms_p50"] for r in seq], 0.4, label="prefix cache off")
    ax.bar([x + 0.2 for x in xs], [r["on"]["ttft_ms_p50"] for r in seq], 0.4, label="on")
    ax.set_xticks(list(xs), [f"{r['system_tokens']}-token system prompt" for r in seq])
    ax.set_ylabel("new conversation TTFT p50 (ms)")
    ax.set_title(f"Shared system prompt, one new conversation at a time ({device})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
