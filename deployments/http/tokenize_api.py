"""``POST /tokenize`` and ``POST /detokenize``, in vLLM's shapes.

- ``/tokenize``: ``{"prompt": str, "add_special_tokens": true}`` or
  ``{"messages": [...], "add_generation_prompt": true}`` (the chat template
  exactly as a conversation's first turn is encoded), optional ``model`` and
  ``return_token_strs`` -> ``{"count", "max_model_len", "tokens",
  "token_strs"}``. ``max_model_len`` is the longest input one call accepts
  (``engine.max_turn_tokens``): conversations themselves have no length limit.
- ``/detokenize``: ``{"tokens": [int]}`` -> ``{"prompt": str}``.

A prompt's text is encoded as plain text, as message content is: control-token
spellings stay text unless the engine allows them (``allow_control_tokens_in_content``).
"""

from __future__ import annotations

from pydantic import Field, ValidationError, model_validator

from deployments.http.openai_schema import Message, RequestModel, describe
from deployments.http.tokens import TextCodec
from swiftinfer_core.conversation.chat_format import validate_messages
from swiftinfer_core.conversation.tool_syntax import JsonCall
from swiftinfer_core.errors import InvalidRequestError

MAX_TOKENS_IN = 1 << 20


class TokenizeRequest(RequestModel):
    model: str | None = Field(None, min_length=1, max_length=256)
    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1, max_length=4096)
    add_special_tokens: bool | None = None  # prompt: default true; messages: the template's own only
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        if self.messages is not None and self.add_special_tokens:
            raise ValueError("add_special_tokens: unsupported with messages (the chat template adds its own)")
        if self.messages is not None and not self.add_generation_prompt:
            raise ValueError("add_generation_prompt: only true is supported (as a chat turn is encoded)")
        return self


class DetokenizeRequest(RequestModel):
    model: str | None = Field(None, min_length=1, max_length=256)
    tokens: list[int] = Field(max_length=MAX_TOKENS_IN)


def parse(cls, body: bytes):
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequestError(describe(exc)) from None


def tokenize(codec: TextCodec, req: TokenizeRequest, max_model_len: int) -> dict:
    if req.messages is not None:
        syntax = codec.format.tool_syntax or JsonCall()  # an assistant's tool_calls as the template's syntax writes them
        ids = codec.format.first_round(validate_messages([m.to_engine(i, syntax) for i, m in enumerate(req.messages)]))
    else:
        ids = codec.prompt_ids(req.prompt, req.add_special_tokens in (None, True))
    strs = codec.tok.convert_ids_to_tokens(ids) if req.return_token_strs else None  # the vocabulary's own pieces, as vLLM
    return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids, "token_strs": strs}


def detokenize(codec: TextCodec, req: DetokenizeRequest) -> dict:
    bad = [t for t in req.tokens if not 0 <= t < codec.vocab]
    if bad:
        raise InvalidRequestError(f"tokens: id {bad[0]} is outside the tokenizer's vocabulary of {codec.vocab}")
    return {"prompt": codec.detokenize(req.tokens)}
