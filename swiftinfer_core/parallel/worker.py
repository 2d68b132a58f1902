"""A tensor-parallel worker (ranks 1..tp-1): join, build its shard, replay rank 0's steps.

Runs in a child process (ProcessLauncher) or a Ray actor (RayLauncher); the
same ``run_worker(spec)`` either way. The worker builds its shard with
runner/build.py:build_rank from rank 0's RankConfig (a ModelRunner: the same
forward and CUDA graphs as rank 0) and
runs, for every StepMessage, exactly the call rank 0 makes, so the all-reduces
inside the forward pair up across ranks.

A failure is written to the store under ``error/<rank>`` before the worker
exits, so rank 0 can say *why* a rank died, not only that a collective broke.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, replace
import torch
import torch.distributed as dist

from swiftinfer_core.model.llama import ShardPlan
from swiftinfer_core.parallel.groups import TPGroups, TPTimeouts
from swiftinfer_core.parallel.message import StepChannel, StepKind
from swiftinfer_core.runner.build import build_rank
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.runner.rank_config import RankConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    rank: int
    size: int
    port: int  # rank 0's TCPStore on 127.0.0.1
    plan: ShardPlan  # all_reduce unset (not picklable); bound in the worker
    config: RankConfig  # rank 0's, resolved once
    cuda_index: int  # local CUDA device when config.device_type == "cuda"
    cpu_threads: int
    timeouts: TPTimeouts


def worker_device(spec: WorkerSpec) -> torch.device:
    if spec.config.device_type != "cuda":
        return torch.device("cpu")
    torch.cuda.set_device(spec.cuda_index)
    return torch.device("cuda", spec.cuda_index)


def serve_steps(runner: ModelRunner, channel: StepChannel) -> int:
    """Replay steps until STOP; returns how many model calls ran."""
    n = 0
    while True:
        msg = channel.recv()
        if msg.kind is StepKind.STOP:
            return n
        if msg.kind is StepKind.FORWARD:
            runner.forward(msg.ids, msg.slots, msg.starts, msg.q_lens, [])  # no logit rows: rank 0 samples
        elif msg.kind is StepKind.GRAPH:
            runner.graphs.run(msg.ids, msg.slots, msg.starts)
        elif msg.kind is StepKind.CAPTURE:
            runner.capture_decode_graphs(msg.arg)
        elif msg.kind is StepKind.COPY:
            runner.copy_slot(msg.slots[0], msg.slots[1], msg.arg)
        n += 1


def run_worker(spec: WorkerSpec) -> None:
    store: dist.TCPStore | None = None
    groups: TPGroups | None = None
    try:
        torch.set_num_threads(spec.cpu_threads)
        device = worker_device(spec)
        store = dist.TCPStore("127.0.0.1", spec.port, spec.size, False, timeout=TPTimeouts.td(spec.timeouts.start_s))
        store.set(f"up/{spec.rank}", "1")
        groups = TPGroups.connect(store, spec.rank, spec.size, device, spec.timeouts)
        runner = build_rank(spec.config, replace(spec.plan, all_reduce=groups.all_reduce), groups)
        groups.barrier()  # "built": rank 0 returns from start() only when every shard loaded
        steps = serve_steps(runner, StepChannel(groups.ctrl))
        log.info("tensor-parallel rank %d stopped after %d steps", spec.rank, steps)
    except BaseException as exc:
        if store is not None:
            try:
                tail = "".join(traceback.format_exception(exc)[-3:])
                store.set(f"error/{spec.rank}", f"{type(exc).__name__}: {exc}\n{tail}"[-4000:])
            except Exception:  # noqa: BLE001 - rank 0 may be gone already
                pass
        raise
    finally:
        if groups is not None:
            groups.shutdown()
