"""Turns that reach the session router while the session directory restarts (issue 17).

The router asks the directory (``place``) on a routing miss. A call that meets the
directory restarting fails with ``ActorUnavailableError``; before the fix that error
escaped ``choose_replicas``, Ray Serve's routing task died ("Unexpected error in
_fulfill_pending_requests") and the request it was routing was never assigned: the
HTTP turn hung until the client gave up (60 s in the chaos test). Here every turn is
a routing miss (``owner_cache_s=0``) and the turns are sent while the directory
restarts: each must be served (an attempt may get a quick 503 and be retried, as
clients do), none may hang. Real Ray, real Serve, real model, real HTTP.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import ray
from ray import serve
from serve_helpers import MODEL_ID, app_config, deploy

from deployments.sessions.directory import NAMESPACE

APP, DIRECTORY = "dirkill", "dirkill-sessions"
SESSIONS = 6
ATTEMPT_S = 25.0  # one attempt; a served turn here takes ~1-3 s, the directory restart a few s
TURN_S = 60.0  # all attempts of one turn (quick 503s while the directory restarts, then served)


def _turn(base: str, sid: str, r: int) -> tuple[int, float, list[int]]:
    """One turn with the client's retry rule (5xx again, same Idempotency-Key); a read
    that waits ATTEMPT_S raises: that is the hang. Returns (status, seconds, statuses)."""
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": f"{sid} round {r}: name a bird."}],
            "max_tokens": 4, "temperature": 0, "session_id": sid}
    t0, statuses = time.monotonic(), []
    with httpx.Client(base_url=base, timeout=httpx.Timeout(ATTEMPT_S, connect=10.0)) as client:
        while True:
            resp = client.post(f"/{APP}/v1/chat/completions", json=body, headers={"Idempotency-Key": f"{sid}-{r}"})
            statuses.append(resp.status_code)
            if resp.status_code < 500 or time.monotonic() - t0 > TURN_S:
                return resp.status_code, time.monotonic() - t0, statuses
            time.sleep(0.5)


def _round(base: str, sids: list[str], r: int) -> dict[str, tuple[int, float, list[int]]]:
    with ThreadPoolExecutor(max_workers=len(sids)) as pool:
        futures = {sid: pool.submit(_turn, base, sid, r) for sid in sids}
        return {sid: f.result() for sid, f in futures.items()}


def test_turns_routed_while_the_directory_restarts_do_not_hang(cluster):
    deploy(APP, app_config(DIRECTORY, scaling={"min_replicas": 1, "max_replicas": 1}, owner_cache_s=0,
                           stats_report_period_s=0.5))
    sids = [f"dk-{i}" for i in range(SESSIONS)]
    try:
        first = _round(cluster, sids, 0)
        assert all(s == 200 for s, _, _ in first.values()), first
        directory = ray.get_actor(DIRECTORY, namespace=NAMESPACE)
        old_pid = ray.get(directory.log_stats.remote())["pid"]
        ray.kill(directory, no_restart=False)  # Ray restarts it; it reloads the log
        time.sleep(0.3)  # the kill has landed: the routers' next place() calls meet the restart
        second = _round(cluster, sids, 1)
        assert all(s == 200 for s, _, _ in second.values()), second
        assert all(t < TURN_S for _, t, _ in second.values()), second
        assert ray.get(directory.log_stats.remote())["pid"] != old_pid  # it did restart
        with httpx.Client(base_url=cluster, timeout=30) as client:
            for sid in sids:  # both turns are in the log, once each
                turns = client.get(f"/{APP}/v1/sessions/{sid}/turns").json()
                assert [t["seq"] for t in turns["data"]] == [1, 2], (sid, turns)
    finally:
        serve.delete(APP)
