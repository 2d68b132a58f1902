"""Prompt prefixes shared between conversations: a new conversation whose input
starts like an earlier one's (the same system prompt, tools, few-shot examples)
gets those tokens' cache rows copied instead of computed.

Why a copy is exact here: a conversation's first ``capacity`` tokens sit in rows
0..capacity-1 of its slot in stream order (cache/layout.py), keys before RoPE, at
the same in-cache positions in every conversation; and token ``u``'s K and V
depend only on tokens 0..u (causal). So while nothing is evicted, rows 0..m-1 of
any slot fed ``ids`` from stream index 0 are the rows of every stream starting
with ``ids[:m]``, whatever follows. (Bit-for-bit only up to the summation order
of the chunk that computed them: another chunking of the same tokens rounds
differently in the last bits, as a rebuilt conversation's cache already does.)

Templates live in cache slots that are free anyway: one is stored only into a
free slot (or over the least recently used template). When a conversation needs
a slot and none is free, templates and idle conversations give theirs up in one
least-recently-used order (engine/slots.py): a system prompt that every new
conversation starts with stays; a template nobody matched goes before a
conversation's cache. A conversation that takes a template's slot and shares
its prefix keeps those rows where they are (no copy).

A template is a conversation's whole input at the end of its first prefill
(stream index 0 .. n-1, n <= capacity), stored when at least ``min_tokens`` of it
are not yet held by another template. A turn whose session has an empty cache
(new, or rebuilt after losing its slot) takes the longest common prefix with
any template, at least ``min_tokens`` long and leaving its last input token to
run (its logits start the reply). Turns that score their input
(``prompt_logprobs``) always compute it.

Inputs longer than the cache. Once a first input overflows the cache, its slot
holds the sinks and a ring of the latest tokens, so its rows serve no other
stream; but the whole slot after token ``b`` (every row, with the session's
count ``b``) is the state of every stream that starts with those ``b`` tokens.
A long first input that shares a prefix of ``b`` >= ``min_tokens`` tokens with
one of the last ``LONG_INPUTS`` long first inputs (a system prompt longer than
the cache, say, seen twice) is prefilled with a chunk ending at ``b``, and the
slot is copied into a template there (``cut``). A template of ``b`` >
capacity tokens serves only inputs that start with all of them and go on
(``Template.usable``): every row is copied and the new stream goes on from ``b``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from swiftinfer_core.cache.pool import SlotAllocator
from swiftinfer_core.engine.session import Turn


LONG_INPUTS = 8  # recent first inputs longer than the cache, kept (ids only) to find shared prefixes


@dataclass
class Template:
    slot: int
    ids: list[int]  # stream 0 .. len-1, whose state the slot holds
    last_used: float
    capacity: int  # the cache's rows per slot

    @property
    def wrapped(self) -> bool:
        """Longer than the cache: the slot holds the sinks and a ring, not rows 0..len-1."""
        return len(self.ids) > self.capacity

    def usable(self, ids: list[int]) -> int:
        """How many leading tokens of ``ids`` this template's slot holds for it: any
        common prefix, or for a wrapped template all of its tokens or none (and
        ``ids`` must go on after them)."""
        k = common_prefix(self.ids, ids)
        if self.wrapped:
            return k if k == len(self.ids) < len(ids) else 0
        return k

    def rows(self, m: int) -> int:
        """Rows to copy for a stream reusing ``m`` of its tokens."""
        return self.capacity if self.wrapped else m


def common_prefix(a: list[int], b: list[int], block: int = 64) -> int:
    """Length of the longest common prefix (blocks compared as slices, at C speed)."""
    n = min(len(a), len(b))
    i = 0
    while i + block <= n and a[i : i + block] == b[i : i + block]:
        i += block
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self, slots: SlotAllocator, copy_slot: Callable[[int, int, int], None], max_templates: int, min_tokens: int):
        self.slots, self.copy_slot = slots, copy_slot  # copy_slot(src, dst, rows): the runner's, on every rank
        self.max_templates, self.min_tokens = max_templates, min_tokens
        self.templates: list[Template] = []
        self.long_inputs: deque[list[int]] = deque(maxlen=LONG_INPUTS)
        self.hits = 0  # turns that started from a template
        self.tokens = 0  # input tokens copied instead of computed

    @property
    def slots_held(self) -> int:
        return len(self.templates)

    def coldest(self) -> Template | None:
        return min(self.templates, key=lambda t: t.last_used, default=None)

    def remove(self, t: Template) -> int:
        """Give up template ``t``; its slot (still allocated) now belongs to the caller."""
        self.templates.remove(t)
        return t.slot

    def clear(self) -> None:
        """Drop every template (their slots back to the free list) and the counters."""
        for t in self.templates:
            self.slots.release(t.slot)
        self.templates = []
        self.long_inputs.clear()
        self.hits = self.tokens = 0

    def _best(self, ids: list[int]) -> tuple[Template | None, int]:
        best, m = None, 0
        for t in self.templates:
            k = t.usable(ids)
            if k > m:
                best, m = t, k
        return best, m

    def apply(self, turn: Turn, in_place: Template | None = None) -> int:
        """At admission, before the turn's first chunk: start the turn's (empty)
        slot from the longest prefix its input shares with a template, copied, or
        left where it is when ``in_place`` (the template whose slot the session just
        took) shares as much; returns the tokens reused. A long input also gets
        its ``cut``, where a template is taken on the way (module docstring)."""
        s = turn.session
        if s.n != 0 or turn.prefilled != 0 or turn.params.prompt_logprobs is not None:
            return 0
        m = self._reuse(turn, in_place)
        self._plan_cut(turn, s.layout.capacity)
        return m

    def _reuse(self, turn: Turn, in_place: Template | None) -> int:
        s = turn.session
        t, m = self._best(turn.to_feed)
        own = in_place.usable(turn.to_feed) if in_place is not None else 0
        if own >= m:
            t, m = in_place, own
        m = min(m, len(turn.to_feed) - 1)  # its last input token runs (a wrapped template's m is below it already)
        if t is None or m < self.min_tokens:
            return 0
        if t is not in_place:
            self.copy_slot(t.slot, s.slot, t.rows(m))
        s.fed(turn.to_feed[:m])
        turn.prefilled = turn.reused = m
        turn.cached_tokens = m
        t.last_used = time.monotonic()
        self.hits += 1
        self.tokens += m
        return m

    def _plan_cut(self, turn: Turn, capacity: int) -> None:
        """A first input longer than the cache: where its prefill stops to leave a
        template (the longest prefix it shares with a recent long input, at least
        ``min_tokens`` beyond what it reused), and remember it."""
        ids = turn.to_feed
        if len(ids) <= capacity:
            return
        b = max((common_prefix(prev, ids) for prev in self.long_inputs), default=0)
        b = min(b, len(ids) - 1)
        if b - turn.prefilled >= self.min_tokens:  # else a template adds too little to what it reused
            turn.cut = b
        self.long_inputs.append(ids)

    def offer(self, turn: Turn) -> bool:
        """At the end of a turn's prefill (its first token sampled, nothing more fed):
        keep its input as a template when it is the whole stream so far, fits the
        cache and adds ``min_tokens`` or more to what templates hold."""
        n = turn.session.n
        if turn.index != 0 or n != len(turn.to_feed) or n > turn.session.layout.capacity:
            return False
        return self._store(turn, n)

    def at_cut(self, turn: Turn) -> bool:
        """After the chunk that ended at the turn's ``cut``: keep the slot's state there."""
        return turn.index == 0 and turn.session.n == turn.cut and self._store(turn, turn.cut)

    def _store(self, turn: Turn, n: int) -> bool:
        """Copy the state of the turn's slot after its first ``n`` input tokens (the
        whole stream) into a template slot, unless templates hold nearly all of it."""
        s = turn.session
        if n < self.min_tokens:
            return False
        ids = turn.to_feed[:n]
        covered, m = self._best(ids + [-1])  # -1: ids goes on, so a wrapped template of exactly ids counts
        if n - m < self.min_tokens:  # adds too little to what a template holds already
            if covered is not None:
                covered.last_used = time.monotonic()
            return False
        if covered is not None and m == len(covered.ids) and not covered.wrapped:  # it extends a template: overwrite that one
            slot = self.remove(covered)
        elif len(self.templates) < self.max_templates and self.slots.free:
            slot = self.slots.allocate()
        elif self.templates:
            slot = self.remove(self.coldest())
        else:
            return False
        tpl = Template(slot, ids, time.monotonic(), s.layout.capacity)
        self.copy_slot(s.slot, slot, tpl.rows(n))
        self.templates.append(tpl)
        return True
