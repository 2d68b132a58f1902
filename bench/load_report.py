"""Load generator results: latency percentiles, the lost/duplicated-turn audit
against the server's session log, and the JSON + PNG writers."""

from __future__ import annotations

import asyncio
import bisect
import json
from collections import Counter
from pathlib import Path

import httpx

from bench.load_client import TurnResult


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def dist(values: list[float]) -> dict:
    return {"p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99),
            "mean": sum(values) / len(values) if values else None, "n": len(values)}


async def _log_keys(client: httpx.AsyncClient, sid: str) -> list[str | None] | None:
    keys: list[str | None] = []
    after = 0
    while True:
        resp = await client.get(f"/v1/sessions/{sid}/turns", params={"after": after, "limit": 1000})
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        page = resp.json()["data"]
        keys += [t["turn_key"] for t in page]
        if len(page) < 1000:
            return keys
        after = page[-1]["seq"]


async def audit(client: httpx.AsyncClient, turns: list[TurnResult], cleanup: bool) -> dict:
    """Compare what the client got acknowledged with the session log.

    - lost: an acknowledged turn missing from the log (or out of order);
    - duplicated: a turn key logged twice, or a logged turn the client never sent;
    - unacknowledged_committed: logged, but the client gave up before an ack (not an error
      of the server's guarantees: the turn happened exactly once);
    - rounds_mismatch: GET /v1/sessions/{id} disagrees with the log's turn count.
    """
    by_session: dict[str, list[TurnResult]] = {}
    for t in turns:
        by_session.setdefault(t.session_id, []).append(t)
    out = Counter()
    gate = asyncio.Semaphore(16)

    async def check(sid: str, ts: list[TurnResult]) -> None:
        async with gate:
            await _check_session(client, sid, ts, cleanup, out)

    await asyncio.gather(*(check(sid, ts) for sid, ts in by_session.items()))
    out["sessions_checked"] = len(by_session)
    return {k: out[k] for k in ("sessions_checked", "log_turns", "lost", "duplicated", "out_of_order",
                                "unacknowledged_committed", "rounds_mismatch", "sessions_missing", "sessions_recovered")}


async def _check_session(client: httpx.AsyncClient, sid: str, ts: list[TurnResult], cleanup: bool, out: Counter) -> None:
    ts.sort(key=lambda t: t.round)
    acked = [t.key for t in ts if t.ok]
    sent = {t.key for t in ts}
    keys = await _log_keys(client, sid)
    if keys is None:
        out["lost"] += len(acked)
        out["sessions_missing"] += bool(acked)
        return
    counts = Counter(keys)
    out["duplicated"] += sum(c - 1 for c in counts.values()) + sum(1 for k in counts if k not in sent)
    out["lost"] += sum(1 for k in acked if k not in counts)
    out["out_of_order"] += [k for k in keys if k in set(acked)] != acked
    out["unacknowledged_committed"] += sum(1 for k in counts if k in sent and k not in acked)
    info = (await client.get(f"/v1/sessions/{sid}")).json()
    out["rounds_mismatch"] += info.get("rounds") != len(keys) or info.get("seq") != len(keys)
    out["sessions_recovered"] += bool(info.get("recovered")) or info.get("moves", 0) > 0
    out["log_turns"] += len(keys)
    if cleanup:
        await client.delete(f"/v1/sessions/{sid}")


def timeline(turns: list[TurnResult], t_start: float, t_end: float, step_s: float = 1.0) -> dict:
    """Open conversations (first turn due .. last reply done) and turns in flight
    (request sent .. reply done), sampled every ``step_s`` from the client's records."""
    spans: dict[str, tuple[float, float]] = {}
    for t in turns:
        end = t.done or t_end
        a, b = spans.get(t.session_id, (t.scheduled, end))
        spans[t.session_id] = (min(a, t.scheduled), max(b, end))
    grid = [t_start + i * step_s for i in range(int((t_end - t_start) / step_s) + 1)]
    return {"t_s": [round(x - t_start, 3) for x in grid],
            "open_sessions": _active(list(spans.values()), grid),
            "turns_in_flight": _active([(t.sent or t.scheduled, t.done or t_end) for t in turns], grid)}


def _active(intervals: list[tuple[float, float]], grid: list[float]) -> list[int]:
    starts, ends = sorted(a for a, _ in intervals), sorted(b for _, b in intervals)
    return [bisect.bisect_right(starts, x) - bisect.bisect_right(ends, x) for x in grid]


def _series(values: list[int]) -> dict:
    return {"max": max(values, default=0), "mean": sum(values) / len(values) if values else 0.0,
            "p50": pct(values, 50), "share_ge_64": sum(v >= 64 for v in values) / len(values) if values else 0.0}


