"""StreamingLLM cache semantics, in one place.

A conversation's stream is the sequence of tokens fed to the model, numbered
0, 1, 2, ... (the *stream index*). Its cache keeps the first ``sinks`` tokens
(the attention sinks) and a rolling window of the ``window`` most recent
tokens, the token being processed included. So when token ``t`` is processed it
attends to

    keys(t) = {0 .. sinks-1}  ∪  {max(sinks, t-window+1) .. t}

Positions are assigned inside the cache, not in the text: the attended keys, in
stream order, get positions 0, 1, 2, ..., and the query gets the last one,
``query_position(t) = min(t, sinks+window-1)``. The paper's example (sinks 4,
window 4): decoding token 9 over cache [0,1,2,3,6,7,8] attends to
[0,1,2,3,6,7,8,9] at positions 0..7.

Physical layout of one conversation's slot (``capacity = sinks + window`` rows
per layer and KV head): sink token ``u < sinks`` lives in row ``u``; window
token ``u`` lives in row ``sinks + (u - sinks) % window`` (a ring, so eviction
is O(1): the newest token overwrites the oldest). Keys are stored before RoPE.

RoPE scores depend only on the difference of the query's and key's positions,
so kernels may rotate with any positions that preserve these differences:

- sink key ``u`` seen from query ``t``: ``query_position(t) - u``;
- window key ``u`` seen from query ``t``: ``t - u`` (the true distance).

Both decode and chunked prefill use :func:`rope_positions` below to keep all
rotation angles inside ``[-chunk, capacity)``, never at the raw stream index
(which may be in the millions, where float32 angles lose their precision).

Layer kinds (kernels/reference.LayerAttn; model/layers.layer_specs builds them).
Every layer of a model shares the slot layout above; they differ only in what
they see of it and how a key's position enters the score:

- *Global* layers (every layer of most models): exactly the rules above.
- *Local* layers (Gemma 2 / 3's ``sliding_attention``, model window ``L``)
  attend to ``keys(t) ∩ {t-L+1 .. t}``, at the same positions as a global layer.
  With ``window >= L`` that is exactly the model's own sliding window at true
  distances: a window key's distance is ``t - u`` already, and a sink is inside
  ``{t-L+1 .. t}`` only while ``t < sinks + L <= capacity``, when
  ``query_position(t) = t``. So the streaming cache (sinks + window) changes
  only the global layers. With ``window < L`` a local layer sees the cached
  window, like a global one without its sinks (nothing more is stored).
- Each layer has its own RoPE frequencies (Gemma 3: theta 10k on local
  layers, 1M with scaling on global ones); positions are the same.
- *ALiBi* (MPT): no rotation; the score gets ``-slope * d`` where ``d`` is the
  same distance RoPE would see: ``query_position(t) - u`` for a sink key,
  ``t - u`` for a window key. That is the paper's MPT setting: distances
  inside the cache, not in the text.
- *Soft-cap* (Gemma 2): ``cap * tanh(score / cap)`` before the mask and ALiBi.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamLayout:
    sinks: int
    window: int

    def __post_init__(self) -> None:
        if self.sinks < 0 or self.window < 1:
            raise ValueError(f"need sinks >= 0 and window >= 1, got {self.sinks}, {self.window}")

    @property
    def capacity(self) -> int:
        return self.sinks + self.window

    def row(self, u: int) -> int:
        """Physical row of stream token ``u``."""
        if u < self.sinks:
            return u
        return self.sinks + (u - self.sinks) % self.window

    def window_start(self, t: int) -> int:
        """First window token that query ``t`` attends to."""
        return max(self.sinks, t - self.window + 1)

    def attended(self, t: int) -> list[int]:
        """Stream indices that query ``t`` attends to, in stream order."""
        sinks = list(range(min(self.sinks, t + 1)))
        return sinks + list(range(self.window_start(t), t + 1))

    def query_position(self, t: int) -> int:
        return min(t, self.capacity - 1)

    def cache_positions(self, t: int) -> list[int]:
        """Positions inside the cache of ``attended(t)``: 0 .. len-1."""
        return list(range(len(self.attended(t))))

    def cached_after(self, n: int) -> list[int]:
        """Stream indices held in the slot once ``n`` tokens have been fed."""
        if n == 0:
            return []
        return self.attended(n - 1)

    def fill(self, n: int) -> int:
        """Rows in use once ``n`` tokens have been fed."""
        return min(n, self.capacity)

    def evicted(self, n: int) -> int:
        """Tokens evicted from the cache once ``n`` tokens have been fed."""
        return max(0, n - self.capacity)

    def rope_shift(self, last: int) -> int:
        """Offset subtracted from stream indices when rotating a step whose last
        query is ``last``: window keys and queries rotate at ``u - shift``.
        Chosen so the last query sits at its cache position."""
        return max(0, last - (self.capacity - 1))
