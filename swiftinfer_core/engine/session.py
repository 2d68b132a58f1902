"""Plain records of the hot path: a conversation and one turn of it."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.config import SamplingParams
from swiftinfer_core.conversation.detokenizer import IncrementalDetokenizer
from swiftinfer_core.conversation.stream import Conversation
from swiftinfer_core.engine.grammar import GrammarState
from swiftinfer_core.engine.penalties import VisibleTokens
from swiftinfer_core.engine.sampler import TokenLogprobs, Uniforms
from swiftinfer_core.protocol import SessionRecord, Usage


class Session(Conversation):
    """One conversation in the native engine: its token stream (Conversation)
    plus the cache slot that holds it and the turn in flight."""

    def __init__(self, session_id: str, layout: StreamLayout):
        super().__init__(session_id, layout)
        self.slot: int | None = None
        self.turn: "Turn | None" = None
        self.last_used = time.monotonic()

    @property
    def resident(self) -> bool:
        return self.slot is not None

    def drop_cache(self) -> None:
        """Forget the KV (slot released by the caller); the next turn rebuilds it from ids."""
        self.pending = self.cached_ids() + self.pending
        self.sink_ids, self.window_ids = [], deque(maxlen=self.layout.window)
        self.slot, self.n = None, 0
        self.recovered = True

    def fork(self, slot: int) -> "Session":
        """A copy of this conversation's token stream whose cache is ``slot``
        (the caller copied the rows there): another choice of the same turn.
        Never registered as a session; it ends with its choice."""
        s = Session(self.id, self.layout)
        s.n, s.sink_ids, s.slot = self.n, list(self.sink_ids), slot
        s.window_ids.extend(self.window_ids)
        return s

    @classmethod
    def from_snapshot(cls, rec: SessionRecord, n: int, slot: int, layout: StreamLayout) -> "Session":
        """A session whose cache rows were copied into ``slot`` as they were: only
        the record's pending tokens remain to be fed."""
        s = cls.from_record(rec, layout)
        s.pending = list(rec.pending_ids)
        s.sink_ids = list(rec.sink_ids)
        s.window_ids.extend(rec.window_ids)
        s.n, s.slot, s.recovered = n, slot, False
        return s


class TurnState(Enum):
    WAITING = 0  # no cache slot yet
    PREFILL = 1
    DECODE = 2
    DONE = 3


@dataclass
class Turn:
    """One call of ``chat``: the input to feed, then the reply being generated."""

    session: Session
    params: SamplingParams
    to_feed: list[int]  # input tokens not yet run through the model
    prompt_tokens: int
    detok: IncrementalDetokenizer
    generator: Uniforms | None  # the turn's seeded draws (engine/sampler.py)
    out: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    state: TurnState = TurnState.WAITING
    output_ids: list[int] = field(default_factory=list)
    sent: int = 0  # output_ids[:sent] went out in chunks (a token whose text is not complete yet waits)
    prefilled: int = 0  # to_feed[:prefilled] is in the cache (computed, or copied: ``reused``)
    reused: int = 0  # of those, tokens whose rows came from the prefix cache (engine/prefix_cache.py)
    cut: int | None = None  # a prefill chunk ends here and the prefix cache keeps the slot's state (engine/prefix_cache.py)
    cached_tokens: int = 0
    raw: bool = False  # input given as token ids (protocol.RawPrompt): no chat template after the reply
    aborted: bool = False
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    # sampling extras (engine/penalties.py); ``adjusts`` False: the sampler skips this turn's row
    adjusts: bool = False
    visible: VisibleTokens | None = None  # counts of the cache's tokens, for penalties
    min_tokens_ban: list[int] = field(default_factory=list)  # end-token ids, masked until min_tokens
    output_logprobs: list[TokenLogprobs] = field(default_factory=list)  # parallel to output_ids when params.logprobs
    prompt_logprobs: list[TokenLogprobs | None] = field(default_factory=list)  # to_feed[1:] scored (to_feed[0] too when None)
    prompt_scores_sent: bool = False
    grammar: GrammarState | None = None  # structured output (engine/grammar.py): this turn's matcher, dropped with it
    index: int = 0  # choice index (SamplingParams.n); 0 is the session's own
    choices: Choices | None = None  # the turn's choices when n > 1 (engine/choices.py), shared by all of them

    @property
    def feed_end(self) -> int:
        """How much of ``to_feed`` may be fed now (a turn with choices stops before its last token until it forks)."""
        if self.choices is not None and self.index == 0:
            return self.choices.feed_end()
        return len(self.to_feed)

    @property
    def next_token(self) -> int:
        """The last sampled token, fed at the next decode step."""
        return self.output_ids[-1]


@dataclass
class Choices:
    """The choices of one turn with ``n`` > 1 (engine/choices.py forks them);
    ``main`` (choice 0) is the session's own turn. Shared by all its turns."""

    main: Turn
    n: int
    seeds: list[int]  # generator seeds of choices 1..n-1
    reserved: list[int] = field(default_factory=list)  # slots taken at admission for choices 1..n-1, until the fork
    forks: list[Turn] = field(default_factory=list)  # choices 1..n-1, once forked
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

    def finish_one(self) -> bool:
        """One choice ended; True when it was the last."""
        self.live -= 1
        return self.live == 0

    def usage(self) -> Usage:
        """The input once, the outputs of every choice summed (as OpenAI counts n)."""
        m = self.main
        out = len(m.output_ids) + sum(len(t.output_ids) for t in self.forks)
        return Usage(prompt_tokens=m.prompt_tokens, completion_tokens=out, prefilled_tokens=m.prefilled - m.reused, cached_tokens=m.cached_tokens)
