"""The last durations of each part of something timed, and their p50/p99.

One instance per timed thing, its parts an Enum: a replica's turn phases
(deployments/turn_timing.py), an ingress's hops, the hand-off legs between a
replica and its engine child (engine/handoff.py). ``record`` may run on any
thread: a bounded deque's append is atomic, and ``summary`` copies each deque
in one C call before sorting it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from enum import Enum


def p50_p99(samples: Iterable[float]) -> tuple[float, float]:
    """(p50, p99) of a non-empty collection of numbers (nearest rank)."""
    s = sorted(samples)
    return s[(len(s) - 1) // 2], s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


class RecentTimes:
    """The last ``keep`` durations (seconds) of each member of ``parts``."""

    def __init__(self, parts: type[Enum], keep: int = 2048):
        self._samples = {p: deque(maxlen=keep) for p in parts}

    def record(self, part: Enum, seconds: float) -> None:
        self._samples[part].append(seconds)

    def since(self, part: Enum, start: float) -> None:
        """Record the time from ``start`` (a ``time.monotonic()`` reading) to now."""
        self._samples[part].append(time.monotonic() - start)

    def summary(self) -> dict[Enum, tuple[float, float]]:
        """part -> (p50, p99) seconds, parts with samples."""
        return {p: p50_p99(list(xs)) for p, xs in self._samples.items() if xs}
