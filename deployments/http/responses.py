"""One turn as an OpenAI Responses API reply: a ``response`` object, or its typed SSE events.

Streamed, the events are OpenAI's for one text message (each ``event: <type>`` with
a JSON ``data`` carrying ``type`` and ``sequence_number``): ``response.created``,
``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, one ``response.output_text.delta`` per chunk,
``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done``, then ``response.completed`` (or
``response.incomplete`` when ``max_output_tokens`` cut it); an error after the
headers went out is an ``error`` event. The final object holds the usage and, as
chat completions do, the session, replica and cache state of the turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import AsyncIterator

from deployments.http.completion import ChatResponse
from deployments.http.errors import error_body
from deployments.http.responses_schema import PREFIX, response_id
from swiftinfer_core.protocol import StreamChunk, Usage


def event(kind: str, seq: int, **fields) -> bytes:
    data = json.dumps({"type": kind, "sequence_number": seq, **fields}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def usage_body(u: Usage) -> dict:
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens, "prefilled_tokens": u.prefilled_tokens}


@dataclass
class ResponsesReply(ChatResponse):
    request: dict = field(default_factory=dict)  # the request's fields the object repeats (ResponsesRequest.echo)

    @property
    def response_id(self) -> str:
        return response_id(self.start.session_id, self.start.turn)

    @property
    def message_id(self) -> str:  # one per turn, so a replayed turn repeats it
        return "msg_" + self.response_id.removeprefix(PREFIX)

    def _object(self, status: str, text: str | None = None, last: StreamChunk | None = None) -> dict:
        """The response object; ``text`` None: no output yet."""
        output = [] if text is None else [self._message(text, "completed" if status != "in_progress" else "in_progress")]
        length = last is not None and last.finish_reason == "length"
        return {
            "id": self.response_id, "object": "response", "created_at": self.created, "status": status, "model": self.model,
            "output": output, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if length else None,
            "usage": usage_body(last.usage) if last is not None and last.usage is not None else None,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
            **self.request, **self._meta(),
        }

    def _message(self, text: str, status: str) -> dict:
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": [self._part(text)]}

    @staticmethod
    def _part(text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    @staticmethod
    def _status(last: StreamChunk) -> str:
        return "incomplete" if last.finish_reason == "length" else "completed"

    async def collect(self) -> dict:
        chunks = await self._whole()
        return self._object(self._status(chunks[-1]), "".join(c.text for c in chunks), chunks[-1])

    async def stream(self) -> AsyncIterator[bytes]:
        seq = 0

        def ev(kind: str, **fields) -> bytes:
            nonlocal seq
            seq += 1
            return event(kind, seq - 1, **fields)

        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        yield ev("response.created", response=self._object("in_progress"))
        yield ev("response.in_progress", response=self._object("in_progress"))
        yield ev("response.output_item.added", output_index=0,
                 item={**self._message("", "in_progress"), "content": []})
        yield ev("response.content_part.added", part=self._part(""), **where)
        text: list[str] = []
        try:
            async for chunk, now in self._timed():
                if chunk.text:
                    text.append(chunk.text)
                    yield ev("response.output_text.delta", delta=chunk.text, logprobs=[], **where)
                if chunk.final:
                    self._observe(self.first_at, chunk, now, stream=True)
                    whole, status = "".join(text), self._status(chunk)
                    yield ev("response.output_text.done", text=whole, logprobs=[], **where)
                    yield ev("response.content_part.done", part=self._part(whole), **where)
                    yield ev("response.output_item.done", output_index=0, item=self._message(whole, "completed"))
                    yield ev(f"response.{status}", response=self._object(status, whole, chunk))
                    return
            raise RuntimeError("the replica's stream ended without a final chunk")
        except Exception as exc:  # headers are gone: report in-band
            err = error_body(exc)[1]["error"]
            yield ev("error", code=err["code"], message=err["message"], param=err["param"])
