"""Load generator: open-loop conversations against a SwiftInfer Serve URL.

    python bench/load.py --url http://127.0.0.1:8000 --sessions 64 --rounds 4 --out bench/results
    python bench/load.py --url http://127.0.0.1:8000 --sessions 64 --rounds 4 --duration-s 300 --out DIR

Sessions arrive as a Poisson process at ``--rate`` per second (default
``sessions / 10``), independent of how the server keeps up (open loop). Each
runs ``--rounds`` turns over SSE, one after the other (a user needs the reply
before writing the next turn), with an optional exponential think time.
Without ``--duration-s`` exactly ``--sessions`` sessions arrive; with it,
sessions keep arriving at the same rate until the time is up, and those
started finish their rounds. ``--concurrency`` caps turns in flight (time
waiting for the cap counts in ``ttft_from_due_s``, not in ``ttft_s``).

One Python process parsing hundreds of SSE streams can itself become the
bottleneck, and its delays then read as the server's TTFT. ``--client-procs K``
spreads the conversations over K processes (conversation i in process i mod K,
the same arrival times); every process reports its CPU seconds and its event
loop's lag (how late a 10 ms timer fires), summed up in ``summary["client"]``,
so a run shows whether its client kept up.

Every turn carries an ``Idempotency-Key`` and is retried until acknowledged
(see load_client.py). At the end the run is audited against the server's
session log (GET /v1/sessions/{id} and /turns): lost and duplicated turns.
Output: ``<out>/<name>.json`` (meta: date, command, client host, its GPUs and versions,
the server's model card with its engine config; summary: TTFT/ITL p50/p99,
tokens/s, error counts; audit) and ``<name>.png``.

Only httpx, the standard library and (for the PNG) matplotlib: no torch, no
pydantic. Importable: ``await run_load(LoadSpec(...))``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import random
import shlex
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.load_client import TurnResult, run_turn  # noqa: E402
from bench.load_report import audit, dist, summarize, timeline, write  # noqa: E402

TEXT = Path(__file__).resolve().parent / "data" / "shakespeare.txt"


@dataclass
class LoadSpec:
    url: str
    sessions: int = 16
    rounds: int = 4
    duration_s: float | None = None
    rate: float | None = None  # session arrivals per second; default sessions / 10
    concurrency: int | None = None
    max_tokens: int = 64
    prompt_words: int = 24
    think_s: float = 0.0
    model: str | None = None  # default: the server's first model
    seed: int = 0
    retry_s: float = 180.0  # a turn is given up after retrying this long
    timeout_s: float = 600.0  # one HTTP attempt
    prefix: str = "load"
    verify: bool = True
    cleanup: bool = True
    metrics_every_s: float = 0.0  # > 0: sample the server's /metrics gauges this often
    partial: Path | None = None  # rewritten every 30 s with the summary so far
    token_counts: bool = False  # ask for logprobs: each chunk then names its tokens, for ITL per token
    client_procs: int = 1  # client processes; conversation i runs in process i % client_procs


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


def arrivals(spec: LoadSpec, rng: random.Random) -> list[float]:
    rate = spec.rate or max(spec.sessions / 10.0, 1e-3)
    out, t = [], 0.0
    while True:
        if spec.duration_s is None and len(out) >= spec.sessions:
            return out
        if spec.duration_s is not None and t >= spec.duration_s:
            return out
        out.append(t)
        t += rng.expovariate(rate)


async def run_load(spec: LoadSpec, progress: Progress | None = None) -> dict:
    progress = progress or Progress()
    rng = random.Random(spec.seed)
    run_id = uuid.uuid4().hex[:8]
    plan = list(enumerate(arrivals(spec, rng)))
    async with _client(spec) as client:
        card = (await client.get("/v1/models")).json()["data"][0]
        model = spec.model or card["id"]
        samples: list[dict] = []
        t_start = time.perf_counter() + (_SPAWN_LEAD_S if spec.client_procs > 1 else 0.0)
        side = [asyncio.create_task(sample_metrics(client, spec.metrics_every_s, t_start, samples))] if spec.metrics_every_s > 0 else []
        if spec.partial is not None:
            side.append(asyncio.create_task(write_partial(spec, card, run_id, progress, t_start, samples)))
        try:
            if spec.client_procs <= 1:
                lag = LoopLag()
                async with lag.running():
                    cpu0 = time.process_time()
                    await drive(spec, client, model, run_id, plan, t_start, prompts=Prompts(spec.prompt_words, rng), progress=progress)
                clients = [lag.report(time.process_time() - cpu0)]
            else:
                clients = await _drive_in_processes(spec, model, run_id, plan, t_start, progress)
        finally:
            for task in side:
                task.cancel()
        t_end = time.perf_counter()
        turns = progress.results
        result = {
            "meta": meta(spec, card, run_id),
            "summary": summarize(turns, t_start, t_end) | server_peaks(samples) | {"client": client_summary(clients, t_end - t_start)},
            "audit": await audit(client, turns, spec.cleanup) if spec.verify else {},
            "server_samples": samples,
        }
    result["_turns"] = turns
    result["_t_start"] = t_start
    return result


_SPAWN_LEAD_S = 5.0  # worker processes start (spawn, import httpx) before the first arrival is due


def _client(spec: LoadSpec) -> httpx.AsyncClient:
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
            body = {"model": model, "session_id": sid, "stream": True, "max_tokens": spec.max_tokens, "temperature": 0,
                    "ignore_eos": True, "messages": [{"role": "user", "content": prompts(r)}]}
            if spec.token_counts:
                body["logprobs"] = True
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


async def _drive_in_processes(spec: LoadSpec, model: str, run_id: str, plan: list[tuple[int, float]], t_start: float,
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
        progress, lag = Progress(), LoopLag()
        prompts = Prompts(spec.prompt_words, random.Random(f"{spec.seed}-w{w}"))
        late_s = max(0.0, time.perf_counter() - t_start)  # > 0: this process started after the first arrival was due
        async with _client(spec) as client, lag.running():
            cpu0 = time.process_time()
            await drive(spec, client, model, run_id, plan, t_start, prompts, progress)
        return progress.results, lag.report(time.process_time() - cpu0) | {"late_s": round(late_s, 3)}

    return asyncio.run(run())


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


SERVER_GAUGES = ("swiftinfer_running_requests", "swiftinfer_resident_sessions", "swiftinfer_active_sessions",
                 "swiftinfer_queue_depth", "swiftinfer_ingress_in_flight")


async def sample_metrics(client: httpx.AsyncClient, every_s: float, t_start: float, out: list[dict]) -> None:
    """The server's own view of concurrency: gauges summed over replicas. Replica
    gauges are as of each replica's last stats push; one ingress replica answers."""
    while True:
        try:
            text = (await client.get("/metrics", timeout=10.0)).text
        except httpx.HTTPError:
            text = ""
        out.append(parse_gauges(text, round(time.perf_counter() - t_start, 2)))
        await asyncio.sleep(every_s)


