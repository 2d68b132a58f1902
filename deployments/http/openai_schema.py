"""OpenAI chat-completions request schema, validated the way OpenAI does.

Parsed from the raw JSON body in strict mode, so wrong types are rejected
(``"max_tokens": "8"`` is a 400, not a silent cast). Every field either has an
effect or is refused:

- sampling: ``temperature``, ``top_p``, ``seed``, ``stop``, ``max_tokens`` /
  ``max_completion_tokens``, ``presence_penalty``, ``frequency_penalty``,
  ``logit_bias`` (penalties count the tokens the conversation's cache holds:
  see swiftinfer_core/engine/penalties.py), ``logprobs``/``top_logprobs``;
- structured output and tools: ``response_format``, ``tools``, ``tool_choice``
  (structured_schema.py: what is served, and ``auto``'s 400); assistant
  messages with ``tool_calls`` and ``tool`` messages come back as text
  (tool_calls.py);
- fields that only describe the request (``user``, ``metadata``, ``store``,
  ``service_tier``, ``parallel_tool_calls``: a reply holds at most one call,
  which either value allows) are accepted: there is nothing for them to change;
- ``n``: that many choices from one prefill (swiftinfer_core/engine/choices.py);
  on a session choice 0 continues the conversation and the others are
  returned, then discarded; more choices than the engine has cache slots is a
  400 naming ``n``;
- fields asking for something we cannot do get a 400 naming them.

Names outside the OpenAI API are rejected like OpenAI does ("Unrecognized
request argument"), except our extensions ``session_id``, ``top_k``,
``ignore_eos``, ``repetition_penalty`` and ``min_tokens``, and vLLM's
``stream_options.continuous_usage_stats`` (completion.py: the running usage on
every streamed chunk; asked without ``stream`` it is a 400, as vLLM refuses any
``stream_options`` then).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deployments.http.structured_schema import ResponseFormat, Tool, ToolChoice, ToolPlan, grammar_for, tool_plan
from deployments.http.tool_calls import assistant_text
from swiftinfer_core.config import Grammar, SamplingParams
from swiftinfer_core.conversation.tool_syntax import JsonCall, ToolSyntax
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.session_id import PATTERN as SESSION_ID_PATTERN  # a client's id (swiftinfer_core/session_id.py)


class RequestModel(BaseModel):
    """A JSON request body (or a part of one): strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ContentPart(RequestModel):
    type: str
    text: str | None = None
    image_url: Any = None
    input_audio: Any = None
    file: Any = None
    refusal: str | None = None


class Message(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict] | None = None
    refusal: str | None = None
    function_call: dict | None = None
    audio: dict | None = None

    def to_engine(self, index: int, syntax: ToolSyntax) -> dict:
        """``{"role", "content"}`` with text content; developer is the new name of system;
        an assistant's ``tool_calls`` become the text the model wrote for them, in the
        template's tool syntax (tool_calls.py)."""
        if self.function_call:
            raise InvalidRequestError(f"messages[{index}].function_call: unsupported (the deprecated form); send tool_calls")
        if self.tool_calls and self.role != "assistant":
            raise InvalidRequestError(f"messages[{index}].tool_calls: only assistant messages carry tool calls")
        if isinstance(self.content, list):
            texts = []
            for j, part in enumerate(self.content):
                if part.type != "text" or part.text is None:
                    raise InvalidRequestError(f"messages[{index}].content[{j}]: only text parts are supported, got {part.type!r}")
                texts.append(part.text)
            content = "".join(texts)
        else:
            content = self.content or ""
        if self.tool_calls:
            try:
                content = assistant_text(content, self.tool_calls, f"messages[{index}]", syntax)
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from None
        if self.role != "assistant" and not content:
            raise InvalidRequestError(f"messages[{index}].content must be a non-empty string")
        role = "system" if self.role == "developer" else self.role
        out = {"role": role, "content": content}
        if self.name:
            out["name"] = self.name
        return out


class StreamOptions(RequestModel):
    include_usage: bool = True
    include_obfuscation: bool | None = None
    continuous_usage_stats: bool | None = None  # vLLM's extension: usage on every chunk, with include_usage (vLLM's rule)


