"""StepChannel's bounded send, over a real two-rank gloo group with the worker in a
spawn child (whole-message round trips: test_tensor_parallel.py)."""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

from swiftinfer_core.parallel.groups import TPGroups, TPTimeouts
from swiftinfer_core.parallel.message import StepChannel, StepKind, StepMessage

CPU = torch.device("cpu")


def _receiving_worker(port: int) -> None:
    """Rank 1: receive until STOP."""
    store = dist.TCPStore("127.0.0.1", port, 2, False)
    groups = TPGroups.connect(store, 1, 2, CPU, TPTimeouts())
    channel = StepChannel(groups.ctrl)
    while channel.recv().kind is not StepKind.STOP:
        pass
    groups.shutdown()


def test_send_to_a_peer_that_stopped_reading_fails_after_the_timeout():
    """The peer is alive but frozen (SIGSTOP): a send too large for the socket buffers is an
    error after send_timeout, not a wait for the group's idle timeout (30 days)."""
    store = dist.TCPStore("127.0.0.1", 0, 2, True, wait_for_workers=False)
    proc = mp.get_context("spawn").Process(target=_receiving_worker, args=(store.port,), daemon=True)
    proc.start()
    groups = TPGroups.connect(store, 0, 2, CPU, TPTimeouts())
    try:
        channel = StepChannel(groups.ctrl, datetime.timedelta(seconds=3))
        channel.send(StepMessage(StepKind.FORWARD, [5, 6, 7], [0], [0], [3]))
        os.kill(proc.pid, signal.SIGSTOP)
        big = StepMessage(StepKind.FORWARD, list(range(8_000_000)), [0], [0], [8_000_000])  # 64 MB
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="timed out"):
            channel.send(big)
        assert 2.5 < time.monotonic() - t0 < 30
    finally:
        proc.kill()
        proc.join(10)
        groups.shutdown()
