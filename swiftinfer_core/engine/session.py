"""Plain records of the hot path: a conversation and one turn of it."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.config import SamplingParams
from swiftinfer_core.engine.detok import IncrementalDetokenizer
from swiftinfer_core.engine.grammar import GrammarState
from swiftinfer_core.engine.penalties import VisibleTokens
from swiftinfer_core.engine.sampler import TokenLogprobs
from swiftinfer_core.protocol import SessionRecord, SessionStats


class Session:
    """One conversation. ``n`` counts tokens fed into its current cache slot (the
    stream index of the next token); ``sink_ids``/``window_ids`` mirror what the
    cache holds, so the session can be rebuilt from ids alone."""

    def __init__(self, session_id: str, layout: StreamLayout):
        self.id = session_id
        self.layout = layout
        self.slot: int | None = None
        self.n = 0
        self.sink_ids: list[int] = []
        self.window_ids: deque[int] = deque(maxlen=layout.window)
        self.pending: list[int] = []  # tokens to feed before the next round's input
        self.tokens_seen = 0
        self.rounds = 0
        self.prefilled_tokens = 0
        self.generated_tokens = 0
        self.recovered = False
        self.turn: "Turn | None" = None
        self.last_used = time.monotonic()
        self.history_hash = ""
        self.sampling_seed = 0

    def fed(self, ids: list[int]) -> None:
        """Record tokens that the model has just written into the cache."""
        for t in ids:
            if self.n < self.layout.sinks:
                self.sink_ids.append(t)
            else:
                self.window_ids.append(t)
            self.n += 1
        self.tokens_seen += len(ids)

    def drop_cache(self) -> None:
        """Forget the KV (slot released by the caller); the next turn rebuilds it from ids."""
        self.pending = self.sink_ids + list(self.window_ids) + self.pending
        self.sink_ids, self.window_ids = [], deque(maxlen=self.layout.window)
        self.slot, self.n = None, 0
        self.recovered = True

    def record(self) -> SessionRecord:
        return SessionRecord(
            session_id=self.id, sink_ids=list(self.sink_ids), window_ids=list(self.window_ids),
            pending_ids=list(self.pending), tokens_seen=self.tokens_seen, rounds=self.rounds,
            prefilled_tokens=self.prefilled_tokens, generated_tokens=self.generated_tokens,
            history_hash=self.history_hash, sampling_seed=self.sampling_seed,
        )

    @classmethod
    def from_record(cls, rec: SessionRecord, layout: StreamLayout) -> "Session":
        s = cls(rec.session_id, layout)
        s.pending = list(rec.sink_ids) + list(rec.window_ids) + list(rec.pending_ids)
        s.tokens_seen, s.rounds = rec.tokens_seen, rec.rounds
        s.prefilled_tokens, s.generated_tokens = rec.prefilled_tokens, rec.generated_tokens
        s.history_hash = rec.history_hash
        s.sampling_seed = rec.sampling_seed
        s.recovered = True
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

    def stats(self) -> SessionStats:
        return SessionStats(
            session_id=self.id, tokens_seen=self.tokens_seen, cache_fill=self.layout.fill(self.n),
            capacity=self.layout.capacity, evictions=max(0, self.tokens_seen - self.layout.fill(self.n)),
            rounds=self.rounds, prefilled_tokens=self.prefilled_tokens, generated_tokens=self.generated_tokens,
            recovered=self.recovered, resident=self.slot is not None,
        )


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
    generator: torch.Generator | None
    out: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    state: TurnState = TurnState.WAITING
    output_ids: list[int] = field(default_factory=list)
    sent: int = 0  # output_ids[:sent] went out in chunks (a token whose text is not complete yet waits)
    prefilled: int = 0
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

    @property
    def next_token(self) -> int:
        """The last sampled token, fed at the next decode step."""
        return self.output_ids[-1]
