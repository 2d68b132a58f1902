"""Where a turn's start and a step's tokens wait between a replica and its engine child.

A ``ProcessEngine`` turn start crosses the command pipe to the child's reader
(``START``), waits there for the step thread to take it at the next step
boundary (``QUEUE``), and gets its first token from the steps that follow
(``FIRST``: prefill and the first decode). Each step's ``StepEvents`` then cross
the pipe back to the parent's reader thread (``PIPE``: pickling, the pipe,
unpickling, and the reader waiting for the GIL) and are handed to each event
loop with a stream of them (``WAKE``: from ``call_soon_threadsafe`` to the loop
running the hand-over, i.e. how busy that loop is). A turn's first token waits
for all five; a streamed token for the last two. Timestamps are
``time.monotonic()``, which on Linux is one clock for every process of the host.
(``LAG``, the consuming loop's own lateness, is timed by that loop's owner: the
replica.) The engine sides keep their samples in ``recent_times.RecentTimes(Handoff)``.
"""

from __future__ import annotations

from enum import Enum


class Handoff(str, Enum):
    START = "start"  # the parent sent a turn start -> the child's reader has it (child side)
    QUEUE = "queue"  # the child's reader -> the step thread takes the turn (child side)
    FIRST = "first"  # taken -> its first token leaves the child's step (child side)
    PIPE = "pipe"  # the child sent a step's events -> the parent's reader has them
    WAKE = "wake"  # the reader hands them to an event loop -> that loop runs the hand-over
    LAG = "lag"  # the parent's event loop wakes this late on a 10 ms timer (timed by the replica)
