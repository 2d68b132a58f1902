"""Where a turn's time goes on its replica, phase by phase.

A turn passes: ``admit`` (KV capacity check against the engine), ``lease``
(the directory's ``begin_turn``), ``sync`` (local copy made equal to the
committed record: warm, migrated or rebuilt), ``first_token`` (engine queue,
prefill and the first decode) and, after the last token, ``commit`` (the
session log write). The replica keeps the last ``keep`` durations of each and
reports their p50/p99 with its stats, so /metrics shows which phase a slow
time-to-first-token comes from. Each ingress keeps the same kind of record of
its own view (``IngressPhase``: prepare, route, replica, return), which splits
the time around the replica's phases.
"""

from __future__ import annotations

import time
from enum import Enum

from deployments.messages import TurnPhase
from swiftinfer_core.recent_times import RecentTimes


class TurnTimer(RecentTimes):
    """The last ``keep`` durations of each phase of ``phases`` (an Enum; a turn's by default)."""

    def __init__(self, keep: int = 2048, phases: type[Enum] = TurnPhase):
        super().__init__(phases, keep)


class Stopwatch:
    """Laps of one turn: ``lap(phase)`` records the time since the previous lap."""

    def __init__(self, timer: TurnTimer):
        self._timer, self._last = timer, time.monotonic()

    def lap(self, phase: TurnPhase) -> None:
        now = time.monotonic()
        self._timer.record(phase, now - self._last)
        self._last = now
