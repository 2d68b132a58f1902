"""Issue 17: a closed-loop ramp through the autoscaler, against a running service.

    python bench/autoscale_ramp.py --url http://127.0.0.1:8000 --phases 16:60 48:90 144:120 48:90 16:60 [--return-s 40] [--out DIR]

Each phase ``N:S`` keeps N conversations talking for S seconds, closed loop
(each sends its next turn when its reply ends, no think time). A growing phase
adds new conversations to those of the phase before; a shrinking one keeps N of
them spread evenly over their order of arrival (``talking``), so conversations
placed on replicas added late stay too. Conversations that stay from one phase
to the next keep their sessions, so a scale-up shows new sessions placed on the
new replica. Every 2 s the service's ``/v1/cluster`` feed is sampled: live
replicas, sessions each owns, tokens/s, and the directory's events (replica
joined / drained, session moved) and Serve's deployment status changes
(UPSCALING / DOWNSCALING: the policy's decisions).

With ``--return-s S`` a return phase follows: every conversation the ramp started
takes one more turn, as many at once as the last phase had conversations (the
load the autoscaler last settled on: all at once would overflow the survivors'
KV slots, and an import with no free slot rebuilds), none starting after S
seconds. A drain hands a replica's sessions back (idle resident ones with their
KV, within ``kv_transfer_max_mb``), but the shrinking phases never talk to the
conversations they dropped; the return turns do, and ``handover`` counts how
those last served by a drained replica found their cache (``migrated`` = exact
KV imported, ``rebuilt`` = from the log). Its turns are load too: the
active-sessions signal may ask for a replica again near its end.

Reported (JSON + PNG): per phase turns ok/failed, tokens/s, TTFT p50/p99 and the
cache kinds of its turns (the return phase: ``return``, ``handover``); the
replica count over time; per replica that joined, the seconds from the decision
that added it to its first report and to its first generated token
(``autoscale_report.first_tokens``); the session-log audit of every
acknowledged turn (lost, duplicated). Decisions are seen as the ingress polls
Serve's status (every few seconds), so those times are upper bounds.
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
from autoscale_report import first_tokens, handover  # noqa: E402
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


async def run_ramp(url: str, phases: list[tuple[int, float]], max_tokens: int, prompt_words: int, sample_s: float,
                   return_s: float = 0.0) -> dict:
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=httpx.Timeout(600, connect=10)) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        run_id, t0, wall0, now_phase = f"ramp-{random.randrange(1 << 30):x}", time.perf_counter(), time.time(), [0]
        turns: list[tuple[int, TurnResult]] = []
        samples: list[dict] = []
        events: dict[tuple, dict] = {}
        done, sampled = asyncio.Event(), asyncio.Event()  # conversations stop, then the sampler
        members = talking(phases)
        state: dict[int, list] = {}  # conversation -> [retry rng, prompts, next round]

        async def turn(i: int) -> TurnResult:
            rng, prompts, r = state.setdefault(i, [random.Random(i), Prompts(prompt_words, random.Random(i)), 0])
            sid = f"{run_id}-{i}"
            body = {"model": model, "session_id": sid, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "messages": [{"role": "user", "content": prompts(r)}]}
            res = TurnResult(sid, r, f"{sid}-r{r}", scheduled=time.perf_counter())
            turns.append((now_phase[0], res))
            state[i][2] = r + 1
            return await run_turn(client, "/v1/chat/completions", body, res, 120.0, rng)

        async def conversation(i: int) -> None:
            while not done.is_set():
                if i not in members[now_phase[0]]:
                    await asyncio.sleep(0.2)
                    continue
                await turn(i)

        async def sampler() -> None:
            while not sampled.is_set():
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

        everyone = sorted(set().union(*members))
        sampling = asyncio.create_task(sampler())
        talkers = [asyncio.create_task(conversation(i)) for i in everyone]
        bounds = []
        for k, (_, seconds) in enumerate(phases):
            now_phase[0] = k
            start = time.perf_counter() - t0
            await asyncio.sleep(seconds)
            bounds.append((start, time.perf_counter() - t0))
        done.set()
        await asyncio.gather(*talkers)
        now_phase[0] = len(phases)  # the return phase's turns and samples
        start = time.perf_counter() - t0
        back = await return_phase(turn, everyone, phases[-1][0], return_s) if return_s > 0 else {}
        end = time.perf_counter() - t0
        sampled.set()
        await sampling
        checked = await audit(client, [t for _, t in turns], cleanup=True)
    ordered = sorted(events.values(), key=lambda e: e.get("t", 0))
    out = {"phases": summarize(phases, bounds, turns, t0), "samples": samples, "events": ordered,
           "replica_changes": replica_changes(samples), "replica_start": first_tokens(samples, ordered), "audit": checked}
    if return_s > 0:
        out["return"] = {"seconds": return_s, "concurrency": phases[-1][0], "conversations": len(everyone),
                         "start_s": start, "end_s": end, **summarize_turns(list(back.values()), start, end, t0)}
        out["handover"] = handover(ordered, *handover_inputs(turns, len(phases), list(back.values()), wall0 - t0))
    return out


def handover_inputs(turns: list[tuple[int, TurnResult]], n_phases: int, back: list[TurnResult], to_wall: float):
    """(conversation -> replica of its last acknowledged turn in the phases, conversation ->
    its return turn as ``autoscale_report.handover`` reads it); ``to_wall``: wall - perf_counter."""
    last = {t.session_id: t.replica for k, t in turns if k < n_phases and t.ok}
    return last, {t.session_id: {"ok": t.ok, "cache": t.cache, "due_wall": t.scheduled + to_wall} for t in back}


async def return_phase(turn, ids: list[int], concurrency: int, seconds: float, clock=time.perf_counter) -> dict[int, TurnResult]:
    """One more turn (``await turn(i)``) of each conversation in ``ids``, ``concurrency``
    at a time, in ``ids`` order; none starts after ``seconds`` (those in flight then finish)."""
    deadline, gate, out = clock() + seconds, asyncio.Semaphore(concurrency), {}

    async def one(i: int) -> None:
        async with gate:
            if clock() < deadline:
                out[i] = await turn(i)

    await asyncio.gather(*(one(i) for i in ids))
    return out


def summarize(phases, bounds, turns: list[tuple[int, TurnResult]], t0: float) -> list[dict]:
    return [{"phase": k, "sessions": n, "seconds": seconds, **summarize_turns([t for p, t in turns if p == k], start, end, t0)}
            for k, ((n, seconds), (start, end)) in enumerate(zip(phases, bounds))]


def summarize_turns(mine: list[TurnResult], start: float, end: float, t0: float) -> dict:
    """Turns ok/failed, tokens/s of those ending within [start, end] (seconds from t0), TTFT, cache kinds."""
    ok = [t for t in mine if t.ok]
    tokens = sum(t.completion_tokens for t in ok if start <= t.done - t0 <= end)
    return {"turns_ok": len(ok), "turns_failed": len(mine) - len(ok), "tokens_per_s": tokens / (end - start),
            "ttft_s": dist([t.ttft_s for t in ok]), "cache": dict(Counter(t.cache for t in ok)),
            "replicas_seen": sorted({t.replica for t in ok})}


def replica_changes(samples: list[dict]) -> list[dict]:
    """Replicas joining or leaving the /v1/cluster feed, by sample time."""
    out, before = [], None
    for s in samples:
        now = set(s["replicas"])
        if before is not None and now != before:
            out.append({"t_s": s["t_s"], "phase": s["phase"], "joined": sorted(now - before), "left": sorted(before - now), "live": len(now)})
        before = now
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
    if "handover" in result:  # the return phase starts at the dotted line
        for ax in (a, b, c):
            ax.axvline(result["return"]["start_s"], color="grey", linestyle=":")
        h = result["handover"]
        p99 += f"; return: {h['on_drained_replica']} from drained replicas, {h['cache']['migrated']} migrated"
    a.set_title(f"closed-loop ramp; TTFT p99 (s) by phase sessions: {p99}", fontsize=9)
    common.save_plot(name, fig, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--phases", nargs="+", required=True, help="SESSIONS:SECONDS per phase")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=24)
    ap.add_argument("--sample-s", type=float, default=2.0)
    ap.add_argument("--return-s", type=float, default=0.0, help="return phase: one more turn of every conversation, "
                    "the last phase's count at a time, none starting after this many seconds (0: none)")
    ap.add_argument("--name", default="autoscale_ramp")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    try:
        phases = parse_phases(a.phases)
    except ValueError as exc:
        ap.error(str(exc))
    result = asyncio.run(run_ramp(a.url, phases, a.max_tokens, a.prompt_words, a.sample_s, a.return_s))
    common.write_results(a.name, {"command": " ".join(sys.argv), **result}, a.out)
    plot(result, a.name, a.out)
    print(common.table(result["phases"], ["phase", "sessions", "turns_ok", "turns_failed", "tokens_per_s"]))
    print("audit:", result["audit"], "replica start:", result["replica_start"])
    print("replicas joined/left:", [(round(c["t_s"]), c["joined"], c["left"]) for c in result["replica_changes"]])
    if "handover" in result:
        print("return:", {k: result["return"][k] for k in ("turns_ok", "turns_failed", "cache")}, "handover:", result["handover"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
