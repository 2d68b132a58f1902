"""Router benchmark: session affinity (ours) vs ConsistentHashRouter vs power-of-two.

One multi-round workload per router, on a real local Ray cluster with the real
engine and model, through the HTTP API (streaming):

  phase 0  ``base`` replicas   wave A talks                      (rounds 0..k-1)
  phase 1  scale up to ``peak``  wave A continues, wave B starts   (new sessions)
  phase 2  scale down to ``base`` both waves continue              (one replica drains)

Each step every active session sends one turn; turns run concurrently (up to
``concurrency``). Scale events change only ``num_replicas`` (same init args),
so Serve adds or drains a replica instead of redeploying.

Reported per router: share of continuing turns served from a warm cache (vs
rebuilt), session balance (max/mean sessions per live replica at the end of each
phase), client-side TTFT p50/p99, turn latency, failed turns, lost sessions
(a session whose server-side round count differs from its successful turns, or
that restarted as new). JSON + PNG go to ``bench/results/``.

    .venv/bin/python bench/router_affinity.py --sessions-per-wave 8 --phase-rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.config import RouterKind  # noqa: E402

MODEL_ID = "smollm2-135m-instruct"


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sessions_per_wave: int = Field(8, ge=1, le=1024, description="Sessions in wave A (from the start) and in wave B (from the scale-up).")
    phase_rounds: int = Field(3, ge=1, le=100, description="Steps per phase; three phases.")
    max_tokens: int = Field(8, ge=1, le=4096, description="Tokens generated per turn.")
    concurrency: int = Field(8, ge=1, le=1024, description="Turns in flight at once.")
    base_replicas: int = Field(2, ge=1, le=64)
    peak_replicas: int = Field(3, ge=2, le=64)
    sink_tokens: int = Field(4, ge=0, le=64)
    window: int = Field(60, ge=8, le=1 << 16)
    max_sessions: int = Field(16, ge=1, le=4096, description="KV slots per replica.")
    routers: list[RouterKind] = Field(default_factory=lambda: list(RouterKind))
    out_dir: Path = Field(ROOT / "bench" / "results")


@dataclass
class TurnResult:
    router: str
    phase: int
    step: int
    session: str
    round: int
    status: int
    replica: str = ""
    cache: str = ""
    ttft_s: float = float("nan")
    latency_s: float = float("nan")
    prefilled: int = 0
    cached: int = 0


async def one_turn(client: httpx.AsyncClient, prefix: str, cfg: BenchConfig, router: str, phase: int, step: int, sid: str, rnd: int) -> TurnResult:
    body = {"model": MODEL_ID, "session_id": sid, "stream": True, "max_tokens": cfg.max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"{sid} turn {rnd}: give me one word about the sea."}]}
    res = TurnResult(router, phase, step, sid, rnd, 0)
    t0 = time.perf_counter()
    async with client.stream("POST", f"{prefix}/v1/chat/completions", json=body) as resp:
        res.status, res.replica = resp.status_code, resp.headers.get("x-replica-id", "")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if res.ttft_s != res.ttft_s:  # first event: sent once the first token exists
                res.ttft_s = time.perf_counter() - t0
            event = json.loads(line[6:])
            if "usage" in event:
                res.cache, res.prefilled, res.cached = event["cache"], event["usage"]["prefilled_tokens"], event["usage"]["cached_tokens"]
    res.latency_s = time.perf_counter() - t0
    return res


def deploy(name: str, args: dict, replicas: int) -> None:
    """Apply the app as a Serve config, like ``serve deploy``: the version comes
    from import path + args, so changing only the ``num_replicas`` override is a
    scale event (one replica added or drained), not a redeploy."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate({"applications": [{
        "name": name, "route_prefix": f"/{name}", "import_path": "deployments.app.builder:build_app", "args": args,
        "deployments": [{"name": "LLMReplica", "num_replicas": replicas}],
    }]})
    _get_global_client().deploy_apps(config)
    deadline = time.time() + 180
    while True:
        app = serve.status().applications.get(name)
        states = dict(app.deployments["LLMReplica"].replica_states) if app and "LLMReplica" in app.deployments else {}
        if app is not None and app.status == "RUNNING" and states == {"RUNNING": replicas}:
            return
        if time.time() > deadline:
            raise TimeoutError(f"{name}: did not reach {replicas} running replicas ({states})")
        time.sleep(0.5)


