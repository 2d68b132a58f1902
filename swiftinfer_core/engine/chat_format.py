"""Turn messages into the tokens of one round, using the model's chat template.

A conversation is one continuous stream (as in the StreamingLLM chat demo):
round 1 renders the template in full; later rounds render only the new
messages, found as ``render(prefix + new) - render(prefix)``, so the history is
never re-encoded. After a reply, the template's assistant closing (for ChatML
``<|im_end|>\\n``) is fed at the start of the next round.
"""

from __future__ import annotations

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.protocol import ROLES

_PROBE_SYSTEM = [{"role": "system", "content": "\x00probe\x00"}]
_PROBE_REPLY = "\x00reply\x00"


def validate_messages(messages: list[dict]) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequestError(f"messages[{i}] must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role {role!r} is not one of {list(ROLES)}")
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


class ChatFormat:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template")
        base = self._render(_PROBE_SYSTEM, gen=False)
        with_reply = self._render(_PROBE_SYSTEM + [{"role": "assistant", "content": _PROBE_REPLY}], gen=False)
        self.closing_text = with_reply[len(base):].split(_PROBE_REPLY, 1)[1]
        self.closing_ids = self.encode(self.closing_text)

    def _render(self, messages: list[dict], gen: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def first_round(self, messages: list[dict]) -> list[int]:
        return self.encode(self._render(messages, gen=True))

    def next_round(self, messages: list[dict]) -> list[int]:
        base = self._render(_PROBE_SYSTEM, gen=False)
        full = self._render(_PROBE_SYSTEM + messages, gen=True)
        if not full.startswith(base):
            raise InvalidRequestError("the chat template cannot render these messages as a continuation")
        return self.encode(full[len(base):])

    def after_reply(self, last_token: int, eos_ids: set[int]) -> list[int]:
        """Tokens to feed before the next round, given the reply's last sampled
        (never fed) token: the token itself unless it was an end token, then the
        template's closing."""
        if last_token in eos_ids:
            if self.closing_ids and self.closing_ids[0] == last_token:
                return list(self.closing_ids)
            return list(self.closing_ids)
        return [last_token] + list(self.closing_ids)
