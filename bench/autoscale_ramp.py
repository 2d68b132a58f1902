"""Issue 17: a closed-loop ramp through the autoscaler, against a running service.

    python bench/autoscale_ramp.py --url http://127.0.0.1:8000 --phases 16:60 48:90 144:120 48:90 16:60 [--out DIR]

Each phase ``N:S`` keeps N conversations talking for S seconds, closed loop
(each sends its next turn when its reply ends, no think time). A growing phase
adds new conversations to those of the phase before; a shrinking one keeps N of
them spread evenly over their order of arrival (``talking``), so conversations
placed on replicas added late stay too. Conversations that stay from one phase
to the next keep their sessions, so a scale-up shows new sessions placed on the
new replica and a scale-down shows drained ones handed over (``cache`` of their
next turn: ``migrated`` = exact KV imported, ``rebuilt`` = from the log). Every 2 s the service's ``/v1/cluster``
feed is sampled: live replicas, sessions each owns, tokens/s, and the
directory's events (replica joined / lost, session moved) and Serve's
deployment status changes (UPSCALING / DOWNSCALING: the policy's decisions).

Reported (JSON + PNG): per phase turns ok/failed, tokens/s, TTFT p50/p99 and the
cache kinds of its turns; the replica count over time; per replica that
joined, the seconds from its first report to its first generated token, and
from the last UPSCALING decision before that report; the session-log audit of
every acknowledged turn (lost, duplicated). Decisions are seen as the ingress
polls Serve's status (every few seconds), so those times are upper bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
from load import Prompts  # noqa: E402
from load_client import TurnResult, run_turn  # noqa: E402
from load_report import audit, dist  # noqa: E402


def talking(phases: list[tuple[int, float]]) -> list[set[int]]:
    """Conversations talking in each phase: growing phases add the next new ids,
    shrinking ones keep an even spread of the phase before's (sorted) ids."""
    out: list[set[int]] = []
    now: list[int] = []
    fresh = 0
    for n, _ in phases:
        if n >= len(now):
            now, fresh = now + list(range(fresh, fresh + n - len(now))), fresh + n - len(now)
        else:
            now = [now[j * len(now) // n] for j in range(n)]
        out.append(set(now))
    return out


def parse_phases(items: list[str]) -> list[tuple[int, float]]:
    out = []
    for item in items:
        n, _, s = item.partition(":")
        if not (n.isdigit() and int(n) > 0) or not s.replace(".", "", 1).isdigit() or float(s) <= 0:
            raise ValueError(f"phase {item!r} is not SESSIONS:SECONDS with both > 0")
        out.append((int(n), float(s)))
    return out


async def run_ramp(url: str, phases: list[tuple[int, float]], max_tokens: int, prompt_words: int, sample_s: float) -> dict:
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=httpx.Timeout(600, connect=10)) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        run_id, t0, now_phase = f"ramp-{random.randrange(1 << 30):x}", time.perf_counter(), [0]
        turns: list[tuple[int, TurnResult]] = []
        samples: list[dict] = []
        events: dict[tuple, dict] = {}
        done = asyncio.Event()
        members = talking(phases)

        async def conversation(i: int) -> None:
            rng, prompts, r = random.Random(i), Prompts(prompt_words, random.Random(i)), 0
            while not done.is_set():
                if i not in members[now_phase[0]]:
                    await asyncio.sleep(0.2)
                    continue
                sid = f"{run_id}-{i}"
                body = {"model": model, "session_id": sid, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                        "ignore_eos": True, "messages": [{"role": "user", "content": prompts(r)}]}
                res = TurnResult(sid, r, f"{sid}-r{r}", scheduled=time.perf_counter())
                turns.append((now_phase[0], res))
                await run_turn(client, "/v1/chat/completions", body, res, 120.0, rng)
                r += 1

        async def sampler() -> None:
            while not done.is_set():
                try:
                    view = (await client.get("/v1/cluster")).json()
                    samples.append({"t_s": time.perf_counter() - t0, "wall": time.time(), "phase": now_phase[0],
                                    "deployment": (view.get("deployment") or {}).get("status"),
                                    "replicas": {r["id"]: {"owned": r["conversations_owned"], "tokens_per_s": r["tokens_per_s"],
                                                           "tokens_generated": r["tokens_generated"] or 0, "turns": r["turns"],
                                                           "draining": r["draining"]}
                                                 for r in view["replicas"]}})
                    for e in view.get("events", []):
                        events[tuple(sorted((k, str(v)) for k, v in e.items()))] = e
                except (httpx.HTTPError, ValueError, KeyError):
                    pass  # a busy or restarting ingress: the next sample
                await asyncio.sleep(sample_s)

        tasks = [asyncio.create_task(conversation(i)) for i in sorted(set().union(*members))] + [asyncio.create_task(sampler())]
        bounds = []
        for k, (_, seconds) in enumerate(phases):
            now_phase[0] = k
            start = time.perf_counter() - t0
            await asyncio.sleep(seconds)
            bounds.append((start, time.perf_counter() - t0))
        done.set()
        await asyncio.gather(*tasks)
        checked = await audit(client, [t for _, t in turns], cleanup=True)
    ordered = sorted(events.values(), key=lambda e: e.get("t", 0))
    return {"phases": summarize(phases, bounds, turns, t0), "samples": samples, "events": ordered,
            "replica_changes": replica_changes(samples), "replica_start": first_tokens(samples, ordered), "audit": checked}


def summarize(phases, bounds, turns: list[tuple[int, TurnResult]], t0: float) -> list[dict]:
    out = []
    for k, ((n, seconds), (start, end)) in enumerate(zip(phases, bounds)):
        mine = [t for p, t in turns if p == k]
        ok = [t for t in mine if t.ok]
        tokens = sum(t.completion_tokens for t in ok if start <= t.done - t0 <= end)
        out.append({"phase": k, "sessions": n, "seconds": seconds, "turns_ok": len(ok), "turns_failed": len(mine) - len(ok),
                    "tokens_per_s": tokens / (end - start), "ttft_s": dist([t.ttft_s for t in ok]),
                    "cache": dict(Counter(t.cache for t in ok)), "replicas_seen": sorted({t.replica for t in ok})})
    return out


def replica_changes(samples: list[dict]) -> list[dict]:
    """Replicas joining or leaving the /v1/cluster feed, by sample time."""
    out, before = [], None
    for s in samples:
        now = set(s["replicas"])
        if before is not None and now != before:
            out.append({"t_s": s["t_s"], "phase": s["phase"], "joined": sorted(now - before), "left": sorted(before - now), "live": len(now)})
        before = now
    return out


def first_tokens(samples: list[dict], events: list[dict]) -> dict[str, dict]:
    """Per replica: seconds from the last UPSCALING decision before its first sample to
    that sample (its start-up), and from each to the first sample where it had
    generated tokens (None: never did; a replica that joins between phases waits for
    new conversations, so this includes that wait)."""
    seen: dict[str, dict] = {}
    for s in samples:
        for rid, r in s["replicas"].items():
            first = seen.setdefault(rid, {"first_seen_wall": s["wall"], "first_tokens_wall": None})
            if first["first_tokens_wall"] is None and r["tokens_generated"]:
                first["first_tokens_wall"] = s["wall"]
    ups = [e["t"] for e in events if e.get("kind") == "deployment" and e.get("status") == "UPSCALING"]
    out = {}
    for rid, f in seen.items():
        decided = max((t for t in ups if t <= f["first_seen_wall"]), default=None)
        served = f["first_tokens_wall"]
        out[rid] = {"decision_to_report_s": None if decided is None else f["first_seen_wall"] - decided,
                    "report_to_tokens_s": None if served is None else served - f["first_seen_wall"],
                    "decision_to_tokens_s": None if served is None or decided is None else served - decided}
    return out


def plot(result: dict, name: str, out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    t = [x["t_s"] for x in s]
    a.step(t, [len(x["replicas"]) for x in s], where="post")
    a.set_ylabel("live replicas")
    for rid in sorted({rid for x in s for rid in x["replicas"]}):
        b.plot(t, [x["replicas"].get(rid, {}).get("owned") for x in s], label=rid[:8])
        c.plot(t, [x["replicas"].get(rid, {}).get("tokens_per_s") for x in s], label=rid[:8])
    b.set_ylabel("sessions owned")
    c.set_ylabel("tokens/s")
    c.set_xlabel("seconds")
    b.legend(fontsize=7)
    p99 = ", ".join(f"{p['sessions']}: {p['ttft_s']['p99'] or 0:.2f}" for p in result["phases"])
    a.set_title(f"closed-loop ramp; TTFT p99 (s) by phase sessions: {p99}", fontsize=9)
    common.save_plot(name, fig, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--phases", nargs="+", required=True, help="SESSIONS:SECONDS per phase")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=24)
    ap.add_argument("--sample-s", type=float, default=2.0)
    ap.add_argument("--name", default="autoscale_ramp")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    try:
        phases = parse_phases(a.phases)
    except ValueError as exc:
        ap.error(str(exc))
    result = asyncio.run(run_ramp(a.url, phases, a.max_tokens, a.prompt_words, a.sample_s))
    common.write_results(a.name, {"command": " ".join(sys.argv), **result}, a.out)
    plot(result, a.name, a.out)
    print(common.table(result["phases"], ["phase", "sessions", "turns_ok", "turns_failed", "tokens_per_s"]))
    print("audit:", result["audit"], "replica start:", result["replica_start"])
    print("replicas joined/left:", [(round(c["t_s"]), c["joined"], c["left"]) for c in result["replica_changes"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
