"""The browser playground and the cluster view, served by the ingress.

Routes (added to the ingress's FastAPI app by ``Playground.add_routes``):

- ``GET /``, ``/cluster``, ``/plots``: the one page (``playground/index.html``);
  the path picks the tab it opens on.
- ``GET /ui/<file>``: its scripts and style, from the ``FILES`` allow-list, read
  once at start (no build step, nothing fetched from outside: the page's CSP
  says ``'self'`` only).
- ``GET /ui/config.json``: whether the service needs API keys (so the page can
  show its key field), the model id and the cache shape (sinks, window). Open,
  like the files: a browser must load the page before it can ask anyone for a key.
- ``GET /ui/plots.json`` and ``/ui/plots/<name>``: the committed perplexity
  plots of ``bench/results`` (``ppl_*.png``, found at start) with captions from
  their eval JSON.
- ``GET /v1/cluster``: the cluster view's one JSON feed (under ``/v1``, so it
  needs a key when the service has keys; a tenant sees only its own
  conversations' ids). Replicas with their KV slots, use and owned
  conversations, tokens/s derived from each replica's last two
  ``tokens_generated`` reports (by the directory), and recent events: the directory's (moves, replicas joining,
  draining, lost) and the LLM deployment's Serve status changes (autoscaling)
  this ingress replica observed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from deployments.http.auth import tenant_of
from deployments.config import AppConfig
from deployments.messages import ReplicaStats
from deployments.sessions.tenants import scoped

log = logging.getLogger("ray.serve")

STATIC_DIR = Path(__file__).parent / "playground"
FILES = {
    "main.js": "text/javascript", "api.js": "text/javascript", "chat.js": "text/javascript",
    "cachebar.js": "text/javascript", "cluster.js": "text/javascript", "plots.js": "text/javascript",
    "dom.js": "text/javascript",
    "style.css": "text/css",
}
PAGES = {"/": "chat", "/cluster": "cluster", "/plots": "plots"}
PLOTS_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"
PLOT_GLOB = "ppl_*.png"
# The page may talk to this service only: a script or style from elsewhere is refused by the browser itself.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATUS_CACHE_S = 2.0  # Serve's status is a controller call: one per this period at most
MAX_EVENTS = 100


def _plot_caption(json_path: Path) -> str:
    """One line from an eval-ppl JSON: what was measured and each mode's perplexity."""
    try:
        d = json.loads(json_path.read_text())
        modes = ", ".join(f"{m} {v['ppl']:.2f}" for m, v in d.get("modes", {}).items() if isinstance(v, dict) and "ppl" in v)
        return (f"{d.get('model', '?')} on {d.get('tokens', '?')} tokens of {d.get('text', '?')}, sinks {d.get('sinks')}, "
                f"window {d.get('window')}, {d.get('device', '?')}. Perplexity: {modes}")
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # a missing or odd JSON only costs the caption
        return f"(no caption: {type(exc).__name__})"


def find_plots(directory: Path = PLOTS_DIR) -> dict[str, dict]:
    """name -> {"path", "caption"} of the perplexity plots present (the allow-list)."""
    if not directory.is_dir():
        return {}
    return {p.name: {"path": p, "caption": _plot_caption(p.with_suffix(".json"))} for p in sorted(directory.glob(PLOT_GLOB))}


