"""Where an engine's time goes, step by step and turn by turn (EngineConfig.step_trace).

A served replica's ``first_token`` phase (deployments/turn_timing.py) lumps
together the engine's queue, the steps that prefill the turn and the trip back to
the replica. This trace splits the engine's part: one JSON line per step (what it
ran, which path, host time of schedule / run / postprocess) and one per turn at its
first token (how long it waited to be scheduled, how many steps its input took).
``bench/step_trace_report.py`` summarises a trace.

Lines are buffered and appended every ``FLUSH`` records, every ``FLUSH_S`` seconds
and at close, so tracing costs a ``json.dumps`` per step and a file append now and
then (a replica's engine child may be killed without closing).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from swiftinfer_core.engine.batch_runner import StepPath
from swiftinfer_core.engine.scheduler import ScheduledBatch
from swiftinfer_core.engine.session import Turn

FLUSH = 256
FLUSH_S = 2.0


class StepTrace:
    def __init__(self, path: str | Path):
        # One file per process: a replica's engine child and a bench's engine never share one.
        p = Path(path)
        self.path = p.with_name(f"{p.stem}.{os.getpid()}{p.suffix or '.jsonl'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lines: list[str] = []
        self._t0 = self._flushed = time.monotonic()
        self._step = 0
        self._scheduled: dict[int, tuple[int, float]] = {}  # id(turn) -> (first step, its start)

    def record(self, batch: ScheduledBatch, path: StepPath, t_start: float, t_run: float, t_post: float, t_end: float,
               waiting: int) -> None:
        """One step: started at ``t_start``, model + sampling from ``t_run`` to
        ``t_post``, postprocessing (detokenise, deliver) to ``t_end``."""
        decode = chunks = chunk_tokens = 0
        firsts: list[Turn] = []
        for s in batch.seqs:
            turn = s.turn
            if s.decode:
                decode += 1
                continue
            chunks += 1
            chunk_tokens += len(s.token_ids)
            self._scheduled.setdefault(id(turn), (self._step, t_start))
            if s.sample:
                firsts.append(turn)
        self._lines.append(json.dumps({
            "kind": "step", "i": self._step, "t": round(t_start - self._t0, 6), "path": path.value, "decode": decode,
            "chunks": chunks, "chunk_tokens": chunk_tokens, "waiting": waiting,
            "schedule_ms": round((t_run - t_start) * 1e3, 3), "run_ms": round((t_post - t_run) * 1e3, 3),
            "post_ms": round((t_end - t_post) * 1e3, 3), "ms": round((t_end - t_start) * 1e3, 3),
        }))
        for turn in firsts:
            first, t_first = self._scheduled.pop(id(turn))
            self._lines.append(json.dumps({
                "kind": "turn", "step": self._step, "warm": turn.cached_tokens > 0, "input_tokens": len(turn.to_feed),
                "queue_ms": round((t_first - turn.arrival) * 1e3, 3), "steps": self._step - first + 1,
                "first_token_ms": round((t_end - turn.arrival) * 1e3, 3),
            }))
        self._step += 1
        if len(self._lines) >= FLUSH or t_end - self._flushed > FLUSH_S:
            self.flush()

    def forget(self, turn: Turn) -> None:
        """An aborted turn never reaches its first token."""
        self._scheduled.pop(id(turn), None)

    def flush(self) -> None:
        self._flushed = time.monotonic()
        if self._lines:
            with self.path.open("a") as f:
                f.write("\n".join(self._lines) + "\n")
            self._lines.clear()
