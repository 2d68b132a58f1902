"""``POST /v1/completions`` request schema (OpenAI's legacy text completions).

``prompt`` is a string, a list of token ids, or a batch: a list of strings or
of token-id lists (up to ``MAX_PROMPTS``; a one-element batch is that prompt).
A string is encoded as plain text, as message content is (control-token
spellings stay text); token ids go to the engine as they are
(``protocol.RawPrompt``). No chat template is applied. With ``session_id`` the
prompt continues that session's token stream verbatim, and the reply stays in it
for the next call; a batch runs each prompt as its own turn on its own one-call
session (turn_plan.py), so it takes no ``session_id``. Its choices are numbered
``prompt * n + j``, as OpenAI numbers them.

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
MAX_PROMPTS = 128  # prompts in one batch: each is a turn of its own, run concurrently


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(min_length=1)
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1, le=128)
    suffix: str | None = None

    def unsupported(self) -> dict[str, bool]:
        return {
            **super().unsupported(),
            "best_of": self.best_of not in (None, 1),
            "suffix": bool(self.suffix),
            "n (with echo and logprobs)": self.n not in (None, 1) and bool(self.echo) and self.logprobs is not None,
        }

    @model_validator(mode="after")
    def _prompts(self) -> "CompletionRequest":
        prompts = self.prompts()
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"prompt: a batch holds at most {MAX_PROMPTS} prompts, got {len(prompts)}")
        for i, p in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if not p:
                raise ValueError(f"{where}: must not be empty")
            if isinstance(p, list) and any(t < 0 for t in p):
                raise ValueError(f"{where}: token ids must be >= 0")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request, as text or as token ids (one unless it is a batch)."""
        p = self.prompt
        if isinstance(p, str) or all(isinstance(x, int) for x in p):
            return [p]
        return list(p)

    def turns(self) -> int:
        return len(self.prompts())

    def sampling(self, default_max_tokens: int, syntax: object = None) -> SamplingParams:
        """``syntax`` (a chat template's tool syntax) has no part in a text completion."""
        return self.engine_params(self.max_tokens or default_max_tokens, self.logprobs,
                                  prompt_logprobs=self.logprobs if self.echo else None)
