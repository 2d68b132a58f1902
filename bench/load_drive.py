"""The client side of bench/load.py: conversations driven over HTTP/SSE, in this
process or spread over several (``LoadSpec.client_procs``), and the client's own
load (CPU seconds, event-loop lag), so a run shows whether its client kept up.

Only httpx and the standard library (no torch, no pydantic)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from bench.load_client import TurnResult, run_turn
from bench.load_report import dist
from bench.turn_lengths import turn_tokens

if TYPE_CHECKING:
    from bench.load import LoadSpec

TEXT = Path(__file__).resolve().parent / "data" / "shakespeare.txt"


@dataclass
class Progress:
    """Read from another thread while a run goes on (tests use it to time faults)."""

    turns_done: int = 0
    turns_failed: int = 0
    attempt_errors: int = 0
    results: list[TurnResult] = field(default_factory=list)


class Prompts:
    def __init__(self, words: int, rng: random.Random):
        text = TEXT.read_text(encoding="utf-8", errors="replace").split() if TEXT.exists() else []
        self._words = [w for w in text if w.isalpha()] or ["river", "stone", "light", "garden", "letter", "winter"]
        self._n, self._rng = words, rng

    def __call__(self, round_: int) -> str:
        i = self._rng.randrange(max(1, len(self._words) - self._n))
        return f"Round {round_ + 1}. " + " ".join(self._words[i : i + self._n]) + ". Reply briefly."


SPAWN_LEAD_S = 5.0  # worker processes start (spawn, import httpx) before the first arrival is due


def http_client(spec: LoadSpec) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=spec.concurrency or 1024, max_keepalive_connections=spec.concurrency or 1024)
    return httpx.AsyncClient(base_url=spec.url.rstrip("/"), timeout=httpx.Timeout(spec.timeout_s, connect=10.0), limits=limits)


async def drive(spec: LoadSpec, client: httpx.AsyncClient, model: str, run_id: str, plan: list[tuple[int, float]],
                t_start: float, prompts: Prompts, progress: Progress) -> None:
    """Run the conversations ``plan`` names ((index, arrival s after t_start)), each turn after the last."""
    cap = asyncio.Semaphore(spec.concurrency) if spec.concurrency else None

    async def conversation(i: int, at: float) -> None:
        await asyncio.sleep(max(0.0, t_start + at - time.perf_counter()))
        sid = f"{spec.prefix}-{run_id}-{i}"
        crng = random.Random(f"{spec.seed}-{i}")
        for r in range(spec.rounds):
            if r and spec.think_s > 0:
                await asyncio.sleep(crng.expovariate(1.0 / spec.think_s))
            body = {"model": model, "session_id": sid, "stream": True, "max_tokens": turn_tokens(spec.max_tokens, spec.max_tokens_hi, i, r), "temperature": 0,
                    "ignore_eos": True, "messages": [{"role": "user", "content": prompts(r)}]}
            if spec.token_counts:  # each chunk's usage tells the tokens so far (TokenClock), with no logprob work
                body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
            res = TurnResult(sid, r, f"{sid}-r{r}", scheduled=time.perf_counter())
            progress.results.append(res)
            if cap is not None:
                async with cap:
                    await run_turn(client, "/v1/chat/completions", body, res, spec.retry_s, crng)
            else:
                await run_turn(client, "/v1/chat/completions", body, res, spec.retry_s, crng)
            progress.attempt_errors += sum(res.errors.values())
            if not res.ok:
                progress.turns_failed += 1
                return  # the conversation cannot go on without this turn
            progress.turns_done += 1

    await asyncio.gather(*(conversation(i, at) for i, at in plan))


async def drive_in_processes(spec: LoadSpec, model: str, run_id: str, plan: list[tuple[int, float]], t_start: float,
                              progress: Progress) -> list[dict]:
    """``plan`` split over ``spec.client_procs`` spawned processes; their turns land in ``progress``
    when each finishes (a concurrency cap applies per process)."""
    k = spec.client_procs
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(k, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [loop.run_in_executor(pool, _worker, spec, model, run_id, plan[w::k], t_start, w) for w in range(k)]
        reports = []
        for job in asyncio.as_completed(jobs):
            turns, report = await job
            progress.results.extend(turns)
            progress.turns_done += sum(t.ok for t in turns)
            progress.turns_failed += sum(not t.ok for t in turns)
            reports.append(report)
    return reports


def _worker(spec: LoadSpec, model: str, run_id: str, plan: list[tuple[int, float]], t_start: float, w: int) -> tuple[list, dict]:
    async def run() -> tuple[list, dict]:
        progress = Progress()
        prompts = Prompts(spec.prompt_words, random.Random(f"{spec.seed}-w{w}"))
        late_s = max(0.0, time.perf_counter() - t_start)  # > 0: this process started after the first arrival was due
        async with http_client(spec) as client:
            report = await drive_here(spec, client, model, run_id, plan, t_start, prompts, progress)
        return progress.results, report | {"late_s": round(late_s, 3)}

    return asyncio.run(run())


async def drive_here(spec: LoadSpec, client: httpx.AsyncClient, model: str, run_id: str, plan: list[tuple[int, float]],
                     t_start: float, prompts: Prompts, progress: Progress) -> dict:
    """``drive`` on this process's event loop; its CPU seconds and loop lag (LoopLag.report)."""
    lag = LoopLag()
    async with lag.running():
        cpu0 = time.process_time()
        await drive(spec, client, model, run_id, plan, t_start, prompts, progress)
    return lag.report(time.process_time() - cpu0)


class LoopLag:
    """How late a 10 ms timer fires on this event loop: the time any ready callback
    (a streamed chunk, a new turn) waits for the loop, as seen from the client."""

    TICK_S = 0.01

    def __init__(self) -> None:
        self.lags: list[float] = []

    @contextlib.asynccontextmanager
    async def running(self):
        task = asyncio.create_task(self._tick())
        try:
            yield self
        finally:
            task.cancel()

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.TICK_S)
            self.lags.append(time.perf_counter() - t - self.TICK_S)

    def report(self, cpu_s: float) -> dict:
        return {"cpu_s": round(cpu_s, 3), "loop_lag_s": dist(self.lags)}


def client_summary(reports: list[dict], wall_s: float) -> dict:
    """The client's own load: its processes' CPU (cores busy on average) and worst loop lag."""
    lag = [r["loop_lag_s"] for r in reports]
    return {"procs": len(reports), "cpu_s": [r["cpu_s"] for r in reports],
            "busy_cores": round(sum(r["cpu_s"] for r in reports) / wall_s, 3) if wall_s > 0 else None,
            "max_busy_fraction": round(max(r["cpu_s"] for r in reports) / wall_s, 3) if wall_s > 0 else None,
            "loop_lag_p50_s": max((x["p50"] or 0.0 for x in lag), default=None),
            "loop_lag_p99_s": max((x["p99"] or 0.0 for x in lag), default=None),
            "late_s": max((r.get("late_s", 0.0) for r in reports), default=0.0)}
