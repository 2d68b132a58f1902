"""Tenant fairness: does one tenant flooding the service raise another's TTFT?

    python bench/tenant_fairness.py [--phase-s 30] [--b-clients 2] [--a-limit 1] [--flood-x 10]

A private local Ray cluster (``address="local"``) serves the default model on
CPU with API keys for two tenants. Tenant A has the default per-tenant limits
(``requests_per_s = --a-limit``, burst 2, 2 conversations at once), B none
(``tenant_overrides``), so only A's flood meets a limit. Tenant B runs a steady
closed-loop load (``--b-clients`` conversations, one streamed turn after another
with 0.2 s think time) through three phases of ``--phase-s`` each:

1. ``alone``: B only.
2. ``a_at_limit``: A sends exactly its limit (open loop, ``--a-limit`` turns/s):
   the load the shared engine must carry anyway.
3. ``a_flood``: A sends ``--flood-x`` times its limit; the excess gets 429.
4. ``c_flood_unlimited``: tenant C, with no limits, sends the same flood: what
   the limits spare B (C's turns give up after ``--flood-timeout-s``).

Reported: B's TTFT p50/p99 (first SSE event, which the ingress sends once the
first token exists) per phase, A's statuses (and 429 count) per phase. The
claim of README "Security" holds when ``a_flood`` is close to ``a_at_limit``,
not to what A's unlimited flood would cost. Writes
``bench/results/tenant_fairness_cpu.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import save_plot, write_results  # noqa: E402
from bench.load_report import pct  # noqa: E402

MODEL = "smollm2-135m-instruct"
PHASES = ("alone", "a_at_limit", "a_flood", "c_flood_unlimited")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def b_client(client, key: str, n: int, stop_at: float, ttfts: list[float], statuses: Counter) -> None:
    """One of B's conversations: streamed turns back to back until ``stop_at``."""
    turn = 0
    while time.monotonic() < stop_at:
        body = {"model": MODEL, "session_id": f"b-{n}", "stream": True, "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": f"Turn {turn}: tell me one fact about rivers."}]}
        t0 = time.perf_counter()
        async with client.stream("POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}) as resp:
            statuses[resp.status_code] += 1
            first = None
            async for line in resp.aiter_lines():
                if first is None and line.startswith("data: "):
                    first = time.perf_counter() - t0
            if resp.status_code == 200 and first is not None:
                ttfts.append(first)
        turn += 1
        await asyncio.sleep(0.2)


async def a_sender(client, key: str, rate: float, stop_at: float, statuses: Counter, timeout_s: float) -> None:
    """A flooder's open-loop sender: ``rate`` turns per second whatever the answers."""
    tasks, i = [], 0

    async def one(i: int) -> None:
        body = {"model": MODEL, "session_id": f"a-{i % 50}", "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": f"Flood {i}: write a long poem."}]}
        try:
            resp = await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=timeout_s)
            statuses[resp.status_code] += 1
        except Exception as exc:  # noqa: BLE001 - counted, the bench goes on
            statuses[type(exc).__name__] += 1

    start = time.monotonic()
    while time.monotonic() < stop_at:
        tasks.append(asyncio.create_task(one(i)))
        i += 1
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
    await asyncio.gather(*tasks)


async def run_phases(url: str, keys: dict, a: argparse.Namespace) -> dict:
    import httpx

    out = {}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        for phase in PHASES:
            stop_at = time.monotonic() + a.phase_s
            ttfts: list[float] = []
            b_status: Counter = Counter()
            a_status: Counter = Counter()
            jobs = [b_client(client, keys["b"], n, stop_at, ttfts, b_status) for n in range(a.b_clients)]
            rate = {"alone": 0.0, "a_at_limit": a.a_limit, "a_flood": a.a_limit * a.flood_x, "c_flood_unlimited": a.a_limit * a.flood_x}[phase]
            if rate > 0:
                flooder = keys["c"] if phase.startswith("c_") else keys["a"]
                jobs.append(a_sender(client, flooder, rate, stop_at, a_status, a.flood_timeout_s))
            await asyncio.gather(*jobs)
            out[phase] = {
                "a_rate_per_s": rate, "b_turns": len(ttfts),
                "b_ttft_ms": {"p50": _ms(pct(ttfts, 50)), "p99": _ms(pct(ttfts, 99)), "max": _ms(max(ttfts, default=None))},
                "b_statuses": {str(k): v for k, v in b_status.items()},
                "a_statuses": {str(k): v for k, v in a_status.items()}, "a_429": a_status.get(429, 0),
            }
            print(phase, out[phase], flush=True)
    return out


