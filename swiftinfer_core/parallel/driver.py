"""Rank 0 of a tensor-parallel engine: starts the workers, then mirrors every
model call to them (one StepMessage broadcast) before running its own shard.

``TPDriver.start`` order: TCPStore on 127.0.0.1 -> launch ranks 1..tp-1 ->
wait until each says "up" (polling their liveness, so a worker that dies at
import is an error, not a wait) -> join the groups -> build rank 0's shard with
runner/build.py:build_rank, as every worker builds its own from the same
RankConfig (its collectives, e.g. agreeing on cache slots, run on all ranks).

Any failure in a collective marks the driver broken and raises
EngineClosedError with what the workers reported (``error/<rank>`` in the
store, exit codes); later calls fail at once instead of touching a broken
group. Needs no pydantic (the GPU bench uses it directly).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import torch
import torch.distributed as dist

from swiftinfer_core.errors import EngineClosedError, SwiftInferError
from swiftinfer_core.model.llama import ShardPlan
from swiftinfer_core.parallel.groups import TPGroups, TPTimeouts
from swiftinfer_core.parallel.launcher import WorkerLauncher
from swiftinfer_core.parallel.message import StepChannel, StepKind, StepMessage
from swiftinfer_core.parallel.placement import choose_launcher
from swiftinfer_core.parallel.watch import StepWatch
from swiftinfer_core.parallel.worker import WorkerSpec
from swiftinfer_core.runner.build import build_rank, rank_device
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.runner.rank_config import RankConfig

log = logging.getLogger(__name__)


class _MirroredGraphs:
    """Rank 0's DecodeGraphs, with each replay announced to the workers first."""

    def __init__(self, inner, driver: "TPDriver"):
        self.inner, self.driver = inner, driver

    def fits(self, n: int) -> bool:
        return self.inner.fits(n)

    def run(self, ids: list[int], slots: list[int], starts: list[int]) -> torch.Tensor:
        msg = StepMessage(StepKind.GRAPH, ids, slots, starts, [1] * len(ids))
        return self.driver._call(msg, lambda: self.inner.run(ids, slots, starts))