def parse_gauges(text: str, t_s: float) -> dict:
    """One sample: SERVER_GAUGES summed over replicas, each turn phase's quantiles
    (``phase_<name>_p50``/``_p99``, the worst replica's) and the answering ingress's
    hops to a first token (``ingress_<name>_p50``/``_p99``: prepare, route, replica, return)."""
    row = {"t_s": t_s}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in SERVER_GAUGES:
            row[name] = row.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        elif name in ("swiftinfer_turn_phase_seconds", "swiftinfer_ingress_phase_seconds"):
            labels = dict(kv.split("=", 1) for kv in line.split("{", 1)[1].split("}", 1)[0].split(","))
            q = labels["quantile"].strip('"').split(".", 1)[1].ljust(2, "0")  # "0.5" -> "50", "0.99" -> "99"
            side = "phase" if name == "swiftinfer_turn_phase_seconds" else "ingress"
            key = f"{side}_{labels['phase'].strip(chr(34))}_p{q}"
            row[key] = max(row.get(key, 0.0), float(line.rsplit(" ", 1)[1]))
    return row


def server_peaks(samples: list[dict]) -> dict:
    if not samples:
        return {}
    phases = sorted({k for r in samples for k in r if k.startswith(("phase_", "ingress_"))})
    return {"server_max": {g: max(r.get(g, 0.0) for r in samples) for g in SERVER_GAUGES},
            # per-phase turn times on the replicas (deployments/turn_timing.py): the last
            # sample covers the replicas' most recent turns; max is the worst seen in the run
            "server_phases": {k: {"last": next(r[k] for r in reversed(samples) if k in r),
                                  "max": max(r[k] for r in samples if k in r)} for k in phases}}


