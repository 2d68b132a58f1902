"""The engine protocol: what a Serve replica needs from any backend.

The native engine (CPU or GPU) and the TensorRT-LLM adapter both implement it,
so one deployment serves either, picked by configuration.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, AsyncIterator, Protocol, runtime_checkable

from swiftinfer_core.config import SamplingParams

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Usage:
    prompt_tokens: int  # tokens of this call's input (new turn only)
    completion_tokens: int
    prefilled_tokens: int  # tokens the engine actually ran for the input (includes the previous reply's closing)
    cached_tokens: int  # tokens of the conversation reused from the cache

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RawPrompt:
    """A turn's input as token ids, fed verbatim (``/v1/completions``): passed
    where chat messages go (``EngineProtocol.chat``'s ``messages``), with no
    chat template before it and none after the reply. On a session it continues
    the conversation's token stream as it is."""

    token_ids: list[int]


@dataclass(frozen=True)
class ToolPrompt:
    """Chat messages with the tools the chat template shows the model (OpenAI's
    tool objects), passed where chat messages go (``EngineProtocol.chat``'s
    ``messages``). Rendered in a conversation's first round only
    (conversation/chat_format.py); a backend or template without a place for
    tools refuses it with InvalidRequestError naming ``tools``."""

    messages: list[dict]
    tools: list[dict]


@dataclass
class StreamChunk:
    """One piece of a streamed reply, of choice ``index`` (``SamplingParams.n``).
    ``finish_reason`` is set on each choice's last chunk; ``usage`` only on the
    turn's final chunk (``final``), after every choice has finished. The native
    engine also puts the session's record as of the turn's end there (taken in
    its step thread, so a caller logging it need not wait for the engine lock,
    which a model step holds)."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    usage: Usage | None = None
    record: "SessionRecord | None" = None
    # with SamplingParams.logprobs: one engine.sampler.TokenLogprobs per id of token_ids, in order
    logprobs: list | None = None
    # with SamplingParams.prompt_logprobs, on the turn's first chunk: one per input token (None: nothing predicts it)
    prompt_logprobs: list | None = None
    index: int = 0  # the choice this chunk belongs to (0 when n == 1)
    # the turn's input tokens (Usage.prompt_tokens), on each choice's first chunk, so the replica can tell them
    # before the final chunk (TurnStart.prompt_tokens); None on the others, and from a backend that does not say
    prompt_tokens: int | None = None

    @property
    def final(self) -> bool:
        """The turn's last chunk: it carries the usage of all choices (and the record)."""
        return self.usage is not None


def merge_chunks(chunks: list[StreamChunk]) -> StreamChunk:
    """One chunk with the texts, ids and logprobs of ``chunks`` (all of one
    choice) in order; the finish reason, usage and record of the last (the
    prompt logprobs and token count of the first that has them)."""
    if len(chunks) == 1:
        return chunks[0]
    lps = None if chunks[-1].logprobs is None else [lp for c in chunks for lp in (c.logprobs or [])]
    prompt = next((c.prompt_logprobs for c in chunks if c.prompt_logprobs is not None), None)
    prompt_tokens = next((c.prompt_tokens for c in chunks if c.prompt_tokens is not None), None)
    return replace(chunks[-1], text="".join(c.text for c in chunks), token_ids=[t for c in chunks for t in c.token_ids], logprobs=lps,
                   prompt_logprobs=prompt, prompt_tokens=prompt_tokens)


def merge_per_choice(chunks: list[StreamChunk]) -> list[StreamChunk]:
    """``chunks`` (in stream order, of any choices) merged into one chunk per
    choice, in order of each choice's first chunk; the turn's final chunk, if
    among them, stays last. One chunk when the turn has one choice."""
    groups: dict[int, list[StreamChunk]] = {}
    for c in chunks:
        groups.setdefault(c.index, []).append(c)
    merged = [merge_chunks(g) for g in groups.values()]
    merged.sort(key=lambda c: c.final)  # stable: only the final one moves, to the end
    return merged


@dataclass
class SessionStats:
    session_id: str
    tokens_seen: int  # tokens fed through the model over the conversation's life
    cache_fill: int  # rows of the cache in use
    capacity: int  # sinks + window
    evictions: int  # tokens evicted from the cache
    rounds: int
    prefilled_tokens: int  # input tokens processed over all rounds
    generated_tokens: int
    recovered: bool  # rebuilt from a record (crash, idle eviction or migration by rebuild)
    resident: bool  # holds a cache slot now

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Absent:
    """``chat(..., expect=ABSENT)``: take the turn only if the engine holds no copy
    of the session (a replica starting a new conversation without reading the
    engine first); else StaleSessionError and nothing changes. A class, not an
    identity sentinel: it crosses the pipe to an engine process by pickle."""


ABSENT = Absent()


def _copied(value):
    """A list of ints copied, a dict deep-copied (asdict's copy semantics), else the value."""
    if isinstance(value, list):
        return list(value)
    return copy.deepcopy(value) if isinstance(value, dict) else value


@dataclass
class SessionRecord:
    """Everything needed to rebuild a conversation's cache elsewhere: the token
    ids of the sinks and of the window tail, the tokens not yet fed, and counters.
    Rebuilding re-runs ``sink_ids + window_ids`` as a prefill: the window's KV is
    recomputed without the context that had already been evicted."""

    session_id: str
    sink_ids: list[int]
    window_ids: list[int]
    pending_ids: list[int]  # sampled or templated tokens not yet in the cache
    tokens_seen: int
    rounds: int
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    history_hash: str = ""  # digest of the messages seen so far (for id-less clients)
    extra: dict = field(default_factory=dict)
    sampling_seed: int = 0  # a turn without a request seed samples with seed f(sampling_seed, rounds)

    def to_dict(self) -> dict:
        """asdict's result without its per-element walk over every token id (once per commit
        on the directory, which serves every replica; ids are ints, so copying each list suffices)."""
        return {f.name: _copied(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "SessionRecord":
        return cls(**d)


@dataclass
class KVSnapshot:
    """A resident conversation's cache, for migration to an engine with the same
    ``fingerprint`` (model, dtype, cache layout). ``k``/``v`` hold the slot's rows
    in use, ``[layers, kv_heads, rows, head_dim]`` CPU tensors; ``n`` is the
    stream index of the next token, which fixes where the ring continues. An
    FP8 cache's rows travel as cache/kv_fp8.Fp8KV (e4m3 values and their scales)."""

    fingerprint: str
    record: SessionRecord
    n: int
    k: Any
    v: Any

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass
class EngineStats:
    active_sessions: int  # sessions known to the engine
    resident_sessions: int  # sessions holding a slot
    free_slots: int
    total_slots: int
    running_requests: int
    waiting_requests: int
    tokens_generated: int
    tokens_prefilled: int
    evictions: int
    prefix_hits: int = 0  # turns whose input started from a shared prefix's copied rows (engine/prefix_cache.py)
    prefix_tokens: int = 0  # input tokens copied that way instead of computed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SessionView:
    """One consistent reading of the engine and one session, taken at once (a
    turn's start needs all three; separate calls would each wait for a step)."""

    engine: EngineStats
    record: SessionRecord | None  # None: the engine does not hold the session
    resident: bool  # its cache holds a slot now


@runtime_checkable
class EngineProtocol(Protocol):
    """What a replica calls. The required methods end in ``...``; the optional
    capabilities below them have a default here, so an engine subclasses this
    class (``class Engine(EngineProtocol)``) and overrides only what it has. The
    replica calls every method unconditionally, never probes for one."""

    def chat(self, session_id: str, messages: "list[dict] | RawPrompt", params: SamplingParams) -> AsyncIterator[StreamChunk]:
        """Append ``messages`` (only the new ones) to the session, creating it if
        needed, and stream the assistant's reply. A backend without raw prompts
        refuses a ``RawPrompt`` with InvalidRequestError."""
        ...

    def session_stats(self, session_id: str) -> SessionStats: ...

    def has_session(self, session_id: str) -> bool: ...

    def close_session(self, session_id: str) -> None: ...

    def session_ids(self) -> list[str]: ...

    def export_session(self, session_id: str) -> SessionRecord: ...

    def import_session(self, record: SessionRecord) -> None:
        """Register a session from a record; its cache is rebuilt on the next turn."""
        ...

    def stats(self) -> EngineStats: ...

    def view(self, session_id: str) -> SessionView: ...

    async def shutdown(self) -> None: ...

    # ---- optional capabilities (defaults: the engine does not have it) ----
    def checks_expect(self) -> bool:
        """True when ``chat(..., expect=record)`` takes the turn only if the engine
        holds exactly ``record`` in a cache slot (``expect=ABSENT``: only if it
        holds no copy of the session), else raises StaleSessionError and changes
        nothing: a replica's warm or new start without a reading first."""
        return False

    def warm_up(self) -> None:
        """Compile or load what the first turn would otherwise wait for."""

    def handoff_times(self) -> dict:
        """``engine.handoff.Handoff`` leg -> (p50, p99) seconds of a step's events on
        their way to the waiting streams, where they cross a process (ProcessEngine)."""
        return {}

    def check_health(self) -> None:
        """Raise when the engine can serve no more turns (a device fault), so Serve
        replaces the replica."""

    def slotless_ids(self) -> list[str]:
        """Sessions held without a KV slot (their next turn here rebuilds): one
        engine call where the engine has one, else one reading per session."""
        return [sid for sid in self.session_ids() if not self.view(sid).resident]

    def export_kv(self, session_id: str) -> KVSnapshot | None:
        """The session's cache, or None when it holds no slot (or cannot be moved):
        a drain then leaves only the record and the next owner rebuilds."""
        return None

    def import_kv(self, snapshot: KVSnapshot) -> bool:
        """Install a cache exported by a matching engine; False (nothing changed)
        when the fingerprint differs or no slot can be had: rebuild instead."""
        return False

    def inject_device_fault(self, sticky: bool = False) -> None:
        """Test-only: the next step faults on the device (engine/faults.py; ``sticky``:
        a CPU engine stops as a GPU one does after a real fault)."""
        raise PermissionError(f"{type(self).__name__} has no fault injection")
