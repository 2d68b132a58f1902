"""Turn an engine's streamed, cumulative output token ids into our ``StreamChunk``s.

Streaming backends report the whole output so far on every update; this class
takes the new tail, detokenises it incrementally (our own detokenizer, so text
and stop strings behave as in the native engine), and decides when the reply
is over: end-of-sequence (unless ``ignore_eos``), ``max_tokens``, or a stop
string. Tokens reported after that point are ignored.
"""

from __future__ import annotations

from typing import Sequence

from swiftinfer_core.config import SamplingParams
from swiftinfer_core.conversation.detokenizer import IncrementalDetokenizer
from swiftinfer_core.finish_reason import FinishReason
from swiftinfer_core.protocol import StreamChunk, Usage


class ReplyAssembler:
    def __init__(self, tokenizer, params: SamplingParams, eos_ids: Sequence[int], max_tokens: int, prompt_tokens: int | None = None):
        self.params = params
        self.prompt_tokens = prompt_tokens  # the turn's input tokens, told on the first chunk (StreamChunk.prompt_tokens)
        self.told = False  # a chunk went out
        self.eos_ids = frozenset(eos_ids)
        self.max_tokens = min(max_tokens, params.max_tokens)
        self.detok = IncrementalDetokenizer(tokenizer, params.stop)
        self.output_ids: list[int] = []
        self.reason: FinishReason | None = None  # set once the reply is complete on our side

    @property
    def done(self) -> bool:
        return self.reason is not None

    def take(self, cumulative_ids: Sequence[int]) -> list[StreamChunk]:
        """Chunks for the ids beyond those already taken."""
        chunks = []
        for tok in list(cumulative_ids[len(self.output_ids):]):
            if self.done:
                break
            self.output_ids.append(tok)
            if tok in self.eos_ids and not self.params.ignore_eos:
                self.reason = FinishReason.STOP
                continue  # the end token has no text
            text = self.detok.add(tok)
            if self.detok.stopped:
                self.reason = FinishReason.STOP
            elif len(self.output_ids) >= self.max_tokens:
                self.reason = FinishReason.LENGTH
            if text:
                chunks.append(StreamChunk(text=text, token_ids=[tok], prompt_tokens=self._prompt_count()))
        return chunks

    def _prompt_count(self) -> int | None:
        """``prompt_tokens`` on the first chunk, None after."""
        first, self.told = not self.told, True
        return self.prompt_tokens if first else None

    def end_reason(self, engine_finished: bool) -> FinishReason:
        """Why the reply ended: ours if we decided, else the engine's end (which,
        short of our limits, is a stop token or string it matched), else abort."""
        if self.reason is not None:
            return self.reason
        if len(self.output_ids) >= self.max_tokens:
            return FinishReason.LENGTH
        return FinishReason.STOP if engine_finished else FinishReason.ABORT

    def final(self, reason: FinishReason, usage: Usage) -> StreamChunk:
        return StreamChunk(text=self.detok.flush(), token_ids=[], finish_reason=reason, usage=usage, prompt_tokens=self._prompt_count())
