"""How long the caller's event loop stalls behind the engine, old API path vs new.

A Serve replica's event loop carries every stream of the replica. Before
``Engine``'s inbox, starting a turn (``chat``) and ending one (the abort in its
``finally``) took the engine lock on that loop, so each waited for the model
step in progress while every other stream on the replica stood still.

This bench runs ``--sessions`` conversations of ``--rounds`` turns at once
against the real engine (real model, its own step thread) in one event loop,
with staggered starts and a think time between turns, exactly the pattern of
a replica. A ticker task sleeps 2 ms at a time and records by how much each
sleep overran: that is the loop's stall. Modes, interleaved over ``--trials``:

- ``locked``: ``Engine`` as of ``--baseline`` (git revision), whose turn start
  and end take the lock on the loop;
- ``inbox``: the working tree's ``Engine``.

Both share one loaded model and one core layout. Reported per mode: loop
stall p50/p99/max, TTFT p50/p99 (``chat`` called -> first chunk) and tokens/s.

    python bench/engine_loop_lag.py --sessions 12 --rounds 3 --tokens 16 --trials 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import common  # noqa: F401  (repo root on sys.path)
import torch

from swiftinfer_core.config import EngineConfig, SamplingParams
from swiftinfer_core.engine.core import EngineCore
from swiftinfer_core.engine.engine import Engine
from swiftinfer_core.engine.engine_model import build_engine_model, relayout


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def workload(engine, args, tag: str) -> dict:
    params = SamplingParams(max_tokens=args.tokens, ignore_eos=True)
    stalls: list[float] = []
    ttft: list[float] = []
    done = asyncio.Event()

    async def ticker():
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.002)
            stalls.append(time.perf_counter() - t - 0.002)

    async def conversation(i: int) -> int:
        rng = random.Random(i)
        await asyncio.sleep(i * args.stagger_s)
        sid, n = f"{tag}-{i}", 0
        for r in range(args.rounds):
            t0 = time.perf_counter()
            first = True
            async for chunk in engine.chat(sid, [{"role": "user", "content": f"Round {r}: tell me about rivers, {i}."}], params):
                if first:
                    ttft.append(time.perf_counter() - t0)
                    first = False
                last = chunk
            n += last.usage.completion_tokens
            await asyncio.sleep(rng.expovariate(1 / args.think_s))
        return n

    tick = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(conversation(i) for i in range(args.sessions))))
    wall = time.perf_counter() - t0
    done.set()
    await tick
    return {"tokens_per_s": tokens / wall, "wall_s": wall, "stall_p50_ms": 1e3 * pct(stalls, 0.5),
            "stall_p99_ms": 1e3 * pct(stalls, 0.99), "stall_max_ms": 1e3 * max(stalls),
            "ttft_p50_ms": 1e3 * pct(ttft, 0.5), "ttft_p99_ms": 1e3 * pct(ttft, 0.99), "stalls_ms": [1e3 * s for s in stalls]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--think-s", type=float, default=0.3)
    p.add_argument("--stagger-s", type=float, default=0.15)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--window", type=int, default=252)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline", default="ea7a66a", help="git revision of the engine whose turn start/end take the lock")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = EngineConfig(device="cpu", window=args.window, max_sessions=args.sessions)
    base = build_engine_model(cfg)
    engines = {"locked": common.module_at(args.baseline, "swiftinfer_core/engine/engine.py", "engine_baseline").Engine, "inbox": Engine}
    runs: dict[str, list[dict]] = {m: [] for m in engines}
    for trial in range(args.trials + 1):  # trial 0 warms up and is dropped
        for mode in random.Random(trial).sample(sorted(engines), len(engines)):
            eng = engines[mode](core=EngineCore(cfg, loaded=relayout(base, cfg, cfg.max_sessions)))
            try:
                res = asyncio.run(workload(eng, args, f"{mode}{trial}"))
            finally:
                eng.close()
            if trial:
                runs[mode].append(res)
                print(f"trial {trial} {mode:6s} stall p99 {res['stall_p99_ms']:.1f} ms max {res['stall_max_ms']:.1f} ms  "
                      f"TTFT p99 {res['ttft_p99_ms']:.0f} ms  {res['tokens_per_s']:.1f} tok/s", flush=True)
    keys = ["stall_p50_ms", "stall_p99_ms", "stall_max_ms", "ttft_p50_ms", "ttft_p99_ms", "tokens_per_s"]
    summary = {m: {k: statistics.median(r[k] for r in rs) for k in keys} for m, rs in runs.items()}
    print(common.table([{"mode": m, **s} for m, s in summary.items()], ["mode", *keys]))
    data = {"note": "medians over trials; CPU steps are far longer than GPU steps, so stalls here are larger in absolute terms",
            "config": vars(args), "summary": summary,
            "runs": {m: [{k: v for k, v in r.items() if k != "stalls_ms"} for r in rs] for m, rs in runs.items()}}
    common.write_results("engine_loop_lag", data, args.out)
    plot(runs, args.out)


def plot(runs: dict, out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, rs in runs.items():
        xs = sorted(s for r in rs for s in r["stalls_ms"])
        ax.plot(xs, [1 - i / len(xs) for i in range(len(xs))], label=mode)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_yscale("log")
    ax.set_xlabel("event-loop stall per 2 ms tick (ms)")
    ax.set_ylabel("share of ticks stalled longer")
    ax.legend()
    ax.set_title("Caller's event loop behind the engine (CPU, SmolLM2-135M)")
    common.save_plot("engine_loop_lag", fig, out)


if __name__ == "__main__":
    main()
