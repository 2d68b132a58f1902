"""Continuous batching: decodes first, then prefill chunks, under a token budget.

Every step each decoding conversation gets its token (so a long prompt never
stalls other conversations' streams); what is left of the budget goes to
prefill chunks in arrival order, at most ``prefill_chunk`` tokens each (a chunk
also ends at a turn's ``cut``, where the prefix cache copies the slot).
A turn is admitted only when its conversation holds a cache slot (a turn with
``n`` choices: ``n`` slots at once, engine/choices.py); when the pool is full,
the least recently used idle conversation gives its slot up (it is rebuilt
from its token ids on its next turn) or the turn waits. A turn with choices
prefills its input up to the last token, then forks into one row per choice.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from swiftinfer_core.engine.session import Turn, TurnState


@dataclass
class ScheduledSeq:
    turn: Turn
    start: int  # stream index of token_ids[0] in the session's cache
    token_ids: list[int]
    sample: bool  # the model's last-row logits are needed (end of input, or decode)
    decode: bool = False  # one generated token of a decoding turn (else a prefill chunk)


@dataclass
class ScheduledBatch:
    seqs: list[ScheduledSeq] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)

    @property
    def is_decode(self) -> bool:
        return all(s.decode for s in self.seqs)


class Scheduler:
    def __init__(self, max_batch_tokens: int, prefill_chunk: int, admit: Callable[[Turn], bool],
                 fork: Callable[[Turn], list[Turn]] | None = None):
        self.max_batch_tokens = max_batch_tokens
        self.prefill_chunk = prefill_chunk
        self.admit = admit  # gives the turn the slots it needs (its session's, its choices'); False if the pool cannot now
        self.fork = fork  # a turn with choices at its fork point -> the other choices' turns (engine/choices.py)
        self.waiting: deque[Turn] = deque()
        self.running: list[Turn] = []

    def add(self, turn: Turn) -> None:
        self.waiting.append(turn)

    def remove(self, turn: Turn) -> None:
        if turn in self.running:
            self.running.remove(turn)
        elif turn in self.waiting:
            self.waiting.remove(turn)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _admit(self) -> None:
        while self.waiting:
            turn = self.waiting[0]
            if not self.admit(turn):
                return  # pool full: wait for a turn to finish (FIFO, no overtaking)
            self.waiting.popleft()
            turn.state = TurnState.PREFILL
            self.running.append(turn)

    def schedule(self) -> ScheduledBatch:
        self._admit()
        for turn in [t for t in self.running if t.choices is not None and t.index == 0 and t.choices.fork_due()]:
            self.running.extend(self.fork(turn))
        batch, budget = ScheduledBatch(), self.max_batch_tokens
        for turn in self.running:
            if turn.state is TurnState.DECODE and budget > 0:
                batch.seqs.append(ScheduledSeq(turn, turn.session.n, [turn.next_token], sample=True, decode=True))
                budget -= 1
        for turn in self.running:
            if turn.state is TurnState.PREFILL and budget > 0:
                take = min(turn.feed_end - turn.prefilled, self.prefill_chunk, budget)
                if turn.cut is not None and turn.prefilled < turn.cut < turn.prefilled + take:
                    take = turn.cut - turn.prefilled  # the prefix cache copies the slot there
                if take <= 0:
                    continue
                ids = turn.to_feed[turn.prefilled : turn.prefilled + take]
                last = turn.prefilled + take == len(turn.to_feed)
                batch.seqs.append(ScheduledSeq(turn, turn.session.n, ids, sample=last))
                budget -= take
        return batch
