"""Several choices from one prefill (``SamplingParams.n``).

A turn asking for ``n`` choices is admitted only when ``n`` cache slots can be
had at once: its session's slot and ``n - 1`` reserved ones (the scheduler's
FIFO admission; a turn needing more slots than the engine has is refused when
it is added). The turn's input is prefilled once, into the session's slot, up
to its last token. Then the slot is forked: its rows in use (sinks + window
ring, exactly as they are, ``KVPool.copy_slot``) are copied into each reserved
slot, each with a copy of the session's token stream (``Session.fork``). From
there every choice is an ordinary row of the batch: each feeds the input's
last token into its own slot and samples its first token from its own logits,
then decodes with its own generator, detokeniser, stop strings, penalties,
logprobs and grammar state.

Session rule: choice 0 is the session's own turn and continues the
conversation (its reply is what the session, and the replica's commit to the
session log, keep). Choices 1..n-1 run on forks that are never registered as
sessions; their slots are freed when each finishes. The turn's final chunk
(usage summed over the choices, the session's record) goes out when the last
choice has finished, so the session takes no other turn until then.

Seeds: with a request seed ``s``, choice ``i`` draws from ``s + i``; without,
from a seed derived from the session, its round and ``i`` (choice 0's is the
one a single-choice turn uses), so choices differ at temperature > 0 and a
turn is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from swiftinfer_core.cache.pool import KVPool, SlotAllocator
from swiftinfer_core.protocol import Usage

if TYPE_CHECKING:
    from swiftinfer_core.engine.session import Session, Turn


@dataclass
class Choices:
    """The choices of one turn; ``main`` (choice 0) is the session's turn."""

    main: "Turn"
    n: int
    seeds: list[int]  # generator seeds of choices 1..n-1
    reserved: list[int] = field(default_factory=list)  # slots taken at admission for choices 1..n-1, until the fork
    forks: list["Turn"] = field(default_factory=list)  # choices 1..n-1, once forked
    forked: bool = False
    live: int = 1  # choices started and not finished

    @property
    def extra_slots(self) -> int:
        return self.n - 1

    def feed_end(self) -> int:
        """How much of the main turn's input may be fed now: all but the last
        token until the fork (every choice feeds that one itself)."""
        end = len(self.main.to_feed)
        return end if self.forked else end - 1

    def fork_due(self) -> bool:
        m = self.main
        return not self.forked and not m.aborted and m.prefilled == len(m.to_feed) - 1

    def fork(self, pool: KVPool, make_turn: Callable[["Session", int, int], "Turn"]) -> list["Turn"]:
        """Copy the main session's cache into each reserved slot and start one
        turn per copy: ``make_turn(session copy, index, seed)``, which feeds the
        input's last token. Returns the new turns (for the scheduler's running list)."""
        src = self.main.session
        rows = src.layout.fill(src.n)
        for i, slot in enumerate(self.reserved, start=1):
            pool.copy_slot(src.slot, slot, rows)
            self.forks.append(make_turn(src.fork(slot), i, self.seeds[i - 1]))
        self.reserved = []
        self.forked = True
        self.live += len(self.forks)
        return list(self.forks)

    def release_reserved(self, slots: SlotAllocator) -> None:
        """Give back the slots of choices that never forked (the turn ended first)."""
        for slot in self.reserved:
            slots.release(slot)
        self.reserved = []

    def finish_one(self) -> bool:
        """One choice ended; True when it was the last."""
        self.live -= 1
        return self.live == 0

    def usage(self) -> Usage:
        """The input once, the outputs of every choice summed (as OpenAI counts n)."""
        m = self.main
        out = len(m.output_ids) + sum(len(t.output_ids) for t in self.forks)
        return Usage(prompt_tokens=m.prompt_tokens, completion_tokens=out, prefilled_tokens=m.prefilled, cached_tokens=m.cached_tokens)
