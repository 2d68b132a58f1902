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
so a run shows whether its client kept up (load_drive.py).

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
import datetime as dt
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.load_drive import SPAWN_LEAD_S, Progress, Prompts, client_summary, drive_here, drive_in_processes, http_client  # noqa: E402
from bench.load_report import audit, dist, summarize, timeline, write  # noqa: E402

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
    token_counts: bool = False  # ask for continuous usage stats: each chunk then tells its token count, for ITL per token
    client_procs: int = 1  # client processes; conversation i runs in process i % client_procs
    max_tokens_hi: int | None = None  # each turn's max_tokens drawn in [max_tokens, this] (bench/turn_lengths.py)


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
    async with http_client(spec) as client:
        card = (await client.get("/v1/models")).json()["data"][0]
        model = spec.model or card["id"]
        samples: list[dict] = []
        t_start = time.perf_counter() + (SPAWN_LEAD_S if spec.client_procs > 1 else 0.0)
        side = [asyncio.create_task(sample_metrics(client, spec.metrics_every_s, t_start, samples))] if spec.metrics_every_s > 0 else []
        if spec.partial is not None:
            side.append(asyncio.create_task(write_partial(spec, card, run_id, progress, t_start, samples)))
        try:
            if spec.client_procs <= 1:
                clients = [await drive_here(spec, client, model, run_id, plan, t_start, Prompts(spec.prompt_words, rng), progress)]
            else:
                clients = await drive_in_processes(spec, model, run_id, plan, t_start, progress)
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


# /metrics gauge -> (sample key prefix, the label naming the part timed)
TIMED = {"swiftinfer_turn_phase_seconds": ("phase", "phase"), "swiftinfer_ingress_phase_seconds": ("ingress", "phase"),
         "swiftinfer_handoff_seconds": ("handoff", "leg")}


def parse_gauges(text: str, t_s: float) -> dict:
    """One sample: SERVER_GAUGES summed over replicas, each turn phase's quantiles
    (``phase_<name>_p50``/``_p99``, the worst replica's), the answering ingress's
    hops to a first token (``ingress_<name>_p50``/``_p99``: prepare, route, replica, return)
    and the waits between the replicas and their engines (``handoff_<leg>_p50``/``_p99``, the worst replica's)."""
    row = {"t_s": t_s}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in SERVER_GAUGES:
            row[name] = row.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        elif name in TIMED:
            labels = dict(kv.split("=", 1) for kv in line.split("{", 1)[1].split("}", 1)[0].split(","))
            q = labels["quantile"].strip('"').split(".", 1)[1].ljust(2, "0")  # "0.5" -> "50", "0.99" -> "99"
            side, label = TIMED[name]
            key = f"{side}_{labels[label].strip(chr(34))}_p{q}"
            row[key] = max(row.get(key, 0.0), float(line.rsplit(" ", 1)[1]))
    return row


def server_peaks(samples: list[dict]) -> dict:
    if not samples:
        return {}
    phases = sorted({k for r in samples for k in r if k.startswith(tuple(f"{side}_" for side, _ in TIMED.values()))})
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
    p.add_argument("--max-tokens-hi", type=int, default=None,
                   help="each turn's max_tokens drawn in [--max-tokens, this] per (conversation, round), as engine_batches.py --tokens-hi draws them (bench/turn_lengths.py); default: every turn --max-tokens")
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
                   help="request stream_options.continuous_usage_stats so every chunk's usage tells its token count (no "
                        "logprob work added to the served steps): the report gains ITL per token (itl_token_s)")
    a = p.parse_args(argv)
    for name in ("sessions", "rounds", "max_tokens", "prompt_words", "client_procs"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.max_tokens_hi is not None and a.max_tokens_hi < a.max_tokens:
        p.error("--max-tokens-hi must be >= --max-tokens")
    spec = LoadSpec(a.url, a.sessions, a.rounds, a.duration_s, a.rate, a.concurrency, a.max_tokens, a.prompt_words,
                    a.think_s, a.model, a.seed, a.retry_s, a.timeout_s, a.prefix, not a.no_verify, not a.keep_sessions,
                    a.metrics_every_s, Path(a.out) / f"{a.name}.partial.json", a.token_counts, a.client_procs,
                    a.max_tokens_hi)
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
