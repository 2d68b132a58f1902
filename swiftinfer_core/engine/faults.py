"""Test-only device-fault injection: the next model step runs its real kernels
on a cache slot far outside the pool, which is an illegal memory access on a GPU.

Used by benches and tests that measure recovery from a device fault (the
replica's engine closes, its health check fails, Serve replaces it, and its
conversations continue from the session log). Nothing in the engine's config
reaches it: a replica exposes it only when its process environment has
``SWIFTINFER_FAULT_INJECTION=1`` (deployments/replica/replica.py).
"""

from __future__ import annotations

import os

BAD_SLOT = 1 << 30  # * bytes per slot: far past any pool
ENV = "SWIFTINFER_FAULT_INJECTION"


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


class StickyDeviceFault(RuntimeError):
    """What a CPU step raises when armed ``sticky``: the engine treats it as a CUDA
    fault (its context unusable), so the replica's replacement path runs on a CPU too."""


def fault_next_step(engine, sticky: bool = False) -> None:
    """Arm ``engine`` (a native Engine): its next step points one sequence at
    BAD_SLOT. On a GPU the engine is unusable afterwards (a real device fault);
    on a CPU it raises an IndexError and lives on, unless ``sticky``."""
    with engine._api():  # between two steps, like every other call into the core
        arm(engine.core.batches, sticky)


def arm(batches, sticky: bool = False) -> None:
    """Arm an EngineCore's ``batches`` (engine/batch_runner.py) directly (the caller holds the engine lock)."""
    real = batches.launch

    def faulty(batch):
        batches.launch = real
        if not batch.seqs:
            return real(batch)
        session = batch.seqs[0].turn.session
        slot, session.slot = session.slot, BAD_SLOT
        try:  # on a CPU the step raises an IndexError and nothing else is touched
            return real(batch)
        except IndexError as exc:
            if sticky:
                raise StickyDeviceFault(f"injected device fault (slot {BAD_SLOT})") from exc
            raise
        finally:
            session.slot = slot

    batches.launch = faulty
