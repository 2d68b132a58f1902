"""A session's entry in the session directory (directory.py ``SessionDirectory._entries``):
its owner, the last committed turn, the lease of a turn in flight, the KV an old owner left.

``turn_landed`` tells a commit sent again (its reply lost in a directory restart)
from a new one: the turn it carries is on record already.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray

from deployments.sessions.session_log import LastTurn
from swiftinfer_core.protocol import SessionRecord


@dataclass
class Entry:
    owner: str | None
    record: SessionRecord | None = None
    digest: str | None = None
    seq: int = 0  # committed turns
    last_turn: LastTurn | None = None
    lease: str | None = None  # replica running a turn of this session
    lease_at: float = 0.0
    kv: tuple[int, ray.ObjectRef] | None = None  # (seq, ref of the wire-form KVSnapshot: replica/kv_wire.py) left by a draining or rebalancing owner
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    moves: int = 0  # owner changes after the first placement (rebuilds elsewhere)
    handed: str | None = None  # why its owner gave it back ("drain", "slotless", "rebalance"), until it lands


def turn_landed(entry: Entry, rid: str, seq: int, turn_key: str | None) -> bool:
    """Whether turn ``seq + 1`` on record is ``rid``'s turn with ``turn_key``."""
    last = entry.last_turn
    return entry.seq == seq + 1 and last is not None and last.entry.replica == rid and last.entry.turn_key == turn_key
