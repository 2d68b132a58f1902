"""What the session log costs the token path: decode throughput with and without it.

The real engine (Engine: its own step thread, real model) serves ``--sessions``
conversations at once for ``--rounds`` turns of ``--tokens`` generated tokens
(ignore_eos). After every turn the replica's commit work runs exactly as in
deployments/replica/replica.py + directory.py: take the session record the engine put
on the final chunk, then ``await BatchWriter.submit(CommitOp)`` on the real log, before the
next turn of that session starts. Modes: ``none`` (no log: the baseline),
``sqlite`` (WAL, synchronous=FULL: one fsync per batch) and ``redis`` (a real
redis-server, MULTI/EXEC per batch). Trials interleave the modes (in a fresh
random order each trial) so drift on a shared machine hits them alike.

Reported per mode: decode tokens/s (median and spread over trials), the
overhead against ``none`` (also paired within each trial), the share of each
conversation's time spent waiting for its commit, and the log's CPU time accounted directly (thread
CPU time inside ``SessionLog.write`` and inside the record export, lock waits
excluded) as a share of the run's wall time, i.e. the share of one core the
log took from everything else. That share is steadier than the A/B difference
on a noisy shared box.

    python bench/session_log_overhead.py --sessions 8 --rounds 4 --tokens 32 --trials 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (repo root on sys.path)
import torch

from deployments.config import LogBackend, SessionLogConfig
from deployments.sessions.log_writer import BatchWriter
from deployments.sessions.log_backends import open_log
from deployments.sessions.session_log import CommitOp, LastTurn, SessionState, TurnEntry
from swiftinfer_core.config import EngineConfig, SamplingParams
from swiftinfer_core.engine.engine import Engine


class TimedLog:
    """A SessionLog whose write() adds its thread CPU time to ``cpu[0]``."""

    def __init__(self, log, cpu: list[float]):
        self._log, self._cpu = log, cpu

    def write(self, ops):
        t0 = time.thread_time()
        try:
            return self._log.write(ops)
        finally:
            self._cpu[0] += time.thread_time() - t0


async def run(engine: Engine, writer: BatchWriter | None, args, tag: str, writer_cpu: list[float]) -> dict:
    params = SamplingParams(max_tokens=args.tokens, ignore_eos=True)
    export_s = 0.0


    turn_s = commit_s = 0.0

    async def conversation(i: int) -> int:
        nonlocal export_s, turn_s, commit_s
        sid, generated = f"{tag}-{i}", 0
        for r in range(args.rounds):
            text = []
            t_turn = time.perf_counter()
            async for chunk in engine.chat(sid, [{"role": "user", "content": f"Round {r}: tell me about rivers, {i}."}], params):
                text.append(chunk.text)
                last = chunk
            generated += last.usage.completion_tokens
            t_commit = time.perf_counter()
            if writer is not None:  # as the replica: the engine's final chunk carries the record
                t0 = time.thread_time()
                record = last.record.to_dict()
                export_s += time.thread_time() - t0
                now = time.time()
                entry = TurnEntry(sid, r + 1, f"{sid}-{r}", "bench", last.finish_reason, last.usage.prompt_tokens, last.usage.completion_tokens, now)
                state = SessionState(sid, r + 1, record, "bench", None, LastTurn(entry, "".join(text), last.usage.to_dict()), now, now)
                await writer.submit(CommitOp(state, entry))
            commit_s += time.perf_counter() - t_commit
            turn_s += time.perf_counter() - t_turn
        return generated

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(conversation(i) for i in range(args.sessions))))
    wall = time.perf_counter() - t0
    for sid in engine.session_ids():
        engine.close_session(sid)
    log_s = (writer_cpu[0] if writer else 0.0) + export_s
    # log_share: share of one core the log's CPU work took; commit_share: share of each
    # conversation's time spent waiting for its commit (a closed-loop client's next turn waits for it)
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "log_cpu_s": log_s, "log_share": log_s / wall,
            "commit_wait_s": commit_s, "commit_share": commit_s / turn_s}


def start_redis() -> tuple[str | None, subprocess.Popen | None]:
    if shutil.which("redis-server") is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                             "--appendfsync", "everysec", "--dir", tempfile.mkdtemp()], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return f"redis://127.0.0.1:{port}/0", proc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--window", type=int, default=252)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--redis-url", default=None, help="default: start a private redis-server if installed")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine(EngineConfig(device="cpu", window=args.window, max_sessions=args.sessions))
    redis_url, redis_proc = (args.redis_url, None) if args.redis_url else start_redis()
    tmp = Path(tempfile.mkdtemp())
    logs = {"none": None, "sqlite": SessionLogConfig(backend=LogBackend.SQLITE, path=str(tmp / "bench.sqlite3"))}
    if redis_url:
        logs["redis"] = SessionLogConfig(backend=LogBackend.REDIS, redis_url=redis_url)
    runs: dict[str, list[dict]] = {m: [] for m in logs}
    try:
        asyncio.run(run(engine, None, argparse.Namespace(**{**vars(args), "rounds": 1}), "warmup", [0.0]))
        for trial in range(args.trials):
            for mode in random.Random(trial).sample(sorted(logs), len(logs)):
                cfg = logs[mode]
                cpu = [0.0]
                writer = BatchWriter(TimedLog(open_log(cfg, f"bench-{trial}"), cpu), cfg.max_batch) if cfg else None
                res = asyncio.run(run(engine, writer, args, f"{mode}{trial}", cpu))
                if writer:
                    res["writer"] = writer.stats.to_dict()
                runs[mode].append(res)
                print(f"trial {trial} {mode:6s} {res['tokens_per_s']:.2f} tok/s  log CPU {100 * res['log_share']:.3f}% of one core", flush=True)
    finally:
        engine.close()
        if redis_proc:
            redis_proc.terminate()
    base = statistics.median(r["tokens_per_s"] for r in runs["none"])
    summary = {}
    for mode, rs in runs.items():
        tps = [r["tokens_per_s"] for r in rs]
        paired = [1 - r["tokens_per_s"] / n["tokens_per_s"] for r, n in zip(rs, runs["none"])]  # same trial
        summary[mode] = {
            "tokens_per_s_median": statistics.median(tps), "tokens_per_s_min": min(tps), "tokens_per_s_max": max(tps),
            "overhead_vs_none_pct": 100 * (1 - statistics.median(tps) / base),
            "paired_overhead_pct_mean": 100 * statistics.mean(paired),
            "paired_overhead_pct_stdev": 100 * statistics.stdev(paired) if len(paired) > 1 else None,
            "log_cpu_share_pct": 100 * statistics.median(r["log_share"] for r in rs),
            "commit_wait_share_pct": 100 * statistics.median(r["commit_share"] for r in rs),
            "mean_batch": statistics.mean(r["writer"]["mean_batch"] for r in rs) if mode != "none" else None,
        }
    print(common.table([{"mode": m, **s} for m, s in summary.items()],
                       ["mode", "tokens_per_s_median", "overhead_vs_none_pct", "paired_overhead_pct_mean", "paired_overhead_pct_stdev",
                        "log_cpu_share_pct", "commit_wait_share_pct", "mean_batch"]))
    data = {"note": "CPU (2 shared cores, SmolLM2-135M, 1 torch thread): a CPU decode step is ~100x slower than on a GPU, so the log's share here is far below what a GPU would see; see docs/reliability.md",
            "config": vars(args), "summary": summary, "runs": runs}
    common.write_results("session_log_overhead", data, args.out)
    plot(summary, runs, args.out)


def plot(summary: dict, runs: dict, out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    modes = list(summary)
    for i, m in enumerate(modes):
        a.scatter([i] * len(runs[m]), [r["tokens_per_s"] for r in runs[m]], alpha=0.6)
    a.bar(range(len(modes)), [summary[m]["tokens_per_s_median"] for m in modes], alpha=0.3)
    a.set_xticks(range(len(modes)), modes)
    a.set_ylabel("decode tokens/s (median, trials as dots)")
    x = range(len(modes))
    b.bar([i - 0.2 for i in x], [summary[m]["log_cpu_share_pct"] for m in modes], width=0.4, label="log CPU (% of one core)")
    b.bar([i + 0.2 for i in x], [summary[m]["commit_wait_share_pct"] for m in modes], width=0.4, label="commit wait (% of turn time)")
    b.set_xticks(list(x), modes)
    b.axhline(2.0, color="r", ls="--", label="2% budget")
    b.set_ylabel("%")
    b.legend()
    fig.suptitle("Session log cost on the token path (CPU)")
    common.save_plot("session_log_overhead", fig, out)


if __name__ == "__main__":
    main()
