"""The two communicators of one tensor-parallel engine, built without torch's
global default group (several engines may live in one process, e.g. tests).

* ``ctrl``: gloo on CPU tensors, always. Carries the step message from rank 0
  and start-up agreements. Its timeout is the *idle* timeout: a worker waits
  on it between steps, so it must outlast any quiet period of the engine. A
  dead peer is normally seen at once (gloo fails on the closed socket); rank 0
  also bounds each of its sends by ``collective_s`` (message.py StepChannel).
* ``model``: the all-reduces inside the forward (after wo and w2). gloo on CPU,
  NCCL on GPU (capturable in CUDA graphs). Timeout = ``collective_s``: a hung
  rank turns into an error on the others instead of a hang.

Every rank of one engine is on one host (STRICT_PACK under Ray, or child
processes), so gloo talks over 127.0.0.1.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TPTimeouts:
    start_s: float = 900.0  # workers up and joined (spawn, imports, Ray scheduling)
    collective_s: float = 300.0  # one all-reduce inside a forward (first steps compile kernels)
    idle_s: float = 30 * 24 * 3600.0  # a worker waiting for the next step

    @staticmethod
    def td(seconds: float) -> datetime.timedelta:
        return datetime.timedelta(seconds=seconds)


def _gloo(store: dist.Store, prefix: str, rank: int, size: int, timeout_s: float) -> dist.ProcessGroupGloo:
    opts = dist.ProcessGroupGloo._Options()
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    opts._timeout = TPTimeouts.td(timeout_s)
    return dist.ProcessGroupGloo(dist.PrefixStore(prefix, store), rank, size, opts)


def _nccl(store: dist.Store, prefix: str, rank: int, size: int, timeout_s: float):
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = TPTimeouts.td(timeout_s)
    opts.is_high_priority_stream = False
    return dist.ProcessGroupNCCL(dist.PrefixStore(prefix, store), rank, size, opts)


@dataclass
class TPGroups:
    rank: int
    size: int
    ctrl: dist.ProcessGroupGloo
    model: object  # ProcessGroupGloo | ProcessGroupNCCL backend
    device: torch.device

    @classmethod
    def connect(cls, store: dist.Store, rank: int, size: int, device: torch.device, timeouts: TPTimeouts) -> "TPGroups":
        """Blocks until all ``size`` ranks have called it with the same store."""
        ctrl = _gloo(store, "ctrl", rank, size, timeouts.idle_s)
        if device.type == "cuda":
            model = _nccl(store, "model", rank, size, timeouts.collective_s)
        else:
            model = _gloo(store, "model", rank, size, timeouts.collective_s)
        groups = cls(rank, size, ctrl, model, device)
        # First NCCL use creates the communicator; do it now, never inside a graph capture.
        groups.all_reduce(torch.zeros(1, device=device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return groups

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks of x [T, hidden] (a partial wo/w2 output); returns x."""
        self.model.allreduce([x]).wait()
        return x

    def min_int(self, value: int) -> int:
        """The smallest ``value`` over ranks (e.g. cache slots every rank can hold)."""
        t = torch.tensor([value], dtype=torch.int64)
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.MIN
        self.ctrl.allreduce([t], opts).wait()
        return int(t.item())

    def barrier(self) -> None:
        """Every rank got here (on ctrl: a dead peer fails it at once)."""
        self.ctrl.barrier().wait()

    def shutdown(self) -> None:
        for pg in (self.model, self.ctrl):
            try:
                pg.shutdown()
            except Exception:  # noqa: BLE001 - best effort on a possibly broken group
                pass
