"""Step watch for GPU tensor parallelism: a worker death or a step that runs too
long aborts the NCCL communicator, so rank 0 gets an error instead of spinning.

Why it is needed on GPU only: NCCL all-reduces replayed inside a CUDA graph are
not seen by torch's NCCL watchdog (it tracks eager work), and a dead peer does
not close anything NCCL kernels wait on — rank 0 would block forever in the
host read of the logits. On CPU, gloo fails on a closed socket and times out
a hung peer (and gloo's abort does not unblock a pending op); the driver asks
the launcher before each step instead (driver.py ``_check_workers``).

The driver brackets every model call with ``begin()`` / ``end()`` and
synchronises the device inside the bracket (the sampler reads the logits right
after anyway), so "in flight" covers the GPU work, not only the launch.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from swiftinfer_core.parallel.launcher import WorkerLauncher

log = logging.getLogger(__name__)


class StepWatch:
    def __init__(self, launcher: WorkerLauncher, step_timeout_s: float, on_fail: Callable[[str], None], period_s: float = 1.0):
        self.launcher, self.step_timeout_s, self.on_fail, self.period_s = launcher, step_timeout_s, on_fail, period_s
        self._since: float | None = None  # monotonic start of the model call in flight
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="swiftinfer-tp-watch", daemon=True)
        self._thread.start()

    def begin(self) -> None:
        self._since = time.monotonic()

    def end(self) -> None:
        self._since = None

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            dead = self.launcher.failed()
            since = self._since
            late = since is not None and time.monotonic() - since > self.step_timeout_s
            if dead or late:
                reason = f"worker(s) gone: {dead}" if dead else f"a step ran over {self.step_timeout_s:.0f} s"
                log.error("tensor-parallel watch: %s; aborting the NCCL communicator", reason)
                self.on_fail(reason)
                return
