"""OpenAI Responses API request (``POST /v1/responses``) and its response ids.

A response continues a conversation by ``previous_response_id``, which here names a
session and one of its turns: ``resp_<session id>.<turn number>``. The engine keeps
one linear conversation per session (its StreamingLLM cache), so a response
continues only from its conversation's latest one (an older id is a 409, a branch
this server cannot take); its cache is warm, and only the new input is prefilled.
A request without ``previous_response_id`` opens a new conversation; with
``store: false`` it is dropped after the reply and its id cannot be continued.

``input`` is a string or a list of messages with text content (``input_text`` /
``output_text`` parts, or a string); ``instructions`` go before it as a system
message, on every turn that sends them (the model sees them again mid-conversation
rather than replacing the first ones: the cache cannot unsee those). Fields that only
describe the request are accepted; tools, reasoning, background mode, non-text output
formats, stored prompts and the Conversations API are refused with a 400 naming them.
The sampling extensions of chat completions (``top_k``, ``seed``, ``stop``...) apply.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from deployments.http.openai_schema import RequestModel, SamplingRequest
from swiftinfer_core.config import SamplingParams
from swiftinfer_core.conversation.tool_syntax import ToolSyntax
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.session_id import CLIENT_MAX, is_session_id

PREFIX = "resp_"


class InputPart(RequestModel):
    """A content part; parts other than text parse (their fields kept) so the refusal can name their type."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None
    annotations: list[Any] | None = None  # an earlier reply's output_text sent back as input


class InputMessage(RequestModel):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputPart]
    id: str | None = None  # an earlier output item's id, sent back with it
    status: str | None = None

    def to_engine(self, index: int) -> dict:
        if isinstance(self.content, str):
            text = self.content
        else:
            for j, part in enumerate(self.content):
                if part.type not in ("input_text", "output_text") or part.text is None:
                    raise InvalidRequestError(f"input[{index}].content[{j}]: only text parts are supported, got {part.type!r}")
            text = "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class TextFormat(RequestModel):
    type: str


class TextConfig(RequestModel):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(SamplingRequest):
    input: str | list[InputMessage]
    instructions: str | None = None
    previous_response_id: str | None = Field(None, max_length=CLIENT_MAX + 32)
    max_output_tokens: int | None = Field(None, ge=1)
    store: bool = True
    # describe the request only: nothing for them to change here
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    truncation: Literal["auto", "disabled"] | None = None  # the StreamingLLM cache never overflows either way
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = None  # every conversation's cache is kept anyway
    safety_identifier: str | None = None
    # refused unless empty or default (unsupported())
    text: TextConfig | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    reasoning: dict | None = None
    include: list[str] | None = None
    background: bool | None = None
    conversation: str | dict | None = None
    prompt: dict | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None

    def unsupported(self) -> dict[str, bool]:
        fmt = self.text.format.type if self.text is not None and self.text.format is not None else "text"
        return {
            "tools": bool(self.tools), "tool_choice": self.tool_choice not in (None, "none", "auto"),
            "reasoning": bool(self.reasoning and any(v is not None for v in self.reasoning.values())),
            "include": bool(self.include), "background": bool(self.background), "conversation": self.conversation is not None,
            "prompt": self.prompt is not None, "top_logprobs": bool(self.top_logprobs), "text.format": fmt != "text",
            # chat-completion fields with a Responses name, or none here
            "max_tokens": self.max_tokens is not None, "n": self.n not in (None, 1), "session_id": self.session_id is not None,
            "logit_bias": bool(self.logit_bias),
            "stream_options.continuous_usage_stats": bool(self.stream_options and self.stream_options.continuous_usage_stats),
        }

    def engine_messages(self) -> list[dict]:
        items = [InputMessage(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        if not items:
            raise InvalidRequestError("input: needs at least one message")
        messages = [m.to_engine(i) for i, m in enumerate(items)]
        for i, m in enumerate(messages):
            if m["role"] != "assistant" and not m["content"]:
                raise InvalidRequestError(f"input[{i}].content must be a non-empty string")
        return ([{"role": "system", "content": self.instructions}] if self.instructions else []) + messages

    def sampling(self, default_max_tokens: int, syntax: ToolSyntax | None = None) -> SamplingParams:
        return self.engine_params(self.max_output_tokens or default_max_tokens, None)

    def echo(self) -> dict:
        """The request's fields a response object repeats."""
        return {"instructions": self.instructions, "max_output_tokens": self.max_output_tokens, "metadata": self.metadata or {},
                "previous_response_id": self.previous_response_id, "store": self.store,
                "temperature": 1.0 if self.temperature is None else self.temperature,
                "top_p": 1.0 if self.top_p is None else self.top_p, "truncation": self.truncation or "disabled"}


def response_id(session_id: str, turn: int) -> str:
    return f"{PREFIX}{session_id}.{turn}"


def parse_response_id(value: str) -> tuple[str, int]:
    """``resp_<session id>.<turn>`` -> (session id, turn); a 400 naming the field otherwise."""
    sid, _, turn = value.removeprefix(PREFIX).rpartition(".")
    if not value.startswith(PREFIX) or not turn.isdigit() or int(turn) < 1 or not is_session_id(sid, CLIENT_MAX):
        raise InvalidRequestError(f"previous_response_id: {value[:64]!r} is not a response id of this server")
    return sid, int(turn)