def summarize(turns: list[TurnResult], t_start: float, t_end: float) -> dict:
    ok = [t for t in turns if t.ok]
    tokens = sum(t.completion_tokens for t in ok)
    errors, caches = Counter(), Counter(t.cache for t in ok)
    for t in turns:
        errors.update(t.errors)
    decode = [(t.completion_tokens - 1) / (t.done - t.first_token) for t in ok if t.completion_tokens > 1 and t.done > t.first_token]
    return {
        "turns_ok": len(ok), "turns_failed": len(turns) - len(ok),
        "sessions": len({t.session_id for t in turns}),
        "wall_s": t_end - t_start,
        "tokens_per_s": tokens / (t_end - t_start) if t_end > t_start else 0.0,
        "completion_tokens": tokens,
        "ttft_s": dist([t.ttft_s for t in ok]),
        "ttft_from_due_s": dist([t.ttft_from_due_s for t in ok]),
        "ttft_new_s": dist([t.ttft_s for t in ok if t.round == 0]),  # a conversation's first turn
        "ttft_warm_s": dist([t.ttft_s for t in ok if t.round > 0]),  # later turns (cache held or rebuilt)
        "itl_s": dist([g for t in ok for g in t.gaps]),  # between SSE chunks (several tokens each when paced)
        # per token (load.py --token-counts): a chunk of k tokens after a gap g counts k gaps of g / k
        "itl_token_s": dist([g for t in ok for g in t.token_gaps]),
        # per token: a turn's first-to-last-token time over its tokens after the first
        "tpot_s": dist([(t.done - t.first_token) / (t.completion_tokens - 1) for t in ok if t.completion_tokens > 1 and t.done > t.first_token]),
        "turn_decode_tokens_per_s": dist(decode),
        "attempt_errors": dict(errors),
        "final_errors": dict(Counter(t.final_error for t in turns if not t.ok)),
        "retries": sum(t.attempts for t in turns) - len(turns),
        "cache": dict(caches),
        "concurrency": {k: _series(v) for k, v in timeline(turns, t_start, t_end).items() if k != "t_s"},
    }


def write(result: dict, turns: list[TurnResult], out_dir: Path, name: str, t_start: float) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, png = out_dir / f"{name}.json", out_dir / f"{name}.png"
    js.write_text(json.dumps(result, indent=2))
    plot(result, turns, png, t_start)
    return js, png


def plot(result: dict, turns: list[TurnResult], path: Path, t_start: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [t for t in turns if t.ok]
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
    for ax, (label, values) in zip(axes[:2], (("TTFT (s)", [t.ttft_s for t in ok]), ("inter-token latency (s)", [g for t in ok for g in t.gaps]))):
        if values:
            s = sorted(values)
            ax.plot(s, [i / len(s) for i in range(1, len(s) + 1)])
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
    # tokens/s over time: each turn's tokens spread over its streaming interval
    wall = max(1, int(result["summary"]["wall_s"]) + 1)
    rate = [0.0] * wall
    for t in ok:
        a, b = t.first_token - t_start, max(t.done - t_start, t.first_token - t_start + 1e-3)
        for sec in range(max(0, int(a)), min(wall, int(b) + 1)):
            overlap = min(b, sec + 1) - max(a, sec)
            if overlap > 0:
                rate[sec] += t.completion_tokens * overlap / (b - a)
    axes[2].plot(range(wall), rate, label="tokens/s")
    failed = [t.done - t_start for t in turns for _ in range(sum(t.errors.values()))]
    if failed:
        axes[2].plot(failed, [0] * len(failed), "rx", label="failed attempts")
    axes[2].set_xlabel("time (s)")
    axes[2].legend()
    axes[2].grid(alpha=0.3)
    line = timeline(turns, t_start, t_start + result["summary"]["wall_s"])
    axes[3].plot(line["t_s"], line["open_sessions"], label="open conversations (client)")
    axes[3].plot(line["t_s"], line["turns_in_flight"], label="turns in flight (client)")
    samples = result.get("server_samples") or []
    if samples:
        axes[3].plot([r["t_s"] for r in samples], [r.get("swiftinfer_running_requests", 0) for r in samples], ".",
                     label="turns running in engines (server)")
    axes[3].set_xlabel("time (s)")
    axes[3].legend(fontsize=8)
    axes[3].grid(alpha=0.3)
    s = result["summary"]
    fig.suptitle(f"{result['meta']['server'].get('id', '?')}: {s['sessions']} sessions, {s['turns_ok']} turns, "
                 f"{s['tokens_per_s']:.1f} tok/s, lost {result['audit'].get('lost', '-')}, duplicated {result['audit'].get('duplicated', '-')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_from_json(js: Path) -> Path:
    """A PNG from a report alone (no per-turn records): latency percentiles and the
    server's sampled gauges. For runs whose in-process PNG was not written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(js.read_text())
    s, samples = result["summary"], result.get("server_samples") or []
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    keys = ("p50", "p90", "p99")
    for i, (label, d) in enumerate((("TTFT", s["ttft_s"]), ("inter-chunk", s["itl_s"]))):
        axes[0].bar([x + 0.4 * i for x in range(3)], [d[k] for k in keys], width=0.4, label=label)
    axes[0].set_xticks([x + 0.2 for x in range(3)], keys)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds")
    axes[0].legend()
    for gauge, label in (("swiftinfer_resident_sessions", "sessions holding a KV slot"),
                         ("swiftinfer_running_requests", "turns running in the engine"),
                         ("swiftinfer_ingress_in_flight", "requests in flight (one ingress)")):
        axes[1].plot([r["t_s"] for r in samples], [r.get(gauge, 0) for r in samples], label=label)
    axes[1].set_xlabel("time (s)")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    c = s.get("concurrency", {}).get("open_sessions", {})
    fig.suptitle(f"{result['meta']['server'].get('id', '?')}: {s['sessions']} sessions, {s['turns_ok']} turns ok, "
                 f"{s['turns_failed']} failed, open conversations max {c.get('max', '?')}, lost {result['audit'].get('lost', '-')}")
    fig.tight_layout()
    png = js.with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":  # python -m bench.load_report REPORT.json ...
    import sys

    for arg in sys.argv[1:]:
        print(plot_from_json(Path(arg)))