def _ms(s: float | None) -> float | None:
    return None if s is None else round(1000 * s, 1)


def plot(result: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = result["phases"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [p.replace("_", "\n", 1) for p in PHASES]
    xs = range(len(PHASES))
    for q, off in (("p50", -0.2), ("p99", 0.2)):
        ax1.bar([x + off for x in xs], [phases[p]["b_ttft_ms"][q] or 0 for p in PHASES], width=0.4, label=f"B TTFT {q}")
    ax1.set_xticks(list(xs), [f"{lab}\n(flood {phases[p]['a_rate_per_s']:g}/s)" for lab, p in zip(labels, PHASES)], fontsize=8)
    ax1.set_yscale("log")
    ax1.set_ylabel("ms (log)")
    ax1.set_title("Tenant B's time to first token")
    ax1.legend()
    ok = [phases[p]["a_statuses"].get("200", 0) for p in PHASES]
    refused = [phases[p]["a_429"] for p in PHASES]
    ax2.bar(list(xs), ok, label="200")
    ax2.bar(list(xs), refused, bottom=ok, label="429 (tenant limit)")
    ax2.set_xticks(list(xs), labels, fontsize=8)
    other = [sum(v for k, v in phases[p]["a_statuses"].items() if k not in ("200", "429")) for p in PHASES]
    ax2.bar(list(xs), other, bottom=[o + r for o, r in zip(ok, refused)], label="other (client timeout, 409 busy)")
    ax2.set_title(f"Flooder's requests (A limit {result['config']['a_limit_per_s']:g}/s; C none)")
    ax2.legend()
    fig.suptitle(f"Per-tenant limits, SmolLM2-135M on CPU, {result['config']['phase_s']:g} s per phase, {result['date'][:10]}")
    save_plot(name, fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase-s", type=float, default=30.0)
    p.add_argument("--b-clients", type=int, default=2)
    p.add_argument("--a-limit", type=float, default=1.0, help="A's requests_per_s limit")
    p.add_argument("--flood-x", type=float, default=10.0, help="A's flood rate as a multiple of its limit")
    p.add_argument("--flood-timeout-s", type=float, default=20.0, help="a flood turn's client timeout")
    p.add_argument("--name", default="tenant_fairness_cpu")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON of --name")
    a = p.parse_args(argv)
    if a.replot:
        import json

        plot(json.loads((Path(__file__).resolve().parent / "results" / f"{a.name}.json").read_text()), a.name)
        return 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from deployments.http.api_keys import add_key
    from deployments.app.builder import build_app

    tmp = Path(tempfile.mkdtemp(prefix="fairness-"))
    keys = {t: add_key(tmp / "keys.json", f"tenant-{t}", f"tenant-{t}") for t in ("a", "b", "c")}
    limits = {"max_conversations": 2, "requests_per_s": a.a_limit, "request_burst": 2}
    config = {"engine": {"device": "cpu", "window": 252, "max_sessions": 16, "max_turn_tokens": 1024}, "cpu_threads": 1,
              "directory_name": f"fairness-{os.getpid()}", "session_log": {"path": str(tmp / "log.sqlite3")},
              "auth": {"keys_file": str(tmp / "keys.json"), "tenant_limits": limits, "tenant_overrides": {"tenant-b": {}, "tenant-c": {}}}}
    port = _port()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="fairness", route_prefix="/")
        phases = asyncio.run(run_phases(f"http://127.0.0.1:{port}", keys, a))
    finally:
        serve.shutdown()
        ray.shutdown()
    result = {"phases": phases, "config": {"phase_s": a.phase_s, "b_clients": a.b_clients, "a_limit_per_s": a.a_limit,
                                           "flood_x": a.flood_x, "tenant_limits": limits, "engine": config["engine"],
                                           "max_tokens": 8, "b_think_s": 0.2, "flood_timeout_s": a.flood_timeout_s}}
    path = write_results(a.name, result)
    import json

    plot(json.loads(path.read_text()), a.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
