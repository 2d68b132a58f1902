"""Issue 12: the LLM replica's event-loop CPU per streamed token, from the engine's
delivery to the paced chunks a turn yields (deployments/replica/pacing.py).

A replica's engine hands each step's tokens to its event loop in one batch
(``engine.engine._put_all``); every turn then reads its queue (``read_stream``)
through its paced stream. This bench feeds N such streams one token per
simulated step, under the replica's chunk budget, and reads the process's CPU
time: microseconds per token of the whole path, with nothing else on the loop.
``--against REV`` runs pacing.py as of git revision REV too, side by side.

    python bench/pacing_cost.py --streams 32 64 128 256 --against 1657b65 --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import subprocess
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from deployments.replica import pacing  # noqa: E402
from swiftinfer_core.engine.delivery import _put_all, read_stream  # noqa: E402
from swiftinfer_core.protocol import StreamChunk, Usage  # noqa: E402


def pacing_at(rev: str) -> types.ModuleType:
    """deployments/replica/pacing.py as of git revision ``rev``, as a module."""
    src = subprocess.run(["git", "show", f"{rev}:deployments/replica/pacing.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType(f"pacing_{rev}")
    exec(compile(src, f"pacing.py@{rev}", "exec"), mod.__dict__)
    return mod


async def one_run(impl, streams: int, steps: int, step_s: float, floor_s: float, budget_per_s: float) -> dict:
    loop = asyncio.get_running_loop()
    budget = impl.ChunkBudget(floor_s, budget_per_s)
    queues = [asyncio.Queue() for _ in range(streams)]
    sent = 0

    async def consume(queue: asyncio.Queue) -> None:
        nonlocal sent
        async for _ in impl.paced(read_stream(queue), budget):
            sent += 1

    tasks = [loop.create_task(consume(q)) for q in queues]
    await asyncio.sleep(0)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for step in range(steps):
        last = step == steps - 1
        chunk = StreamChunk("x", [step], "length" if last else None, Usage(1, steps, 1, 0) if last else None)
        loop.call_soon(_put_all, [(q, chunk) for q in queues])
        await asyncio.sleep(step_s)
    await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu0
    tokens = streams * steps
    return {"streams": streams, "tokens": tokens, "chunks": sent, "cpu_s": cpu, "wall_s": time.perf_counter() - wall0,
            "us_per_token": 1e6 * cpu / tokens, "us_per_chunk": 1e6 * cpu / max(1, sent)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--step-ms", type=float, default=4.0, help="time between simulated engine steps")
    ap.add_argument("--floor-ms", type=float, default=50.0, help="stream_interval_ms")
    ap.add_argument("--budget", type=float, default=1000.0, help="stream_max_chunks_per_s")
    ap.add_argument("--against", default=None, help="a git revision whose pacing.py runs too")
    ap.add_argument("--name", default="pacing_cost")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    impls = {"working tree": pacing, **({a.against: pacing_at(a.against)} if a.against else {})}
    rows = [{"pacing": label, **asyncio.run(one_run(impl, n, a.steps, a.step_ms / 1000, a.floor_ms / 1000, a.budget))}
            for n in a.streams for label, impl in impls.items()]
    print(common.table(rows, ["pacing", "streams", "tokens", "chunks", "cpu_s", "us_per_token", "us_per_chunk"]))
    common.write_results(a.name, {"steps": a.steps, "step_ms": a.step_ms, "floor_ms": a.floor_ms,
                                  "budget_per_s": a.budget, "rows": rows}, a.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in impls:
        mine = [r for r in rows if r["pacing"] == label]
        ax.plot([r["streams"] for r in mine], [r["us_per_token"] for r in mine], marker="o", label=f"pacing.py, {label}")
    ax.set_xlabel("open streams")
    ax.set_ylabel("event-loop CPU per token (us)")
    ax.set_ylim(bottom=0)
    ax.legend()
    common.save_plot(a.name, fig, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
