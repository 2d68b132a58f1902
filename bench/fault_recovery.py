"""Time from a device fault to the next turn served, through the whole Serve stack.

Needs a running app whose LLM replicas have SWIFTINFER_FAULT_INJECTION=1 in
their environment (bench/gpu_capacity.sh sets it through the app's runtime_env).
Conversations take ``--rounds`` turns; then one replica's next engine step is
made to fault (a real kernel on an out-of-range cache slot:
swiftinfer_core/engine/faults.py), a turn is sent to trigger it, and every
conversation keeps sending its next turn (retrying 503s each ``--probe-s``)
until it is served. Reported: seconds from the fault to the first turn served
again and to the last conversation served; turns failed; whether each
conversation continued with all its committed rounds (rounds in the log =
rounds acknowledged) and was marked recovered.

    python bench/fault_recovery.py --url http://127.0.0.1:8000 --sessions 8 [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


async def turn(client: httpx.AsyncClient, model: str, sid: str, text: str, max_tokens: int) -> httpx.Response:
    body = {"model": model, "session_id": sid, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}
    return await client.post("/v1/chat/completions", json=body)


async def main_async(a) -> dict:
    import ray
    from ray import serve

    ray.init(address="auto", log_to_driver=False)
    handle = serve.get_deployment_handle("LLMReplica", a.app)
    sids = [f"fault-{i}" for i in range(a.sessions)]
    async with httpx.AsyncClient(base_url=a.url, timeout=a.timeout_s) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        for r in range(a.rounds):
            rs = await asyncio.gather(*(turn(client, model, sid, f"round {r} of {sid}: tell me more", a.max_tokens) for sid in sids))
            bad = [x.status_code for x in rs if x.status_code != 200]
            if bad:
                raise SystemExit(f"warm-up round {r}: statuses {bad}")
        replica = await handle.inject_device_fault.remote()
        t_fault = time.monotonic()
        failed, served, statuses = 0, {}, {}

        async def until_served(sid: str):
            nonlocal failed
            while time.monotonic() - t_fault < a.give_up_s:
                r = await turn(client, model, sid, f"after the fault, {sid}: go on", a.max_tokens)
                if r.status_code == 200:
                    served[sid] = time.monotonic() - t_fault
                    return
                failed += 1
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                await asyncio.sleep(a.probe_s)

        await asyncio.gather(*(until_served(sid) for sid in sids))
        infos = [(await client.get(f"/v1/sessions/{sid}")).json() for sid in served]
    return {
        "faulted_replica": replica, "sessions": a.sessions, "rounds_before": a.rounds,
        "first_served_s": min(served.values(), default=None), "all_served_s": max(served.values(), default=None),
        "served": len(served), "failed_attempts": failed, "statuses": statuses,
        "rounds_after": sorted({i.get("rounds") for i in infos}), "recovered": sum(bool(i.get("recovered")) for i in infos),
        "replicas_after": sorted({i.get("replica") for i in infos}),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--app", default="swiftinfer")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--probe-s", type=float, default=0.5)
    ap.add_argument("--give-up-s", type=float, default=300.0)
    ap.add_argument("--timeout-s", type=float, default=120.0)
    ap.add_argument("--name", default="fault_recovery")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    res = asyncio.run(main_async(a))
    common.write_results(a.name, res, a.out)
    print(res)
    ok = res["served"] == a.sessions and res["rounds_after"] == [a.rounds + 1]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
