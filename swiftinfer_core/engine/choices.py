"""Several choices from one prefill (``SamplingParams.n``).

A turn asking for ``n`` choices is admitted only when ``n`` cache slots can be
had at once: its session's slot and ``n - 1`` reserved ones (the scheduler's
FIFO admission; a turn needing more slots than the engine has is refused when
it is added). The turn's input is prefilled once, into the session's slot, up
to its last token. Then the slot is forked: its rows in use (sinks + window
ring, exactly as they are, ``KVPool.copy_slot``) are copied into each reserved
slot, each with a copy of the session's token stream (``Session.fork``); on
every rank of a tensor-parallel engine (``runner.copy_slot``). From
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

from collections.abc import Callable

from swiftinfer_core.cache.pool import SlotAllocator
from swiftinfer_core.engine.session import Choices, Session, Turn


def fork_choices(group: Choices, copy_slot: Callable[[int, int, int], None], make_turn: Callable[[Session, int, int], Turn]) -> list[Turn]:
    """Copy the main session's cache into each reserved slot and start one turn
    per copy: ``make_turn(session copy, index, seed)``, which feeds the input's
    last token. Returns the new turns (for the scheduler's running list)."""
    src = group.main.session
    rows = src.layout.fill(src.n)
    for i, slot in enumerate(group.reserved, start=1):
        copy_slot(src.slot, slot, rows)
        group.forks.append(make_turn(src.fork(slot), i, group.seeds[i - 1]))
    group.reserved = []
    group.forked = True
    group.live += len(group.forks)
    return list(group.forks)


def release_reserved(group: Choices, slots: SlotAllocator) -> None:
    """Give back the slots of choices that never forked (the turn ended first)."""
    for slot in group.reserved:
        slots.release(slot)
    group.reserved = []
