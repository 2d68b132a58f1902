"""Rebalancing on scale-up: how many of its sessions a replica should hand over.

Conversations stick to the replica holding their KV cache, so a replica the
autoscaler adds would only ever take new ones. Each replica asks the directory
once per eviction period (``SessionDirectory.rebalance_pick``); the answer is
``moves_for`` below, and the sessions it hands back (``give_back``) travel with
their exact KV through the object store to whichever replica places them next.

Fair share, over the live replicas that are not draining::

    total   = sessions they own + sessions handed back and not yet placed
    fair[r] = total * slots[r] / sum(slots)
    over    = owned[rid] - fair[rid]            (moves only if over > slack)
    room    = sum over the others of min(max(0, fair[o] - owned[o]), free_slots[o])
    k       = min(floor(over), floor(room) - handed - picked, max_sessions_per_period)

Handed-back sessions will land on the replicas with room (placement picks the
lowest owned/slots share); sessions other replicas picked but have not handed
back yet (still owned by them) are about to: both fill the room, so another
replica asking meanwhile does not move into it too. The moves trickle towards
the fair share and never past it.
"""

from __future__ import annotations

import math
import time
from typing import Mapping

from deployments.config import RebalanceConfig
from deployments.messages import ReplicaStats

PICK_TIMEOUT_S = 60.0  # a pick whose give_back never came (the replica died between) stops counting


def moves_for(rid: str, owned: Mapping[str, int], stats: Mapping[str, ReplicaStats], cfg: RebalanceConfig,
              handed: int = 0, picked: int = 0) -> int:
    """Sessions ``rid`` should hand over now (module docstring). ``owned``: replica
    -> sessions it owns; ``stats``: the live replicas' latest reports; ``handed``,
    ``picked``: sessions in transit (``Transit``)."""
    if not cfg.enabled:
        return 0
    live = {r: s for r, s in stats.items() if not s.draining and s.capacity > 0}
    if rid not in live or len(live) < 2:
        return 0
    slots = sum(s.capacity for s in live.values())
    total = sum(owned.get(r, 0) for r in live) + handed
    fair = {r: total * s.capacity / slots for r, s in live.items()}
    over = owned.get(rid, 0) - fair[rid]
    if over <= max(cfg.slack_sessions, cfg.slack_ratio * fair[rid]):
        return 0
    room = sum(min(max(0.0, fair[r] - owned.get(r, 0)), s.free_slots) for r, s in live.items() if r != rid)
    # 1e-9: shares like 140 * 1/3 must not lose a whole session to rounding
    return max(0, min(math.floor(over + 1e-9), math.floor(room + 1e-9) - handed - picked, cfg.max_sessions_per_period))


class Transit:
    """The directory's sessions in transit: handed back by a rebalance and not yet
    placed (session -> (old owner, since)), and picks not yet handed back
    (replica -> (how many, since))."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self._handed: dict[str, tuple[str, float]] = {}  # insertion order = age
        self._picked: dict[str, tuple[int, float]] = {}

    def picked(self, rid: str, n: int) -> None:
        self._picked[rid] = (n, time.time())

    def handed(self, rid: str, sids: list[str]) -> None:
        """``rid``'s pick is over: ``sids`` are on their way."""
        self._picked.pop(rid, None)
        now = time.time()
        for sid in sids:
            self._handed[sid] = (rid, now)

    def landed(self, sid: str) -> str | None:
        """``sid`` has an owner again (or is gone): no longer in transit. Returns
        the replica that handed it back, None if it was not in transit."""
        hit = self._handed.pop(sid, None)
        return hit[0] if hit else None

    def handed_count(self) -> int:
        return len(self._handed)

    def picked_count(self, other_than: str) -> int:
        """Sessions picked by replicas other than ``other_than`` and not handed back yet."""
        now = time.time()
        for rid in [r for r, (_, t) in self._picked.items() if now - t > PICK_TIMEOUT_S]:
            del self._picked[rid]
        return sum(n for r, (n, _) in self._picked.items() if r != other_than)

    def expired(self) -> list[tuple[str, str]]:
        """``(session, old owner)`` in transit longer than ``hold_s``, removed."""
        now, out = time.time(), []
        while self._handed:
            sid, (rid, t) = next(iter(self._handed.items()))
            if now - t <= self.hold_s:
                break
            del self._handed[sid]
            out.append((sid, rid))
        return out
