"""OpenAI response bodies and the SSE stream of one turn.

A turn arrives from the replica as ``TurnStart`` followed by ``StreamChunk``s;
``ChatResponse`` turns that into either one ``chat.completion`` body or a stream of
``chat.completion.chunk`` events (``data: {...}`` lines, then ``data: [DONE]``).
Usage rides on the final chunk (with ``finish_reason``), extended with
``prefilled_tokens`` and ``cached_tokens`` so clients see what the cache saved.
With ``logprobs`` each chunk carries the logprobs of its own tokens (the
engine's per-token ``StreamChunk.logprobs``, named through ``codec``).

A reply that may hold tool calls (``tools``: the request's ToolPlan,
structured_schema.py) is parsed in the chat template's tool syntax
(swiftinfer_core/conversation/tool_syntax.py) into ``tool_calls`` with
``finish_reason: "tool_calls"``; streamed, its text is held back and goes out
whole at the choice's end, as the calls (with any text before them as
``content``) or as text when it holds no whole call (a call cut short by
``max_tokens`` or a stop string goes out as text, with its own finish reason).

With ``n`` choices every event names its choice (``index``, from the engine's
``StreamChunk.index``); each choice has its own finish reason, logprobs and
call, and the usage (input once, outputs summed) rides on the turn's final chunk.

With vLLM's ``stream_options.continuous_usage_stats`` (and ``include_usage``)
every chunk before the final one (the role chunks too, as in vLLM) carries the
usage so far as well, in vLLM's shape (``prompt_tokens``, ``completion_tokens``,
``total_tokens``; the input's count comes with the TurnStart): the completion
tokens are those streamed so far, counting the chunk's own
(``StreamChunk.token_ids``) and summed over the choices (vLLM counts each
choice's own; the sum rises along the stream to the final chunk's total). An
end token is no streamed token, so the final chunk's count can be one more than
the last content chunk's; a replay streams text without ids, so its counts stay
0 until the final chunk.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from deployments.http.errors import error_body
from deployments.http.metrics import ServiceMetrics
from deployments.messages import TurnStart
from deployments.http.tokens import TextCodec
from deployments.http.structured_schema import ToolPlan
from deployments.http.tool_calls import tool_call
from swiftinfer_core.protocol import StreamChunk, Usage

SSE_DONE = b"data: [DONE]\n\n"


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def usage_body(u: Usage) -> dict:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "prefilled_tokens": u.prefilled_tokens,
        "cached_tokens": u.cached_tokens,
    }


@dataclass
class ChatResponse:
    """One turn in flight: the replica's event stream after its ``TurnStart``."""

    model: str
    start: TurnStart
    events: AsyncIterator  # remaining StreamChunks from the replica
    metrics: ServiceMetrics
    t0: float  # when the ingress received the request (perf_counter)
    first_at: float  # when the TurnStart arrived, i.e. the first token exists
    codec: TextCodec | None = None  # set when the request asked for logprobs
    tools: ToolPlan | None = None  # the reply may be (or must be) calls of these tools (structured_schema.py)
    n: int = 1  # choices (SamplingParams.n)
    continuous_usage: bool = False  # every chunk carries the usage so far (SamplingRequest.continuous_usage)
    streamed: int = 0  # completion tokens of every choice received so far
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def combine(cls, turns: list["ChatResponse"]) -> "ChatResponse":
        """The response of a request that ran ``turns`` (several only for a batch of text prompts)."""
        (turn,) = turns
        return turn

    def _logprobs(self, chunks: list[StreamChunk]) -> dict | None:
        if self.codec is None:
            return None
        return {"content": self.codec.chat_logprobs([lp for c in chunks for lp in (c.logprobs or [])]), "refusal": None}

    def _meta(self) -> dict:
        return {"session_id": self.start.session_id, "replica_id": self.start.replica_id, "cache": self.start.cache.value}

    def _chunk(self, delta: dict, finish_reason: str | None = None, usage: Usage | None = None,
               logprobs: dict | None = None, index: int = 0) -> dict:
        body = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
        }
        if usage is not None:
            body["usage"] = usage_body(usage)
            body.update(self._meta())
        elif self.continuous_usage:
            body["usage"] = self._usage_so_far()
        return body

    def _usage_so_far(self, last: Usage | None = None) -> dict:
        """The running usage (continuous_usage_stats): the turn's input tokens and the completion
        tokens streamed so far, over all choices; ``last``: a finished turn's, in that shape."""
        if last is not None:
            prompt, out = last.prompt_tokens, last.completion_tokens
        else:  # None: a backend that does not tell it (both here do, StreamChunk.prompt_tokens)
            prompt, out = self.start.prompt_tokens or 0, self.streamed
        return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}

    def _observe(self, first_at: float, last: StreamChunk, end: float, stream: bool) -> None:
        if last.usage is not None:
            self.metrics.observe_turn(last.usage.to_dict(), self.start.cache.value, first_at - self.t0, end - first_at, stream)

    async def _timed(self) -> AsyncIterator[tuple[StreamChunk, float]]:
        """The remaining chunks with their arrival times; records the time per token and counts the tokens."""
        prev = self.first_at
        async for chunk in self.events:
            now = time.perf_counter()
            self.streamed += len(chunk.token_ids)
            if chunk.token_ids and chunk is not self.start.first:  # the first arrived with the TurnStart, at first_at
                self.metrics.itl.observe((now - prev) / len(chunk.token_ids))
                prev = now
            yield chunk, now

    async def _whole(self) -> list[StreamChunk]:
        """Every remaining chunk, the final one last (its end is observed)."""
        chunks = [c async for c in self.events]
        if not chunks or not chunks[-1].final:
            raise RuntimeError("the replica's stream ended without a final chunk")
        self._observe(self.first_at, chunks[-1], time.perf_counter(), stream=False)
        return chunks

    async def stream(self) -> AsyncIterator[bytes]:
        """SSE events. The first chunk already exists (it produced TurnStart, and usually rides in it)."""
        if self.tools is not None:
            async for event in self._stream_call():
                yield event
            return
        first_at = self.first_at
        for i in range(self.n):
            yield sse(self._chunk({"role": "assistant", "content": ""}, index=i))
        try:
            async for chunk, now in self._timed():
                if chunk.finish_reason is None:
                    if chunk.text or chunk.logprobs:
                        yield sse(self._chunk({"content": chunk.text}, logprobs=self._logprobs([chunk]), index=chunk.index))
                    continue
                delta = {"content": chunk.text} if chunk.text else {}
                yield sse(self._chunk(delta, chunk.finish_reason, chunk.usage, self._logprobs([chunk]), chunk.index))
                if chunk.final:
                    self._observe(first_at, chunk, now, stream=True)
        except Exception as exc:  # headers are gone: report in-band, OpenAI style
            yield sse(error_body(exc)[1])
        yield SSE_DONE

    async def _stream_call(self) -> AsyncIterator[bytes]:
        """A tool call's stream: the role, then (at each choice's end) its whole call, then its finish."""
        for i in range(self.n):
            yield sse(self._chunk({"role": "assistant", "content": None}, index=i))
        held: dict[int, list[StreamChunk]] = {}
        try:
            async for chunk, now in self._timed():
                chunks = held.setdefault(chunk.index, [])
                chunks.append(chunk)
                if chunk.finish_reason is None:
                    continue
                delta, reason = self._reply("".join(c.text for c in chunks), chunk.finish_reason, streamed=True)
                yield sse(self._chunk(delta, logprobs=self._logprobs(chunks), index=chunk.index))
                yield sse(self._chunk({}, reason, chunk.usage, index=chunk.index))
                if chunk.final:
                    self._observe(self.first_at, chunk, now, stream=True)
        except Exception as exc:  # headers are gone: report in-band, OpenAI style
            yield sse(error_body(exc)[1])
        yield SSE_DONE

    async def collect(self) -> dict:
        """The whole reply as one ``chat.completion`` body."""
        chunks = await self._whole()
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [self._choice(i, mine) for i, mine in sorted(per_choice(chunks).items())],
            "usage": usage_body(chunks[-1].usage),
            **self._meta(),
        }

    def _choice(self, index: int, chunks: list[StreamChunk]) -> dict:
        body, reason = self._reply("".join(c.text for c in chunks), chunks[-1].finish_reason, streamed=False)
        message = {"role": "assistant", "content": None, **body}
        return {"index": index, "message": message, "logprobs": self._logprobs(chunks), "finish_reason": reason}

    def _reply(self, text: str, reason: str, streamed: bool) -> tuple[dict, str]:
        """(message fields or delta, finish reason) of one choice's whole text: its
        tool calls when it holds them (tools asked), else the text."""
        parsed = self.tools.syntax.parse(text, self.tools.names) if self.tools is not None else None
        if parsed is None or not parsed.calls:
            return {"content": text}, reason
        calls = [tool_call(c.name, c.arguments, index=j if streamed else None) for j, c in enumerate(parsed.calls)]
        return ({"content": parsed.content} if parsed.content is not None else {}) | {"tool_calls": calls}, "tool_calls"


def per_choice(chunks: list[StreamChunk]) -> dict[int, list[StreamChunk]]:
    """A turn's chunks by choice index, each choice's in order."""
    out: dict[int, list[StreamChunk]] = {}
    for c in chunks:
        out.setdefault(c.index, []).append(c)
    return out