class SamplingRequest(RequestModel):
    """The fields chat and text completions share, and their mapping to the engine's SamplingParams."""

    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=(1 << 63) - 1)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)  # token id (as a string) -> [-100, 100]
    user: str | None = None  # describes the request only: nothing for it to change here
    # extensions
    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN)
    top_k: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    repetition_penalty: float | None = Field(None, ge=0.01, le=10.0)  # a tinier one overflows float32 logits
    min_tokens: int | None = Field(None, ge=0)

    def unsupported(self) -> dict[str, bool]:
        """Field name -> whether this request asks for it in a way this server cannot do."""
        return {}

    @model_validator(mode="after")
    def _supported(self) -> "SamplingRequest":
        bad = [k for k, v in self.unsupported().items() if v]
        if bad:
            raise ValueError(f"unsupported by this server: {', '.join(bad)}")
        if isinstance(self.stop, list) and len(self.stop) > 16:
            raise ValueError("stop: at most 16 strings")
        if self.stream_options is not None and self.stream_options.continuous_usage_stats and not self.stream:
            raise ValueError("stream_options.continuous_usage_stats: needs stream set to true")  # vLLM refuses it too
        self.bias()  # token ids and ranges checked here, so the error is a 400 at parse time
        return self

    @classmethod
    def parse(cls, body: bytes):
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidRequestError(describe(exc)) from None

    def turns(self) -> int:
        """Turns the request runs (a batch of completion prompts runs one per prompt)."""
        return 1

    def continuous_usage(self) -> bool:
        """Whether every streamed chunk carries the usage so far (vLLM's ``continuous_usage_stats``,
        on only with ``include_usage``, as in vLLM)."""
        o = self.stream_options
        return self.stream and o is not None and bool(o.include_usage and o.continuous_usage_stats)

    def needs_template(self) -> bool:
        """Whether reading this request needs the chat template's tool syntax (ChatFormat.tool_syntax)."""
        return False

    def bias(self) -> dict[int, float]:
        """``logit_bias`` with integer token ids (OpenAI sends them as JSON object keys)."""
        out = {}
        for key, value in (self.logit_bias or {}).items():
            if not (key.isascii() and key.isdigit()) or len(key) > 9:
                raise ValueError(f"logit_bias: keys must be token ids, got {key[:32]!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"logit_bias[{key}]: bias must be in [-100, 100], got {value}")
            out[int(key)] = value
        return out

    def engine_params(self, max_tokens: int, top_logprobs: int | None, prompt_logprobs: int | None = None,
                      grammar: Grammar | None = None) -> SamplingParams:
        """Engine sampling parameters; ``top_logprobs`` None: no logprobs;
        ``prompt_logprobs`` None: the input is not scored; ``grammar``: structured
        output (raises InvalidRequestError on bad bounds)."""
        greedy = self.temperature == 0.0 or self.top_p == 0.0
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0 if greedy else (1.0 if self.temperature is None else self.temperature),
            top_p=1.0 if greedy or self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            seed=self.seed,
            stop=stop,
            ignore_eos=bool(self.ignore_eos),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            logit_bias=self.bias(),
            min_tokens=self.min_tokens or 0,
            logprobs=top_logprobs is not None,
            top_logprobs=top_logprobs or 0,
            prompt_logprobs=prompt_logprobs,
            grammar=grammar,
            n=self.n or 1,
        )


class ChatCompletionRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # describe the request only: nothing for them to change here
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    # structured output and tools (structured_schema.py)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:  # as OpenAI
            raise ValueError("top_logprobs: needs logprobs set to true")
        return self

    def needs_template(self) -> bool:
        return bool(self.tools) or any(m.tool_calls for m in self.messages)

    def engine_messages(self, syntax: ToolSyntax | None = None) -> list[dict]:
        """The messages for the engine; ``syntax``: the template's tool syntax (None: it has none)."""
        return [m.to_engine(i, syntax or JsonCall()) for i, m in enumerate(self.messages)]

    def tool_plan(self, syntax: ToolSyntax | None = None) -> ToolPlan | None:
        """What the tools mean on a template with tool syntax ``syntax`` (None: it has none);
        None: the reply is not a call."""
        return tool_plan(self.tools, self.tool_choice, syntax)

    def sampling(self, default_max_tokens: int, syntax: ToolSyntax | None = None) -> SamplingParams:
        """Engine sampling parameters (raises InvalidRequestError on bad bounds)."""
        return self.engine_params(self.max_completion_tokens or self.max_tokens or default_max_tokens,
                                  (self.top_logprobs or 0) if self.logprobs else None,
                                  grammar=grammar_for(self.response_format, self.tool_plan(syntax)))


def describe(exc: ValidationError) -> str:
    """One line per problem, OpenAI style: ``messages.0.role: Input should be ...``."""
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "body"
        msg = "Unrecognized request argument supplied" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
