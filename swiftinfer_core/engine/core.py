"""The synchronous engine: sessions, one scheduler, one model runner.

``step()`` reads schedule -> run -> postprocess. Not thread-safe on its own;
``engine.Engine`` drives it from one thread and serialises API calls.
"""

from __future__ import annotations

import hashlib
import time

import torch

from swiftinfer_core.config import EngineConfig, SamplingParams
from swiftinfer_core.engine.batch_runner import BatchRunner
from swiftinfer_core.engine.choices import fork_choices, release_reserved
from swiftinfer_core.engine.cpu_threads import StepThreads
from swiftinfer_core.conversation.chat_format import ChatFormat, validate_messages
from swiftinfer_core.conversation.detokenizer import IncrementalDetokenizer
from swiftinfer_core.engine.engine_model import EngineModel, engine_runner
from swiftinfer_core.engine.grammar import Grammars
from swiftinfer_core.engine.kv_transfer import SessionTransfer, kv_fingerprint
from swiftinfer_core.engine.penalties import VisibleTokens, needs_counts
from swiftinfer_core.engine.postprocess import Postprocessor, TurnEvent
from swiftinfer_core.engine.prefix_cache import PrefixCache
from swiftinfer_core.engine.sampler import Uniforms
from swiftinfer_core.engine.scheduler import Scheduler
from swiftinfer_core.engine.session import Choices, Session, Turn, TurnState
from swiftinfer_core.engine.slots import SlotKeeper
from swiftinfer_core.engine.step_trace import StepTrace
from swiftinfer_core.engine.warm_up import warm_up_core
from swiftinfer_core.errors import (
    InvalidRequestError,
    PromptTooLongError,
    SessionBusyError,
    SessionNotFoundError,
    StaleSessionError,
)
from swiftinfer_core.finish_reason import FinishReason
from swiftinfer_core.kernels.attention import TritonAttention
from swiftinfer_core.session_id import check_session_id
from swiftinfer_core.protocol import Absent, EngineStats, RawPrompt, ToolPrompt, SessionRecord, SessionStats, SessionView
from swiftinfer_core.runner import piecewise


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and machines)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _raw_ids(prompt: RawPrompt) -> list[int]:
    ids = prompt.token_ids
    if not isinstance(ids, list) or not ids or not all(type(t) is int and t >= 0 for t in ids):
        raise InvalidRequestError("a raw prompt must be a non-empty list of token ids >= 0")
    return list(ids)