async def warm_up(base_url: str, name: str, cfg: BenchConfig) -> None:
    """One throwaway turn per replica slot so that no router pays the model's
    first-call costs inside the measurement; the sessions are deleted after."""
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        sids = [f"warmup-{i}" for i in range(2 * cfg.base_replicas)]
        await asyncio.gather(*(one_turn(client, f"/{name}", cfg, "warmup", -1, -1, sid, 0) for sid in sids))
        for sid in sids:
            await client.delete(f"/{name}/v1/sessions/{sid}")


async def run_router(kind: RouterKind, cfg: BenchConfig, base_url: str) -> dict:
    from ray import serve

    name = f"bench-{kind.value.replace('_', '-')}"
    args = {
        "model_id": MODEL_ID, "router": kind.value, "directory_name": name, "max_ongoing_requests": 64,
        "engine": {"device": "cpu", "sink_tokens": cfg.sink_tokens, "window": cfg.window, "max_sessions": cfg.max_sessions},
        "scaling": {"min_replicas": cfg.base_replicas, "max_replicas": cfg.base_replicas}, "graceful_shutdown_timeout_s": 60,
    }
    deploy(name, args, cfg.base_replicas)
    await warm_up(base_url, name, cfg)
    wave_a = [f"{name}-a{i}" for i in range(cfg.sessions_per_wave)]
    wave_b = [f"{name}-b{i}" for i in range(cfg.sessions_per_wave)]
    rounds: dict[str, int] = {}
    turns: list[TurnResult] = []
    balance: list[float] = []
    events: list[dict] = []
    gate = asyncio.Semaphore(cfg.concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:

        async def bounded(*args):
            async with gate:
                return await one_turn(client, f"/{name}", cfg, kind.value, *args)

        for phase, replicas in enumerate((cfg.base_replicas, cfg.peak_replicas, cfg.base_replicas)):
            if phase:
                t = time.perf_counter()
                await asyncio.to_thread(deploy, name, args, replicas)
                events.append({"phase": phase, "replicas": replicas, "seconds": round(time.perf_counter() - t, 2)})
            active = wave_a + (wave_b if phase else [])
            for r in range(cfg.phase_rounds):
                step = phase * cfg.phase_rounds + r
                batch = await asyncio.gather(*(bounded(phase, step, sid, rounds.get(sid, 0)) for sid in active))
                for res in batch:
                    turns.append(res)
                    rounds[res.session] = rounds.get(res.session, 0) + 1
            last = {}
            for t_ in turns:
                if t_.status == 200:
                    last[t_.session] = t_.replica
            per_replica = [list(last.values()).count(rid) for rid in set(last.values())]
            per_replica += [0] * max(0, replicas - len(per_replica))  # a live replica with no session
            balance.append(max(per_replica) / (len(last) / replicas))

        lost = 0
        for sid in wave_a + wave_b:
            ok = sum(1 for t_ in turns if t_.session == sid and t_.status == 200)
            restarted = any(t_.session == sid and t_.round > 0 and t_.cache == "new" for t_ in turns)
            info = (await client.get(f"/{name}/v1/sessions/{sid}")).json()
            lost += int(restarted or info.get("rounds") != ok)
    serve.delete(name)
    return summarize(kind, turns, balance, lost, events)


def summarize(kind: RouterKind, turns: list[TurnResult], balance: list[float], lost: int, events: list[dict]) -> dict:
    ok = [t for t in turns if t.status == 200]
    cont = [t for t in ok if t.round > 0]
    ttft = np.array([t.ttft_s for t in ok])
    ttft_cont = np.array([t.ttft_s for t in cont])
    return {
        "router": kind.value,
        "turns": len(turns),
        "failed_turns": len(turns) - len(ok),
        "warm_share": sum(t.cache == "warm" for t in cont) / max(1, len(cont)),
        "rebuilt_turns": sum(t.cache == "rebuilt" for t in cont),
        "balance_max_over_mean": {"per_phase": [round(b, 3) for b in balance], "mean": round(float(np.mean(balance)), 3)},
        "ttft_s": {"p50": float(np.percentile(ttft, 50)), "p99": float(np.percentile(ttft, 99))},
        "ttft_continuing_s": {"p50": float(np.percentile(ttft_cont, 50)), "p99": float(np.percentile(ttft_cont, 99))},
        "turn_latency_s": {"p50": float(np.percentile([t.latency_s for t in ok], 50)), "p99": float(np.percentile([t.latency_s for t in ok], 99))},
        "prefilled_tokens": sum(t.prefilled for t in ok),
        "lost_sessions": lost,
        "scale_events": events,
        "raw": [asdict(t) for t in turns],
    }


def environment(cfg: BenchConfig) -> dict:
    import ray
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": f"CPU only: {cpu}, {os.cpu_count()} cores shared by all replicas (1 torch thread each)",
        "versions": {"python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__, "git": commit},
        "config": json.loads(cfg.model_dump_json()),
    }


def plot(results: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["router"] for r in results]
    x = np.arange(len(names))
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    ax[0, 0].bar(names, [r["warm_share"] for r in results], color="tab:green")
    ax[0, 0].set(title="warm-cache share of continuing turns", ylim=(0, 1))
    for i, label in enumerate(("phase 0 (base)", "phase 1 (scaled up)", "phase 2 (scaled down)")):
        ax[0, 1].bar(x + (i - 1) * 0.25, [r["balance_max_over_mean"]["per_phase"][i] for r in results], 0.25, label=label)
    ax[0, 1].set(title="session balance: max / mean per replica (1 = even)", xticks=x, xticklabels=names)
    ax[0, 1].legend(fontsize=8)
    for i, (key, q) in enumerate((("ttft_s", "p50"), ("ttft_s", "p99"), ("ttft_continuing_s", "p50"), ("ttft_continuing_s", "p99"))):
        label = f"{q} {'all turns' if key == 'ttft_s' else 'continuing turns'}"
        ax[1, 0].bar(x + (i - 1.5) * 0.2, [r[key][q] for r in results], 0.2, label=label)
    ax[1, 0].set(title="TTFT (s, client side, streaming)", xticks=x, xticklabels=names)
    ax[1, 0].legend(fontsize=8)
    ax[1, 1].bar(x - 0.2, [r["lost_sessions"] for r in results], 0.4, label="lost sessions")
    ax[1, 1].bar(x + 0.2, [r["failed_turns"] for r in results], 0.4, label="failed turns")
    ax[1, 1].set(title="lost sessions / failed turns", xticks=x, xticklabels=names, ylim=(0, max(1, *(r["failed_turns"] for r in results), *(r["lost_sessions"] for r in results)) * 1.2))
    for i, r in enumerate(results):
        ax[1, 1].text(i, 0.02, f"{r['lost_sessions']} lost / {r['failed_turns']} failed of {r['turns']} turns", ha="center", fontsize=8)
    ax[1, 1].legend()
    fig.suptitle(f"router affinity, {meta['date_utc']}\n{meta['device']}; ray {meta['versions']['ray']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, field in BenchConfig.model_fields.items():
        if name not in ("routers", "out_dir"):
            p.add_argument("--" + name.replace("_", "-"), type=int, default=field.default, help=field.description)
    p.add_argument("--routers", nargs="+", default=[k.value for k in RouterKind], choices=[k.value for k in RouterKind])
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--replot", type=Path, help="only redraw the PNG from this JSON result")
    ns = p.parse_args()
    if ns.replot:
        data = json.loads(ns.replot.read_text())
        plot(data["results"], data["meta"], ns.replot.with_suffix(".png"))
        return
    cfg = BenchConfig(**{k: v for k, v in vars(ns).items() if k != "replot"})

    import ray
    from ray import serve

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        results = [asyncio.run(run_router(kind, cfg, f"http://127.0.0.1:{port}")) for kind in cfg.routers]
    finally:
        serve.shutdown()
        ray.shutdown()
    meta = environment(cfg)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / "router_affinity.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    plot(results, meta, cfg.out_dir / "router_affinity.png")
    for r in results:
        print(f"{r['router']:>18}: warm {r['warm_share']:.2f}  balance {r['balance_max_over_mean']['per_phase']}  "
              f"ttft p50 {r['ttft_s']['p50']:.3f}s p99 {r['ttft_s']['p99']:.3f}s (continuing p50 {r['ttft_continuing_s']['p50']:.3f}s "
              f"p99 {r['ttft_continuing_s']['p99']:.3f}s)  lost {r['lost_sessions']}  failed {r['failed_turns']}")


if __name__ == "__main__":
    main()