class Playground:
    def __init__(self, cfg: AppConfig, directory) -> None:
        self._cfg = cfg
        self._directory = directory
        self._index = (STATIC_DIR / "index.html").read_bytes()
        self._files = {name: (STATIC_DIR / name).read_bytes() for name in FILES}
        self._plots = find_plots()
        self._events: deque[dict] = deque(maxlen=MAX_EVENTS)  # deployment status changes seen here
        self._status: tuple[float, dict | None] = (0.0, None)
        self._last_status_key: str | None = None

    def add_routes(self, app: FastAPI) -> None:
        for path in PAGES:
            app.add_api_route(path, self.page, methods=["GET"], include_in_schema=False)
        app.add_api_route("/ui/config.json", self.config, methods=["GET"], include_in_schema=False)
        app.add_api_route("/ui/plots.json", self.plot_list, methods=["GET"], include_in_schema=False)
        app.add_api_route("/ui/plots/{name}", self.plot, methods=["GET"], include_in_schema=False)
        app.add_api_route("/ui/{name}", self.asset, methods=["GET"], include_in_schema=False)
        app.add_api_route("/v1/cluster", self.cluster, methods=["GET"])

    # ---- static ------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        # no-cache: after an upgrade the browser revalidates instead of running old scripts
        headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        return Response(self._index, media_type="text/html; charset=utf-8", headers=headers)

    async def asset(self, name: str) -> Response:
        if name not in self._files:
            return JSONResponse({"error": {"message": f"no file {name!r}", "type": "invalid_request_error", "param": None, "code": "not_found"}}, 404)
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        return Response(self._files[name], media_type=f"{FILES[name]}; charset=utf-8", headers=headers)

    async def config(self) -> Response:
        eng = self._cfg.engine
        return JSONResponse({"keys_required": self._cfg.auth.keyed, "model_id": self._cfg.model_id,
                             "sink_tokens": eng.sink_tokens, "window": eng.window})

    async def plot_list(self) -> Response:
        return JSONResponse({"plots": [{"name": n, "url": f"ui/plots/{n}", "caption": p["caption"]} for n, p in self._plots.items()]})

    async def plot(self, name: str) -> Response:
        if name not in self._plots:  # only the allow-list: no path of the caller's choosing is ever read
            return JSONResponse({"error": {"message": f"no plot {name!r}", "type": "invalid_request_error", "param": None, "code": "not_found"}}, 404)
        data = await asyncio.to_thread(self._plots[name]["path"].read_bytes)
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})

    # ---- cluster view ------------------------------------------------------------------
    async def cluster(self, request: Request) -> Response:
        scope = scoped(tenant_of(request), "")
        max_age = max(10.0, 3 * self._cfg.stats_report_period_s + 1.0)  # as readiness counts a replica live
        view = await self._directory.cluster.remote(max_age, scope)
        replicas = []
        for rid, r in sorted(view["replicas"].items()):
            s: ReplicaStats = r["stats"]
            replicas.append({
                "id": rid, "reported_s_ago": round(view["now"] - r["reported_at"], 1),
                "slots": s.capacity, "free_slots": s.free_slots, "kv_use": s.kv_use,
                "resident": s.resident, "sessions_in_memory": s.sessions, "running": s.running,
                "waiting": s.waiting, "draining": s.draining, "tokens_generated": s.tokens_generated,
                "tokens_per_s": r["tokens_per_s"],
                "turns": {**{c.value: n for c, n in s.turns.items()}, "not_committed": s.turns_not_committed},
                "conversations_owned": r["owned"],
                "conversations": [{"id": c["id"][len(scope):], "turns": c["seq"], "moves": c["moves"], "busy": c["busy"],
                                   "idle_s": round(view["now"] - c["updated"], 1)} for c in r["sessions"]],
            })
        deployment = await self._deployment_status()
        events = [_unscope_event(e, scope) for e in view["events"]] + list(self._events)
        events.sort(key=lambda e: e["t"])
        eng = self._cfg.engine
        return JSONResponse({
            "object": "cluster", "time": view["now"], "replicas": replicas, "deployment": deployment,
            "events": events[-MAX_EVENTS:], "engine": {"sink_tokens": eng.sink_tokens, "window": eng.window},
            "scaling": {"min_replicas": self._cfg.scaling.min_replicas, "max_replicas": self._cfg.scaling.max_replicas},
        })

    async def _deployment_status(self) -> dict | None:
        """The LLM deployment's Serve status (its autoscaling decisions show here as
        UPSCALING/DOWNSCALING and the replica counts); None outside a Serve replica."""
        at, status = self._status
        if time.monotonic() - at < STATUS_CACHE_S:
            return status
        try:
            status = await asyncio.to_thread(_serve_status)
        except Exception as exc:  # the view works without it; the controller may be restarting
            log.debug("serve status unavailable: %s", exc)
            status = None
        self._status = (time.monotonic(), status)
        if status is not None:
            key = json.dumps([status["status"], status["replica_states"]], sort_keys=True)
            if key != self._last_status_key:
                if self._last_status_key is not None:  # the first reading is the start, not a change
                    self._events.append({"t": time.time(), "kind": "deployment", "status": status["status"],
                                         "trigger": status["trigger"], "replica_states": status["replica_states"]})
                self._last_status_key = key
        return status


def _unscope_event(event: dict, scope: str) -> dict:
    if "session" in event:
        event = {**event, "session": event["session"][len(scope):]}
    return event


def _serve_status() -> dict | None:
    from ray import serve

    app = serve.get_replica_context().app_name
    dep = serve.status().applications[app].deployments.get("LLMReplica")
    if dep is None:
        return None
    return {"status": str(dep.status.value), "trigger": str(dep.status_trigger.value),
            "replica_states": {str(k.value if hasattr(k, "value") else k): v for k, v in dep.replica_states.items()},
            "message": dep.message}