class EngineCore(SessionTransfer):
    def __init__(self, cfg: EngineConfig, loaded: EngineModel | None = None):
        self.cfg = cfg
        m, self.runner = engine_runner(cfg, loaded)  # ModelRunner, or TPRunner when cfg.tp_size > 1
        self.batches = BatchRunner(self.runner)
        self.loaded = m
        self.layout, self.pool, self.tokenizer = m.layout, m.pool, m.tokenizer
        self.format = ChatFormat(m.tokenizer, cfg.allow_control_tokens_in_content, cfg.max_turn_tokens, cfg.chat_template)
        self.eos_ids = set(m.args.eos_token_ids) | {m.tokenizer.eos_token_id} - {None}
        self.grammars = Grammars(m.tokenizer, m.args.vocab_size, self.eos_ids)  # structured output, compiled on first use
        if cfg.cuda_graphs and m.device.type == "cuda" and isinstance(m.attn, TritonAttention):
            self.runner.capture_decode_graphs(min(m.pool.num_slots, cfg.max_batch_tokens))
            if cfg.piecewise_graphs and cfg.tp_size == 1 and piecewise.supports(m.model):
                self.runner.capture_piecewise_graphs(min(piecewise.BUCKETS[-1], cfg.max_batch_tokens))
        self.sessions: dict[str, Session] = {}
        self.prefix = PrefixCache(m.pool.slots, self.runner.copy_slot, cfg.prefix_cache_slots, cfg.prefix_cache_min_tokens) if cfg.prefix_cache_slots else None
        self.slots = SlotKeeper(m.pool, self.sessions, self.prefix)
        self.scheduler = Scheduler(cfg.max_batch_tokens, cfg.prefill_chunk, self.slots.admit, self._fork)
        self.kv_fingerprint = kv_fingerprint(cfg, m)  # which engines may take this one's caches (kv_transfer.py)
        self.post = Postprocessor(self.scheduler, m.pool, self.format, self.eos_ids, self.prefix.offer if self.prefix else None,
                                  self.prefix.at_cut if self.prefix else None)
        decoder = getattr(m.model, "cpu_decode", None)  # set where the C decode kernels run (runner/build.py)
        self.cpu_threads = StepThreads(decoder.kernels) if decoder is not None else None
        self.trace = StepTrace(cfg.step_trace) if cfg.step_trace else None
        # the host's postprocessing overlaps the device's next step only where the device runs asynchronously
        self.overlap = cfg.overlap_postprocessing and m.device.type == "cuda"

    # ---- API (called under the engine lock) ----

    def add_turn(self, session_id: str, messages: list[dict], params: SamplingParams,
                 expect: SessionRecord | Absent | None = None) -> Turn:
        """Queue the next turn of ``session_id``. With ``expect``, only when this
        engine holds the session in a cache slot with exactly that record (a
        replica's warm start: no separate reading of the engine first), or with
        ``ABSENT`` only when it holds no copy of it (a new start); else
        StaleSessionError and nothing changes."""
        check_session_id(session_id)
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams")
        raw = isinstance(messages, RawPrompt)
        tools = None
        if isinstance(messages, ToolPrompt):  # tools the template shows (a conversation's first round)
            tools, messages = messages.tools, messages.messages
        if raw:
            prompt = _raw_ids(messages)
        else:
            messages = validate_messages(messages)
        session = self.sessions.get(session_id)
        if isinstance(expect, Absent):
            if session is not None:
                raise StaleSessionError(f"session {session_id!r} has a copy here; a new start expected none")
        elif expect is not None and (session is None or session.slot is None or session.turn is not None or session.record() != expect):
            raise StaleSessionError(f"session {session_id!r} here is not the expected resident copy")
        if session is not None and session.turn is not None:
            raise SessionBusyError(f"session {session_id!r} already has a turn in flight")
        if not raw:
            fresh = session is None or session.fresh
            prompt = self.format.first_round(messages, tools) if fresh else self.format.next_round(messages)
        if len(prompt) > self.cfg.max_turn_tokens:
            raise PromptTooLongError(f"the new messages are {len(prompt)} tokens; the limit is {self.cfg.max_turn_tokens}")
        top, vocab = max(prompt, default=-1), self.loaded.args.vocab_size
        if top >= vocab:  # a tokenizer larger than the model's embedding
            raise InvalidRequestError(f"the messages encode to token id {top}, outside the model's vocabulary of {vocab}")
        if params.logit_bias and max(params.logit_bias) >= vocab:
            raise InvalidRequestError(f"logit_bias: token id {max(params.logit_bias)} is outside the model's vocabulary of {vocab}")
        self._check_choices(params.n)
        grammar = self.grammars.start(params.grammar) if params.grammar is not None else None  # before any state changes
        if session is None:
            session = self.sessions[session_id] = Session(session_id, self.layout)
            session.sampling_seed = derive_seed(self.cfg.seed, session_id)
        # Sampling state is (session seed, round): a session rebuilt on any engine draws the same.
        seed = params.seed if params.seed is not None else derive_seed(session.sampling_seed, session.rounds)
        gen = torch.Generator().manual_seed(seed)
        turn = Turn(
            session=session, params=params, to_feed=session.pending + prompt, prompt_tokens=len(prompt),
            detok=IncrementalDetokenizer(self.tokenizer, params.stop), generator=Uniforms(gen),
            cached_tokens=self.layout.fill(session.n), raw=raw, grammar=grammar,
        )
        self._sampling_extras(turn)
        if params.n > 1:  # choice i > 0 draws from seed + i, or from (session seed, round, i): engine/choices.py
            seeds = [params.seed + i if params.seed is not None else derive_seed(session.sampling_seed, session.rounds, i) for i in range(1, params.n)]
            turn.choices = Choices(turn, params.n, seeds)
        if params.prompt_logprobs is not None and not session.pending:
            turn.prompt_logprobs.append(None)  # the input starts to_feed: nothing before it is scored
        session.pending = []
        session.turn = turn
        session.last_used = time.monotonic()
        self.scheduler.add(turn)
        return turn

    def _check_choices(self, n: int) -> None:
        """A turn with ``n`` choices holds ``n`` cache slots at once (engine/choices.py)."""
        if n > self.pool.num_slots:
            raise InvalidRequestError(f"n: {n} choices need {n} cache slots at once; this engine has {self.pool.num_slots}")

    def _sampling_extras(self, turn: Turn) -> None:
        """What the sampler needs besides the params (engine/penalties.py)."""
        p = turn.params
        if needs_counts(p):
            turn.visible = VisibleTokens(self.layout.sinks)
        if p.min_tokens and not p.ignore_eos:
            turn.min_tokens_ban = sorted(self.eos_ids)
        turn.adjusts = turn.visible is not None or bool(turn.min_tokens_ban) or bool(p.logit_bias)

    def abort(self, turn: Turn) -> None:
        """Stop a turn (client went away), every choice of it. The session stays
        consistent: what was fed stays fed."""
        group = turn.choices
        if group is not None and turn.index == 0:
            release_reserved(group, self.pool.slots)
            for fork in group.forks:
                self._abort_one(fork)
        self._abort_one(turn)

    def _abort_one(self, turn: Turn) -> None:
        if turn.state is TurnState.DONE:
            return
        turn.aborted = True
        if self.trace is not None:
            self.trace.forget(turn)
        self.scheduler.remove(turn)
        self.post.finish(turn, FinishReason.ABORT)

    def session(self, session_id: str) -> Session:
        s = self.sessions.get(session_id)
        if s is None:
            raise SessionNotFoundError(f"no session {session_id!r}")
        return s

    def close_session(self, session_id: str) -> None:
        s = self.session(session_id)
        if s.turn is not None:
            self.abort(s.turn)
        if s.slot is not None:
            self.pool.slots.release(s.slot)
        del self.sessions[session_id]

    def has_session(self, session_id: str) -> bool:
        return session_id in self.sessions

    def session_ids(self) -> list[str]:
        return list(self.sessions)

    def slotless_ids(self) -> list[str]:
        return [sid for sid, s in self.sessions.items() if s.slot is None]

    def session_stats(self, session_id: str) -> SessionStats:
        return self.session(session_id).stats()

    def view(self, session_id: str) -> SessionView:
        s = self.sessions.get(session_id)
        return SessionView(self.stats(), s.record() if s is not None else None, s is not None and s.slot is not None)

    def stats(self) -> EngineStats:
        resident = sum(1 for s in self.sessions.values() if s.slot is not None)
        return EngineStats(
            active_sessions=len(self.sessions), resident_sessions=resident,
            free_slots=self.slots.free, total_slots=self.pool.num_slots,
            running_requests=len(self.scheduler.running), waiting_requests=len(self.scheduler.waiting),
            tokens_generated=self.post.tokens_generated, tokens_prefilled=self.post.tokens_prefilled,
            evictions=sum(s.stats().evictions for s in self.sessions.values()),
            prefix_hits=self.prefix.hits if self.prefix else 0, prefix_tokens=self.prefix.tokens if self.prefix else 0,
        )

    def close(self) -> None:
        """Free what the runner holds outside this process (tensor-parallel workers)."""
        if self.trace is not None:
            self.trace.flush()
        self.runner.close()

    def warm_up(self) -> None:
        """Compile every kernel the first real turns would, leaving no session, slot,
        counter or prefix template behind (warm_up.py)."""
        warm_up_core(self)

    # ---- the loop ----

    def step(self) -> list[TurnEvent]:
        t_start = time.monotonic()
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return self.post.emit_deferred()
        if self.cpu_threads is not None:
            self.cpu_threads.before_step(batch.is_decode)
        t_run = time.monotonic()
        launched = self.batches.launch(batch)
        early = self.post.emit_deferred()  # the last step's text while the device runs this one
        sampled, logprobs, scores = launched.wait()
        for i, items in scores.items():
            batch.seqs[i].turn.prompt_logprobs.extend(items)
        t_post = time.monotonic()
        events = self.post(batch, sampled, logprobs, defer=self.overlap)
        if self.trace is not None:
            self.trace.record(batch, self.batches.path, t_start, t_run, t_post, time.monotonic(), len(self.scheduler.waiting))
        return early + events

    @property
    def has_work(self) -> bool:
        """Turns to step, or a step's text still to emit."""
        return self.scheduler.has_work or bool(self.post.deferred)

    def _fork(self, turn: Turn) -> list[Turn]:
        """The turn's input is fed but for its last token: copy its cache into the
        reserved slots and start the other choices (engine/choices.py)."""
        return fork_choices(turn.choices, self.runner.copy_slot, lambda session, index, seed: self._choice_turn(turn, session, index, seed))

    def _choice_turn(self, main: Turn, session: Session, index: int, seed: int) -> Turn:
        """Choice ``index`` of ``main``'s turn on a fork of its session: it feeds the
        input's last token, then samples on its own."""
        p = main.params
        turn = Turn(
            session=session, params=p, to_feed=main.to_feed[-1:], prompt_tokens=0,
            detok=IncrementalDetokenizer(self.tokenizer, p.stop), generator=Uniforms(torch.Generator().manual_seed(seed)),
            cached_tokens=main.cached_tokens, raw=main.raw, grammar=self.grammars.start(p.grammar) if p.grammar is not None else None,
            out=main.out, loop=main.loop, state=TurnState.PREFILL, prompt_scores_sent=True, index=index, choices=main.choices,
        )
        self._sampling_extras(turn)
        session.turn = turn
        return turn
