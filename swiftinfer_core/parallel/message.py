"""The step message rank 0 broadcasts before every model call, and its transport.

Workers need only what feeds the forward: token ids and, per sequence, cache
slot, stream start and query length. They never need ``rows`` (which logits to
return): only rank 0 samples, so workers run with no logit rows at all (the LM
head is skipped there; in a replayed CUDA graph it runs but is discarded).

Wire format, int64 on the ctrl (gloo) group: a fixed first buffer of
``FIRST`` words = [kind, n_ids, n_seqs, arg, payload...]; a decode batch of up
to (FIRST - 4) / 4 = 63 sequences fits, so the common step is one broadcast. A
longer payload (prefill) follows in a second broadcast of exactly its length.
payload = ids [n_ids] ++ slots [n_seqs] ++ starts [n_seqs] ++ q_lens [n_seqs].
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from enum import IntEnum

import torch

FIRST = 256
_HEAD = 4


class StepKind(IntEnum):
    FORWARD = 1  # runner.forward(ids, slots, starts, q_lens)
    GRAPH = 2  # runner.graphs.run(ids, slots, starts): a decode step replayed from a CUDA graph
    CAPTURE = 3  # runner.capture_decode_graphs(arg)
    STOP = 4  # leave the loop, free the groups
    COPY = 5  # runner.copy_slot(slots[0], slots[1], arg): a fork of n choices, a shared prompt prefix


@dataclass(frozen=True)
class StepMessage:
    kind: StepKind
    ids: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    q_lens: list[int] = field(default_factory=list)
    arg: int = 0

    def pack(self) -> torch.Tensor:
        """int64 [4 + n_ids + 3 * n_seqs]."""
        n = len(self.slots)
        if not (len(self.starts) == len(self.q_lens) == n):
            raise ValueError("slots, starts and q_lens must have one entry per sequence")
        words = [int(self.kind), len(self.ids), n, self.arg, *self.ids, *self.slots, *self.starts, *self.q_lens]
        return torch.tensor(words, dtype=torch.int64)

    @classmethod
    def unpack(cls, words: torch.Tensor) -> "StepMessage":
        kind, n_ids, n, arg = (int(x) for x in words[:_HEAD])
        body = words[_HEAD : _HEAD + n_ids + 3 * n].tolist()
        ids, rest = body[:n_ids], body[n_ids:]
        return cls(StepKind(kind), ids, rest[:n], rest[n : 2 * n], rest[2 * n :], arg)


class StepChannel:
    """Broadcast of StepMessages from rank 0 over a gloo group (a ProcessGroupGloo backend).

    ``send_timeout``: how long rank 0 waits for one send. A worker's receive waits
    for as long as the group's (idle) timeout, but rank 0's sends are a few KiB and
    finish at once; one that does not (a peer gone without gloo seeing its socket
    close, or one that stopped reading) is an error after ``send_timeout``.
    """

    def __init__(self, ctrl, send_timeout: datetime.timedelta | None = None):
        self.ctrl = ctrl
        self.send_timeout = send_timeout
        self._first = torch.zeros(FIRST, dtype=torch.int64)

    def _bcast(self, t: torch.Tensor, timeout: datetime.timedelta | None = None) -> None:
        work = self.ctrl.broadcast([t])  # root 0 (BroadcastOptions default)
        if timeout is None:
            work.wait()
        else:
            work.wait(timeout)  # raises RuntimeError on expiry

    def send(self, msg: StepMessage) -> None:
        words = msg.pack()
        self._first.zero_()
        k = min(FIRST, words.numel())
        self._first[:k] = words[:k]
        self._bcast(self._first, self.send_timeout)
        if words.numel() > FIRST:
            self._bcast(words[FIRST:].contiguous(), self.send_timeout)

    def recv(self) -> StepMessage:
        self._bcast(self._first)
        n_ids, n = int(self._first[1]), int(self._first[2])
        total = _HEAD + n_ids + 3 * n
        if total <= FIRST:
            return StepMessage.unpack(self._first)
        rest = torch.empty(total - FIRST, dtype=torch.int64)
        self._bcast(rest)
        return StepMessage.unpack(torch.cat([self._first, rest]))