class TPDriver:
    def __init__(self, store: dist.TCPStore, launcher: WorkerLauncher, timeouts: TPTimeouts, size: int):
        self.store, self.launcher, self.timeouts, self.size = store, launcher, timeouts, size
        self.groups: TPGroups | None = None
        self.channel: StepChannel | None = None
        self.local: ModelRunner | None = None  # rank 0's runner
        self.graphs: _MirroredGraphs | None = None
        self.watch: StepWatch | None = None  # GPU only (see watch.py)
        self._broken: str | None = None
        self._closed = False
        self._lock = threading.Lock()  # one message (and its model call) at a time; close waits for it

    @classmethod
    def start(cls, plans: list[ShardPlan], config: RankConfig,
              launcher: WorkerLauncher | None = None, timeouts: TPTimeouts | None = None) -> "TPDriver":
        """Workers for ranks 1.. of ``plans``, then rank 0's own runner; ``config`` builds every rank."""
        size, timeouts = len(plans), timeouts or TPTimeouts()
        device = rank_device(config.device_type)
        launcher = launcher or choose_launcher()
        store = dist.TCPStore("127.0.0.1", 0, size, True, timeout=TPTimeouts.td(timeouts.start_s), wait_for_workers=False)
        self = cls(store, launcher, timeouts, size)
        try:
            specs = [
                WorkerSpec(rank=r, size=size, port=store.port, plan=plans[r], config=config,
                           cuda_index=launcher.cuda_index(r), cpu_threads=torch.get_num_threads(), timeouts=timeouts)
                for r in range(1, size)
            ]
            launcher.start(specs)
            self._wait_up(size)
            self.groups = TPGroups.connect(store, 0, size, device, timeouts)
            self.channel = StepChannel(self.groups.ctrl, TPTimeouts.td(timeouts.collective_s))
            self.local = build_rank(config, replace(plans[0], all_reduce=self.groups.all_reduce), self.groups)
            self.groups.barrier()  # every shard loaded (a worker that failed to load is an error here)
            if device.type == "cuda":
                self.watch = StepWatch(launcher, timeouts.collective_s, self._abort)
        except BaseException as exc:
            detail = self._diagnose()
            self._broken = "start-up failed"
            self.close()
            if isinstance(exc, SwiftInferError):
                raise
            raise EngineClosedError(f"tensor-parallel start-up failed: {exc}{detail}") from exc
        log.info("tensor-parallel engine up: %d ranks on %s", size, device)
        return self

    def _wait_up(self, size: int) -> None:
        keys = [f"up/{r}" for r in range(1, size)]
        deadline = time.monotonic() + self.timeouts.start_s
        while not self.store.check(keys):
            if self.launcher.failed():
                raise RuntimeError("a worker exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not up after {self.timeouts.start_s:.0f} s")
            time.sleep(0.05)

    def _diagnose(self) -> str:
        """What the workers said before they went: their stored errors and exit states."""
        parts = []
        try:
            for r in range(1, self.size):
                key = f"error/{r}"
                if self.store.check([key]):
                    parts.append(f"rank {r}: {self.store.get(key).decode(errors='replace').strip()}")
            parts += [f"rank {r}: {how}" for r, how in self.launcher.failed().items()]
        except Exception as exc:  # noqa: BLE001 - diagnosis must not mask the real error
            parts.append(f"(no diagnosis: {exc})")
        return ("; " + " | ".join(parts)) if parts else ""

    def _call(self, msg: StepMessage, local_call):
        """Broadcast ``msg`` then run rank 0's part; any failure breaks the engine for good."""
        if self._broken is not None:
            raise EngineClosedError(f"tensor-parallel engine is broken: {self._broken}")
        if self._closed:
            raise EngineClosedError("tensor-parallel engine is closed")
        with self._lock:
            try:
                if self.watch is not None:
                    self.watch.begin()
                else:
                    self._check_workers()
                self.channel.send(msg)
                out = local_call()
                if self.watch is not None:
                    torch.cuda.current_stream(self.groups.device).synchronize()  # the GPU work, incl. the all-reduces
                    self.watch.end()
                if self._broken is not None:  # aborted by the watch while we waited
                    raise RuntimeError(self._broken)
                return out
            except Exception as exc:
                self._broken = f"{exc}{self._diagnose()}"
                raise EngineClosedError(f"tensor-parallel step failed: {self._broken}") from exc

    def _check_workers(self) -> None:
        """Without a watch (CPU): a worker known to be gone fails the step before any send.

        gloo normally fails a send to a closed socket at once, but a CI run once
        hung in rank 0's send to a SIGKILLed worker; asking the launcher costs a
        waitpid per worker (a Ray ``wait`` with no timeout under Ray).
        """
        dead = self.launcher.failed()
        if dead:
            raise RuntimeError(f"worker(s) gone: {dead}")

    def _abort(self, reason: str) -> None:
        """From the watch thread: break the engine and unblock rank 0's NCCL kernels."""
        self._broken = reason
        try:
            self.groups.model.abort()
        except Exception:  # noqa: BLE001 - already broken
            log.exception("NCCL abort failed")

    # ---- the runner surface (ModelRunner's) ----

    def forward(self, ids: list[int], slots: list[int], starts: list[int], q_lens: list[int], rows: list[int] | None) -> torch.Tensor:
        msg = StepMessage(StepKind.FORWARD, ids, slots, starts, q_lens)
        return self._call(msg, lambda: self.local.forward(ids, slots, starts, q_lens, rows))

    def copy_slot(self, src: int, dst: int, rows: int) -> None:
        """Every rank copies the rows of its own KV heads."""
        msg = StepMessage(StepKind.COPY, slots=[src, dst], starts=[0, 0], q_lens=[0, 0], arg=rows)
        self._call(msg, lambda: self.local.copy_slot(src, dst, rows))

    def capture_decode_graphs(self, max_batch: int) -> None:
        """Every rank captures the same ladder at once (the graphs contain the NCCL all-reduces)."""
        self._call(StepMessage(StepKind.CAPTURE, arg=max_batch), lambda: self.local.capture_decode_graphs(max_batch))
        self.graphs = _MirroredGraphs(self.local.graphs, self)

    def close(self, timeout_s: float = 30.0) -> None:
        """STOP the workers (if the group still works), wait, kill leftovers, free the groups."""
        if self._closed:
            return
        self._closed = True
        if self.watch is not None:
            self.watch.stop()
        stopped = False
        # A step still running (its thread not joined) holds the lock: then kill, which fails that step.
        if self._broken is None and self.channel is not None and self._lock.acquire(timeout=timeout_s):
            try:
                self.channel.send(StepMessage(StepKind.STOP))
                stopped = True
            except Exception:  # noqa: BLE001 - a dead worker: kill below
                pass
            finally:
                self._lock.release()
        self.launcher.stop(timeout_s if stopped else 0.0)
        if self.groups is not None:
            self.groups.shutdown()
        self.groups = self.channel = None
