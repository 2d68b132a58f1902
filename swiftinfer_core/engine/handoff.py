"""How long a step's events take to reach the streams that wait for them.

A ``ProcessEngine`` step ends in the child; its ``StepEvents`` then cross the
pipe to the parent's reader thread (``PIPE``: pickling, the pipe, unpickling,
and the reader waiting for the GIL) and are handed to each event loop that
has a stream of them (``WAKE``: from the reader's ``call_soon_threadsafe`` to
the loop running the callback, i.e. how busy that loop is). Both legs are part
of every streamed token's latency and of a turn's first token, and neither is
in the engine's own step trace. Timestamps are ``time.monotonic()``, which on
Linux is one clock for every process of the host.
"""

from __future__ import annotations

import time
from collections import deque
from enum import Enum


class Handoff(str, Enum):
    PIPE = "pipe"  # child sent the step's events -> the parent's reader has them
    WAKE = "wake"  # reader hands them to an event loop -> that loop runs the hand-over


def p50_p99(samples) -> tuple[float, float]:
    """(p50, p99) of a non-empty collection of numbers (nearest rank)."""
    s = sorted(samples)
    return s[(len(s) - 1) // 2], s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


class HandoffTimer:
    """The last ``keep`` durations of each leg. ``record`` may run on any thread:
    a deque's append is atomic."""

    def __init__(self, keep: int = 2048):
        self._samples = {leg: deque(maxlen=keep) for leg in Handoff}

    def record(self, leg: Handoff, seconds: float) -> None:
        self._samples[leg].append(seconds)

    def since(self, leg: Handoff, start: float) -> None:
        self._samples[leg].append(time.monotonic() - start)

    def summary(self) -> dict[Handoff, tuple[float, float]]:
        """leg -> (p50, p99) seconds, legs with samples."""
        return {leg: p50_p99(list(xs)) for leg, xs in self._samples.items() if xs}
