"""``POST /v1/completions`` request schema (OpenAI's legacy text completions).

``prompt`` is a string or a list of token ids (a one-element list of either is
taken as that prompt; batches of prompts are refused like ``n > 1``). A string
is encoded as plain text, as message content is (control-token spellings stay
text); token ids go to the engine as they are (``protocol.RawPrompt``). No chat
template is applied. With ``session_id`` the prompt continues that session's
token stream verbatim, and the reply stays in it for the next call.

``logprobs`` is OpenAI's legacy integer: the sampled token's logprob plus that
many most likely tokens (0..20). ``echo`` puts the prompt before the
completion, and with ``logprobs`` scores its tokens too (the engine's prompt
logprobs: swiftinfer_core/engine/prompt_scores.py; a prompt longer than the
cache is scored with the rolling cache). ``n`` choices share one prefill, as in
chat; each choice's text starts with the prompt under ``echo``. Refused with a
400 naming them: ``best_of > 1``, ``suffix``, ``n > 1`` together with ``echo``
and ``logprobs`` (the prompt is scored once, for choice 0's stream only).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from deployments.http.openai_schema import SamplingRequest
from swiftinfer_core.config import SamplingParams

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for text completions


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(min_length=1)
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1, le=128)
    suffix: str | None = None

    def unsupported(self) -> dict[str, bool]:
        p = self.prompt
        batch = isinstance(p, list) and len(p) > 1 and not all(isinstance(x, int) for x in p)
        return {
            **super().unsupported(),
            "prompt (a batch of prompts)": batch,
            "best_of": self.best_of not in (None, 1),
            "suffix": bool(self.suffix),
            "n (with echo and logprobs)": self.n not in (None, 1) and bool(self.echo) and self.logprobs is not None,
        }

    @model_validator(mode="after")
    def _prompt_ids(self) -> "CompletionRequest":
        ids = self.prompt_ids()
        if ids is not None and any(t < 0 for t in ids):
            raise ValueError("prompt: token ids must be >= 0")
        if isinstance(self.prompt, list) and not self.prompt[0] and self.prompt[0] != 0:
            raise ValueError("prompt: must not be empty")
        return self

    def prompt_text(self) -> str | None:
        """The prompt when given as text."""
        p = self.prompt
        return p if isinstance(p, str) else (p[0] if isinstance(p[0], str) else None)

    def prompt_ids(self) -> list[int] | None:
        """The prompt when given as token ids."""
        p = self.prompt
        if isinstance(p, str) or isinstance(p[0], str):
            return None
        return list(p[0]) if isinstance(p[0], list) else list(p)

    def sampling(self, default_max_tokens: int, syntax: object = None) -> SamplingParams:
        """``syntax`` (a chat template's tool syntax) has no part in a text completion."""
        return self.engine_params(self.max_tokens or default_max_tokens, self.logprobs,
                                  prompt_logprobs=self.logprobs if self.echo else None)
