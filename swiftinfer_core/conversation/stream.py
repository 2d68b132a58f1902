"""One conversation's token stream, as a StreamingLLM cache holds it.

``n`` counts tokens fed into the cache (the stream index of the next token);
``sink_ids`` are the first ``sinks`` of them and ``window_ids`` a ring of the
``window`` most recent, so the cache can be rebuilt from ids alone. ``pending``
are tokens to feed before the next round's input (the last sampled token and
the template's closing). Counters and ``record()`` make the SessionRecord that
the session log and other replicas read.

Both engines keep one per conversation: the native engine (engine/session.py
``Session`` adds the cache slot and the turn in flight) and the TensorRT-LLM
adapter (backends/resubmit.py resubmits this stream every round).
"""

from __future__ import annotations

from collections import deque

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.protocol import SessionRecord, SessionStats


class Conversation:
    def __init__(self, session_id: str, layout: StreamLayout):
        self.id = session_id
        self.layout = layout
        self.n = 0
        self.sink_ids: list[int] = []
        self.window_ids: deque[int] = deque(maxlen=layout.window)
        self.pending: list[int] = []  # tokens to feed before the next round's input
        self.tokens_seen = 0
        self.rounds = 0
        self.prefilled_tokens = 0
        self.generated_tokens = 0
        self.recovered = False
        self.history_hash = ""
        self.sampling_seed = 0

    @property
    def fresh(self) -> bool:
        """Nothing fed or pending yet: the next round renders the chat template in full."""
        return self.rounds == 0 and self.n == 0 and not self.pending

    @property
    def resident(self) -> bool:
        """Whether an engine holds this stream's KV cache (never, here: see Session)."""
        return False

    def fed(self, ids: list[int]) -> None:
        """Record tokens that the model has just written into the cache."""
        for t in ids:
            if self.n < self.layout.sinks:
                self.sink_ids.append(t)
            else:
                self.window_ids.append(t)
            self.n += 1
        self.tokens_seen += len(ids)

    def cached_ids(self) -> list[int]:
        """The ids the cache holds, oldest first: sinks, then the window."""
        return self.sink_ids + list(self.window_ids)

    def record(self) -> SessionRecord:
        return SessionRecord(
            session_id=self.id, sink_ids=list(self.sink_ids), window_ids=list(self.window_ids),
            pending_ids=list(self.pending), tokens_seen=self.tokens_seen, rounds=self.rounds,
            prefilled_tokens=self.prefilled_tokens, generated_tokens=self.generated_tokens,
            history_hash=self.history_hash, sampling_seed=self.sampling_seed,
        )

    @classmethod
    def from_record(cls, rec: SessionRecord, layout: StreamLayout):
        """The conversation of ``rec`` with no cache: everything it held is pending, to be fed again."""
        s = cls(rec.session_id, layout)
        s.pending = list(rec.sink_ids) + list(rec.window_ids) + list(rec.pending_ids)
        s.tokens_seen, s.rounds = rec.tokens_seen, rec.rounds
        s.prefilled_tokens, s.generated_tokens = rec.prefilled_tokens, rec.generated_tokens
        s.history_hash = rec.history_hash
        s.sampling_seed = rec.sampling_seed
        s.recovered = True
        return s

    def stats(self) -> SessionStats:
        return SessionStats(
            session_id=self.id, tokens_seen=self.tokens_seen, cache_fill=self.layout.fill(self.n),
            capacity=self.layout.capacity, evictions=max(0, self.tokens_seen - self.layout.fill(self.n)),
            rounds=self.rounds, prefilled_tokens=self.prefilled_tokens, generated_tokens=self.generated_tokens,
            recovered=self.recovered, resident=self.resident,
        )
