"""``text_completion`` bodies and SSE events of one ``/v1/completions`` turn.

The same replica stream as a chat turn (``completion.ChatResponse``: timing, usage,
metrics), rendered in OpenAI's legacy shape: ``choices[0].text``, no role
chunk, and ``logprobs`` as four parallel lists per chunk (``tokens``,
``token_logprobs``, ``top_logprobs`` as ``{token: logprob}`` maps, and
``text_offset``: each token's character offset in the completion, counted on
across a stream's chunks). With ``echo`` the prompt comes first: its text in
the first event (or the body), and with logprobs its tokens too, the first one
with ``null`` logprob and top logprobs when nothing precedes it.

A batch of prompts (``TextBatch``) is one TextResponse per prompt, its choices
numbered from ``prompt * n``. Streamed, their events go out as they come, and
the usage summed over the prompts goes out once, in a last event with no
choices (the shape of OpenAI's ``stream_options.include_usage``); an error in
one prompt's stream is an error event, and the others go on. With
``continuous_usage_stats`` (completion.py) every event carries its own prompt's
usage so far.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, fields
from typing import AsyncIterator

from deployments.http.completion import SSE_DONE, ChatResponse, per_choice, sse, usage_body
from deployments.http.errors import error_body
from swiftinfer_core.protocol import StreamChunk, Usage


@dataclass
class TextResponse(ChatResponse):
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    echo_text: str | None = None  # with echo: the prompt's text, sent before the completion
    echo_ids: list[int] | None = None  # with echo: the prompt's token ids
    offsets: dict[int, int] = field(default_factory=dict)  # per choice: characters of text covered by logprobs sent so far
    index_base: int = 0  # in a batch: the number of this prompt's first choice
    batched: bool = False  # in a batch: the batch sends the usage, summed, so bodies carry none
    usage: Usage | None = None  # the turn's, once its final chunk arrived

    @classmethod
    def combine(cls, turns: list["TextResponse"]) -> "TextResponse | TextBatch":
        if len(turns) == 1:
            return turns[0]
        for t in turns[1:]:  # one request: one id
            t.id, t.created = turns[0].id, turns[0].created
        return TextBatch(turns)

    def _legacy_logprobs(self, chunks: list[StreamChunk]) -> dict | None:
        if self.codec is None:
            return None
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for c in chunks:
            if c.prompt_logprobs is not None and self.echo_ids is not None:  # echo: the prompt's tokens first
                for tok, lp in zip(self.echo_ids, c.prompt_logprobs):
                    self._add(out, tok, lp, c.index)
            for lp in c.logprobs or []:
                self._add(out, lp.token, lp, c.index)
        return out

    def _add(self, out: dict, tok: int, lp, index: int) -> None:
        """One token of choice ``index``; ``lp`` None: a prompt token nothing before it predicts."""
        text = self.codec.entry(tok, 0.0)["token"]
        out["tokens"].append(text)
        out["token_logprobs"].append(None if lp is None else lp.logprob)
        out["top_logprobs"].append(None if lp is None else {self.codec.entry(t, v)["token"]: v for t, v in lp.top})
        out["text_offset"].append(self.offsets.get(index, 0))
        self.offsets[index] = self.offsets.get(index, 0) + len(text)

    def _choice(self, index: int, text: str, chunks: list[StreamChunk], finish_reason: str | None) -> dict:
        return {"index": self.index_base + index, "text": text, "logprobs": self._legacy_logprobs(chunks), "finish_reason": finish_reason}

    def _body(self, choices: list[dict], usage: Usage | None) -> dict:
        body = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model, "choices": choices}
        if usage is not None and not self.batched:
            body["usage"] = usage_body(usage)
            body.update(self._meta())
        elif self.continuous_usage:  # in a batch: this prompt's (as vLLM); the summed usage still comes last
            body["usage"] = self._usage_so_far(usage)
        return body

    async def bodies(self) -> AsyncIterator[dict]:
        """The stream's bodies; an error after the headers went out is one error body, last."""
        first_at = self.first_at
        echoed: set[int] = set()  # choices whose first event (with the echoed prompt) went out
        try:
            async for chunk, now in self._timed():
                echo = "" if chunk.index in echoed else (self.echo_text or "")
                if chunk.finish_reason is None and not (chunk.text or chunk.logprobs or echo):
                    continue
                echoed.add(chunk.index)
                choice = self._choice(chunk.index, echo + chunk.text, [chunk], chunk.finish_reason)
                if chunk.final:
                    self.usage = chunk.usage
                yield self._body([choice], chunk.usage)
                if chunk.final:
                    self._observe(first_at, chunk, now, stream=True)
        except Exception as exc:  # headers are gone: report in-band, OpenAI style
            yield error_body(exc)[1]

    async def stream(self) -> AsyncIterator[bytes]:
        async for body in self.bodies():
            yield sse(body)
        yield SSE_DONE

    async def collect(self) -> dict:
        chunks = await self._whole()
        self.usage = chunks[-1].usage
        choices = [self._choice(i, (self.echo_text or "") + "".join(c.text for c in mine), mine, mine[-1].finish_reason)
                   for i, mine in sorted(per_choice(chunks).items())]
        return self._body(choices, chunks[-1].usage)


@dataclass
class TextBatch:
    """The response of a batch of prompts: its TextResponses, interleaved."""

    parts: list[TextResponse]

    async def stream(self) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[dict | None] = asyncio.Queue()

        async def pump(part: TextResponse) -> None:
            try:
                async for body in part.bodies():
                    queue.put_nowait(body)
            finally:
                queue.put_nowait(None)  # this part is done

        tasks = [asyncio.create_task(pump(p)) for p in self.parts]
        try:
            running = len(tasks)
            while running:
                body = await queue.get()
                if body is None:
                    running -= 1
                else:
                    yield sse(body)
            if all(p.usage is not None for p in self.parts):
                yield sse(self._usage_body())
        finally:
            for t in tasks:  # the client left: stop reading every prompt's stream
                t.cancel()
        yield SSE_DONE

    async def collect(self) -> dict:
        bodies = await asyncio.gather(*(p.collect() for p in self.parts))
        return {**self._usage_body(), "choices": [c for b in bodies for c in b["choices"]]}

    def _usage_body(self) -> dict:
        first = self.parts[0]
        total = Usage(**{f.name: sum(getattr(p.usage, f.name) for p in self.parts) for f in fields(Usage)})
        return {"id": first.id, "object": "text_completion", "created": first.created, "model": first.model,
                "choices": [], "usage": usage_body(total)}