async def write_partial(spec: LoadSpec, card: dict, run_id: str, progress: Progress, t_start: float, samples: list[dict]) -> None:
    """A run cut short (a device call's time limit) still leaves its numbers."""
    while True:
        await asyncio.sleep(30)
        now = time.perf_counter()
        turns = list(progress.results)
        ok = [t for t in turns if t.ok]
        conc = timeline(turns, t_start, now)
        # cheap on purpose (no per-token percentiles): this runs on the client's event loop
        body = {"meta": meta(spec, card, run_id) | {"partial_at_s": round(now - t_start, 1)},
                "summary": {"turns_ok": len(ok), "turns_failed": progress.turns_failed,
                            "attempt_errors": progress.attempt_errors,
                            "completion_tokens": sum(t.completion_tokens for t in ok),
                            "ttft_s": dist([t.ttft_s for t in ok]),
                            "concurrency": {k: max(v, default=0) for k, v in conc.items() if k != "t_s"}}
                | server_peaks(samples)}
        spec.partial.write_text(json.dumps(body, indent=2, default=str))


def meta(spec: LoadSpec, card: dict, run_id: str) -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "run_id": run_id,
        "spec": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()},
        "server": card,  # model card; `swiftinfer` holds the engine config and versions
        "client": {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
                   "httpx": httpx.__version__, "gpus": host_gpus(), "cpu": host_cpu()},
    }


def host_cpu() -> dict:
    """This host's CPU model and core count: lent GPU machines differ in host speed, and the
    served stack's Python processes feel it where the engine does not."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": model or platform.processor(), "cores": os.cpu_count()}


def host_gpus() -> list[str]:
    """This host's GPU names from nvidia-smi ([] without one). The device of the server
    measured when the client runs beside it (bench/gpu_serve.sh, gpu_served.sh); the
    server's own replicas may sit elsewhere in a cluster."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def parse_args(argv: list[str] | None = None) -> tuple[LoadSpec, Path, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration-s", type=float, default=None)
    p.add_argument("--rate", type=float, default=None, help="session arrivals per second (default sessions/10)")
    p.add_argument("--concurrency", type=int, default=None, help="most turns in flight")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=24)
    p.add_argument("--think-s", type=float, default=0.0)
    p.add_argument("--model", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retry-s", type=float, default=180.0)
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument("--prefix", default="load")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--keep-sessions", action="store_true")
    p.add_argument("--metrics-every-s", type=float, default=0.0, help="sample the server's /metrics gauges (0: off)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--name", default="load")
    p.add_argument("--client-procs", type=int, default=1,
                   help="client processes (conversation i in process i %% K); each reports its CPU and loop lag")
    p.add_argument("--token-counts", action="store_true",
                   help="request logprobs so every chunk lists its tokens: the report gains ITL per token (itl_token_s)")
    a = p.parse_args(argv)
    for name in ("sessions", "rounds", "max_tokens", "prompt_words", "client_procs"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    spec = LoadSpec(a.url, a.sessions, a.rounds, a.duration_s, a.rate, a.concurrency, a.max_tokens, a.prompt_words,
                    a.think_s, a.model, a.seed, a.retry_s, a.timeout_s, a.prefix, not a.no_verify, not a.keep_sessions,
                    a.metrics_every_s, Path(a.out) / f"{a.name}.partial.json", a.token_counts, a.client_procs)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    return spec, Path(a.out), a.name


def main(argv: list[str] | None = None) -> int:
    spec, out, name = parse_args(argv)
    result = asyncio.run(run_load(spec))
    turns, t_start = result.pop("_turns"), result.pop("_t_start")
    js, png = write(result, turns, out, name, t_start)
    s, a = result["summary"], result["audit"]
    print(f"{s['sessions']} sessions, {s['turns_ok']} turns ok, {s['turns_failed']} failed, {s['tokens_per_s']:.1f} tok/s, "
          f"TTFT p50/p99 {s['ttft_s']['p50']}/{s['ttft_s']['p99']} s, ITL p50/p99 {s['itl_s']['p50']}/{s['itl_s']['p99']} s")
    c = s["concurrency"]
    print(f"open sessions max/mean {c['open_sessions']['max']}/{c['open_sessions']['mean']:.1f}, turns in flight "
          f"max/mean {c['turns_in_flight']['max']}/{c['turns_in_flight']['mean']:.1f}, server max {s.get('server_max', {})}")
    cl = s["client"]
    print(f"client: {cl['procs']} process(es), {cl['busy_cores']} cores busy (busiest {cl['max_busy_fraction']}), "
          f"loop lag p50/p99 {cl['loop_lag_p50_s']}/{cl['loop_lag_p99_s']} s")
    print(f"audit: {a}\nwrote {js} and {png}")
    spec.partial.unlink(missing_ok=True)
    return 0 if s["turns_failed"] == 0 and not a.get("lost") and not a.get("duplicated") else 1


if __name__ == "__main__":
    sys.exit(main())
