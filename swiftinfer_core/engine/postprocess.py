"""A step's postprocessing: sampled tokens become the turns' stream chunks, and
ending turns hand their session back (pending tokens for the next round, a
fork's slot freed, the final chunk with usage and the session's record).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.conversation.chat_format import ChatFormat
from swiftinfer_core.engine.sampler import TokenLogprobs
from swiftinfer_core.engine.scheduler import ScheduledBatch, Scheduler
from swiftinfer_core.engine.session import Turn, TurnState
from swiftinfer_core.finish_reason import FinishReason
from swiftinfer_core.protocol import StreamChunk, Usage


@dataclass
class TurnEvent:
    turn: Turn
    chunk: StreamChunk


class Postprocessor:
    """Turns a step's sampled tokens into events; counts tokens generated and prefilled."""

    def __init__(self, scheduler: Scheduler, pool: KVPool, format: ChatFormat, eos_ids: set[int],
                 on_prefilled: Callable[[Turn], object] | None = None, on_cut: Callable[[Turn], object] | None = None):
        self.scheduler, self.pool, self.format, self.eos_ids = scheduler, pool, format, eos_ids
        self.on_prefilled = on_prefilled  # a turn's input is all fed (its first token just sampled): the prefix cache's offer
        self.on_cut = on_cut  # a turn's prefill reached its ``cut``: the prefix cache's at_cut
        self.tokens_generated = 0
        self.tokens_prefilled = 0
        self.deferred: list[tuple[Turn, int]] = []  # (turn, token) whose text waits for ``emit_deferred``

    def __call__(self, batch: ScheduledBatch, sampled: list[int | None], logprobs: list[TokenLogprobs | None],
                 defer: bool = False) -> list[TurnEvent]:
        """The step's events. With ``defer``, a token that cannot end its turn by its text
        (no stop strings; not the end token or the last of max_tokens) only advances the
        turn here: its text and chunk come from the next ``emit_deferred``, which the
        engine runs while the device computes the next step (core.EngineCore.step).
        A turn's text is deferred only once a chunk of it was sent, so the first text is as early as before."""
        events = self.emit_deferred() if self.deferred else []  # a turn's text stays in order whoever calls
        for seq, tok, lp in zip(batch.seqs, sampled, logprobs):
            turn, session = seq.turn, seq.turn.session
            session.fed(seq.token_ids)
            if turn.state is TurnState.PREFILL:
                turn.prefilled += len(seq.token_ids)
                session.prefilled_tokens += len(seq.token_ids)
                self.tokens_prefilled += len(seq.token_ids)
                if turn.cut == turn.prefilled and self.on_cut is not None:
                    self.on_cut(turn)
            if tok is None:
                continue
            if turn.state is TurnState.PREFILL and self.on_prefilled is not None:
                self.on_prefilled(turn)
            turn.state = TurnState.DECODE
            if turn.first_token_at is None:
                turn.first_token_at = time.monotonic()
            turn.output_ids.append(tok)
            if lp is not None:
                turn.output_logprobs.append(lp)
            session.generated_tokens += 1
            self.tokens_generated += 1
            reason = self._finish_reason(turn, tok)
            if turn.grammar is not None and not turn.grammar.accept(tok) and reason is None:
                reason = FinishReason.STOP  # cannot happen under the mask; if it did, the reply could not go on valid
            if defer and reason is None and not turn.detok.stop and turn.sent:  # the first text is never deferred: TTFT
                self.deferred.append((turn, tok))
                continue
            text = "" if (reason is FinishReason.STOP and tok in self.eos_ids) else turn.detok.add(tok)
            if turn.detok.stopped:
                reason = FinishReason.STOP
            if text:
                events.append(self._text_event(turn, text))
            if reason is not None:
                events.append(self.finish(turn, reason))
        return events

    def emit_deferred(self) -> list[TurnEvent]:
        """The deferred tokens' text, as ``__call__`` would have made it, in order. A turn
        finished since (aborted: its stream is closed) is skipped."""
        events = []
        for turn, tok in self.deferred:
            if turn.state is TurnState.DONE:
                continue
            text = turn.detok.add(tok)
            if text:
                events.append(self._text_event(turn, text))
        self.deferred.clear()
        return events

    def _text_event(self, turn: Turn, text: str) -> TurnEvent:
        """A mid-reply chunk: ``text`` with the ids (and logprobs) not yet sent."""
        prompt_tokens = self._prompt_count(turn)
        ids, lps = self._unsent(turn)
        return TurnEvent(turn, StreamChunk(text=text, token_ids=ids, logprobs=lps, prompt_logprobs=self._prompt_scores(turn), index=turn.index,
                                           prompt_tokens=prompt_tokens))

    def _unsent(self, turn: Turn) -> tuple[list[int], list[TokenLogprobs] | None]:
        """Sampled ids (and their logprobs, when asked) not yet in a chunk: a token
        whose text is an incomplete UTF-8 sequence goes out with the chunk that
        completes it, so every id is sent once."""
        ids = turn.output_ids[turn.sent :]
        lps = turn.output_logprobs[turn.sent :] if turn.params.logprobs else None
        turn.sent = len(turn.output_ids)
        return ids, lps

    def _finish_reason(self, turn: Turn, tok: int) -> FinishReason | None:
        if tok in self.eos_ids and not turn.params.ignore_eos:
            return FinishReason.STOP
        if len(turn.output_ids) >= turn.params.max_tokens:
            return FinishReason.LENGTH
        return None

    def finish(self, turn: Turn, reason: FinishReason) -> TurnEvent:
        """Close the turn (one choice of it): the last sampled token (never fed) and
        the template's closing become the session's pending tokens for the next
        round. Another choice's fork is dropped and its slot freed. The final
        chunk (usage, record) goes out with the last choice to end."""
        session, group = turn.session, turn.choices
        self.scheduler.remove(turn)
        if turn.index > 0:  # a fork: nothing of it stays
            self.pool.slots.release(session.slot)
            session.slot, session.turn = None, None
        elif turn.output_ids and turn.raw:  # a raw prompt's stream goes on as sampled, end token included
            session.pending = [turn.output_ids[-1]]
        elif turn.output_ids:
            session.pending = self.format.after_reply(turn.output_ids[-1], self.eos_ids)
        else:  # aborted before any output: the unfed input goes back to pending
            session.pending = turn.to_feed[turn.prefilled :]
        if turn.index == 0:
            session.rounds += 1
        last = group is None or group.finish_one()
        main = turn if group is None else group.main
        if last:  # the session takes turns again once every choice has ended
            main.session.turn = None
            main.session.last_used = time.monotonic()
        turn.state = TurnState.DONE
        late = [tok for t, tok in self.deferred if t is turn]  # an abort between a deferral and its emit
        if late:
            self.deferred = [(t, tok) for t, tok in self.deferred if t is not turn]
        tail = "".join(turn.detok.add(tok) for tok in late) + turn.detok.flush()
        prompt_tokens = self._prompt_count(turn)
        ids, lps = self._unsent(turn)
        if reason is FinishReason.STOP and ids and ids[-1] in self.eos_ids and not turn.params.ignore_eos:
            ids.pop()  # the end token is no output
            if lps:
                lps.pop()
        usage = record = None
        if last:
            usage = group.usage() if group is not None else Usage(
                prompt_tokens=turn.prompt_tokens, completion_tokens=len(turn.output_ids),
                prefilled_tokens=turn.prefilled - turn.reused, cached_tokens=turn.cached_tokens,
            )
            record = main.session.record()
        return TurnEvent(turn, StreamChunk(text=tail, token_ids=ids, finish_reason=reason, usage=usage, record=record,
                                           logprobs=lps, prompt_logprobs=self._prompt_scores(turn), index=turn.index,
                                           prompt_tokens=prompt_tokens))

    @staticmethod
    def _prompt_count(turn: Turn) -> int | None:
        """The turn's input tokens on a choice's first chunk (none of its ids sent yet: call
        before ``_unsent``), None after; a fork counts none of its own, so its main turn's."""
        if turn.sent:
            return None
        return (turn.choices.main if turn.choices is not None else turn).prompt_tokens

    @staticmethod
    def _prompt_scores(turn: Turn) -> list | None:
        """The input's logprobs, on the turn's first chunk only (prompt_scores.py)."""
        if turn.params.prompt_logprobs is None or turn.prompt_scores_sent:
            return None
        turn.prompt_scores_sent = True
        return turn.prompt_logprobs[-turn.prompt_tokens :] if turn.prompt_tokens else []
