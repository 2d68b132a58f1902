"""The faults bench/chaos.py applies, and the wait for the replicas between them.

Each fault takes the application under test and the sessions seen so far, and
returns what it hit (a replica id, an actor name). They act on a live local Ray
cluster: SIGKILL of a replica process, ray.kill of Serve's controller or of the
session directory (both restarted by Ray), a device fault armed in one replica's
engine through the session router, and a delete-and-redeploy of the app.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class ChaosApp:
    """The application under test: its Serve name, its build_app config, its directory's actor name."""

    name: str
    config: dict
    route_prefix: str = "/"

    @property
    def directory(self) -> str:
        from deployments.config import AppConfig

        return AppConfig.model_validate(self.config).directory_name

    def deploy(self) -> None:
        from ray import serve

        from deployments.app.builder import build_app

        serve.run(build_app(self.config), name=self.name, route_prefix=self.route_prefix)


def _directory_actor(app: ChaosApp):
    import ray

    from deployments.sessions.directory import NAMESPACE

    return ray.get_actor(app.directory, namespace=NAMESPACE)


def _busiest_replica(app: ChaosApp, sessions: list[str], wait_s: float = 30.0):
    """(replica id, its stats, the ``sessions`` it owns, how many of ``sessions`` are owned in
    all) of the replica that owns the most of ``sessions`` (the load's conversations with
    rounds left: one that has finished cannot be hit). Its stats (the pid) come from its
    reports: a top owner that has not reported in the last 10 s (a loaded 2-core box) is
    waited for, up to ``wait_s``, rather than picking the busiest reporter, which may own
    nothing (the fault would then hit no turn)."""
    import ray

    directory = _directory_actor(app)
    deadline = time.monotonic() + wait_s
    while True:
        owned: dict[str, list[str]] = {}
        for sid, d in zip(sessions, ray.get([directory.describe.remote(sid) for sid in sessions])):
            if d is not None and d.owner:
                owned.setdefault(d.owner, []).append(sid)
        stats = ray.get(directory.replica_stats.remote(10.0))
        top = max(map(len, owned.values()), default=0)
        live = [rid for rid in stats if len(owned.get(rid, [])) == top]
        if live or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not stats:
        raise RuntimeError(f"no replica of {app.name} reported in 10 s (owners {owned})")
    victim = live[0] if live else max(stats, key=lambda rid: len(owned.get(rid, [])))
    return victim, stats[victim], owned.get(victim, []), sum(map(len, owned.values()))


def replica_sigkill(app: ChaosApp, sessions: list[str]) -> str:
    victim, stats, mine, total = _busiest_replica(app, sessions)
    os.kill(stats.pid, signal.SIGKILL)
    return f"{victim} (owned {len(mine)} of {total} sessions with rounds left)"


def controller_kill(app: ChaosApp, sessions: list[str]) -> str:
    import ray

    ray.kill(ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve"), no_restart=False)
    return "SERVE_CONTROLLER_ACTOR"


def directory_kill(app: ChaosApp, sessions: list[str]) -> str:
    import ray

    ray.kill(_directory_actor(app), no_restart=False)
    return app.directory


def device_fault(app: ChaosApp, sessions: list[str]) -> str:
    """Arm the busiest replica: the call is routed by one of its sessions (the session
    router sends it to the owner), and a replica not named arms nothing."""
    from ray import serve

    victim, _, mine, total = _busiest_replica(app, sessions)
    if not mine:
        raise RuntimeError(f"no session of replica {victim} among {len(sessions)}")
    sid = mine[0]
    handle = serve.get_deployment_handle("LLMReplica", app.name).options(session_id=sid)
    # sticky: on a CPU the engine stops as a GPU one does after the illegal access (on a GPU it is anyway)
    armed = handle.inject_device_fault.remote(only=victim, sticky=True).result(timeout_s=60)
    if armed != victim:
        raise RuntimeError(f"the call for replica {victim} (session {sid}) reached {armed}")
    return f"{victim} (owned {len(mine)} of {total} sessions with rounds left)"


def app_restart(app: ChaosApp, sessions: list[str]) -> str:
    import ray
    from ray import serve

    serve.delete(app.name)  # replicas drain; sessions are handed back to the directory
    ray.kill(_directory_actor(app), no_restart=True)  # all in memory is gone: only the log remains
    app.deploy()  # a new directory reloads every session from the log
    return app.name


FAULTS: dict[str, Callable[[ChaosApp, list[str]], str]] = {  # (app, sessions seen so far) -> what was hit
    f.__name__: f for f in (replica_sigkill, controller_kill, directory_kill, device_fault, app_restart)
}


def replicas_running(app: ChaosApp, replicas: int) -> bool:
    """The app is RUNNING with exactly ``replicas`` LLM replicas, all RUNNING."""
    from ray import serve

    st = serve.status().applications.get(app.name)
    dep = st.deployments.get("LLMReplica") if st is not None else None
    return dep is not None and str(st.status).endswith("RUNNING") and dict(dep.replica_states) == {"RUNNING": replicas}


def settle(app: ChaosApp, replicas: int, limit_s: float) -> float | None:
    """Seconds waited until ``replicas_running``; None when ``limit_s`` ran out."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        try:
            if replicas_running(app, replicas):
                return round(time.perf_counter() - t0, 2)
        except Exception:  # the controller restarting: ask again
            pass
        time.sleep(0.5)
    return None
