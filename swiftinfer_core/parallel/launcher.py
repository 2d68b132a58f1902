"""How worker ranks are started (``WorkerLauncher``), and the default way:
``torch.multiprocessing`` spawn children (``ProcessLauncher``). Ray actors in
the replica's placement group: launch_ray.py; which of the two: placement.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch.multiprocessing as mp

from swiftinfer_core.parallel.worker import WorkerSpec, run_worker


class WorkerLauncher(ABC):
    @abstractmethod
    def start(self, specs: list[WorkerSpec]) -> None:
        """Start one worker per spec (ranks 1..tp-1); returns at once."""

    @abstractmethod
    def failed(self) -> dict[int, str]:
        """rank -> how it ended, for every worker that is no longer running."""

    @abstractmethod
    def stop(self, timeout_s: float) -> None:
        """Wait up to timeout_s for the workers to exit (after STOP), then kill the rest."""

    @abstractmethod
    def cuda_index(self, rank: int) -> int:
        """The local CUDA device index rank ``rank`` should use."""


class ProcessLauncher(WorkerLauncher):
    """Daemon children from the spawn context (never fork: the parent may hold CUDA/threads)."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self.procs: dict[int, mp.Process] = {}

    def start(self, specs: list[WorkerSpec]) -> None:
        for spec in specs:
            p = self._ctx.Process(target=run_worker, args=(spec,), name=f"swiftinfer-tp{spec.rank}", daemon=True)
            p.start()
            self.procs[spec.rank] = p

    def failed(self) -> dict[int, str]:
        return {r: f"exit code {p.exitcode}" for r, p in self.procs.items() if p.exitcode is not None}

    def stop(self, timeout_s: float) -> None:
        for p in self.procs.values():
            p.join(timeout_s)
        for p in self.procs.values():
            if p.is_alive():
                p.kill()
                p.join(5)

    def cuda_index(self, rank: int) -> int:
        return rank  # rank r on local GPU r; rank 0 (this process) on GPU 0

