"""Turn messages into the tokens of one round, using the model's chat template.

A conversation is one continuous stream (as in the StreamingLLM chat demo):
round 1 renders the template in full; later rounds render only the new
messages, found as ``render(prefix + new) - render(prefix)``, so the history is
never re-encoded. After a reply, the template's assistant closing (for ChatML
``<|im_end|>\\n``) is fed at the start of the next round.

Message content is client text, whatever its role. Encoding the rendered
string as a whole would turn a control-token spelling inside a message (a user
writing ``<|im_end|>\\n<|im_start|>system\\n...``) into the control token itself,
and the model would see a turn the client forged. So before rendering, every
control-token spelling in the content is wrapped in two private-use markers;
after rendering, the string is cut at the markers and the wrapped spellings are
encoded as plain text, the rest (the template's own tokens included) as usual.
Content without such spellings is thus encoded exactly as before, in context,
and template filters (``| trim``) act on the markers' content unchanged. This is
the scheme of transformers' ``apply_chat_template(sanitize_control_tokens=True)``
(5.20+; the tests check both agree), done here because the round delta needs the
encoder on its own, and the project supports transformers 4.45+ (the TensorRT-LLM
releases of the extra come with 4.x).

Tools: a template that references ``tools`` (``EngineConfig.chat_template`` can
supply one) renders the request's tools where it puts them, in the
conversation's first round (their usual place is the system block at the top;
later rounds find them in the cache, as long as the sinks and window hold
them, and do not render them again). Its call syntax is read once from how it
renders a probe call (conversation/tool_syntax.py). Tool definitions are client
text too: one holding a control-token spelling is refused.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from swiftinfer_core.conversation.tool_syntax import PROBE_NAME, ToolSyntax, syntax_of
from swiftinfer_core.errors import InvalidRequestError, PromptTooLongError
from swiftinfer_core.protocol import ROLES

_PROBE_SYSTEM = [{"role": "system", "content": "\x00probe\x00"}]
_PROBE_REPLY = "\x00reply\x00"
_PROBE_TOOLS = [{"type": "function", "function": {"name": PROBE_NAME, "description": "probe",
                                                  "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}]
_PROBE_CALL = [{"role": "user", "content": "probe"},
               {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": PROBE_NAME, "arguments": {"x": 1}}}]}]
# Markers come from plane 16 (private use), away from the icon fonts of plane 15;
# the pair in use is one that no message of the call contains.
_MARK_LO, _MARK_HI = 0x100000, 0x10FFFD
_PLANE16 = re.compile("[\U00100000-\U0010FFFF]")


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


def control_tokens(tokenizer, template: str | None = None) -> dict[str, int]:
    """Spelling -> id of the tokens only a template may write: the special
    tokens, and added tokens the template (``template``, else the tokenizer's)
    itself spells (Qwen's ``<tool_call>`` is not flagged special). Other added
    tokens are ordinary vocabulary."""
    template = template if template is not None else tokenizer.chat_template
    template = template if isinstance(template, str) else ""
    out = {t.content: i for i, t in tokenizer.added_tokens_decoder.items()
           if t.special or (t.content in template and not t.content.isspace())}
    for spelling in tokenizer.all_special_tokens:
        out.setdefault(spelling, tokenizer.convert_tokens_to_ids(spelling))
    return out


@lru_cache(maxsize=8)
def _cut_pattern(alternation: str, a: str, b: str) -> re.Pattern:
    """A marked spelling, else a spelling next to one marker, else a lone marker.
    Markers part only where a template cuts content (``split``, slices); a
    spelling still touching a marker came from content all the same."""
    return re.compile(f"{a}({alternation}){b}|{a}({alternation})|({alternation}){b}|[{a}{b}]")


class ChatFormat:
    def __init__(self, tokenizer, allow_control_tokens: bool = False, max_tokens: int | None = None, template: str | None = None):
        """``template``: a chat template used instead of the tokenizer's (EngineConfig.chat_template)."""
        self.tok = tokenizer
        self.template = template if template is not None else getattr(tokenizer, "chat_template", None)
        if not self.template:
            raise ValueError("the tokenizer has no chat template")
        self.allow_control_tokens = allow_control_tokens
        # Each cut costs tokenizer calls; past max_tokens cuts the round is too long anyway (every piece
        # is at least one token), so it is refused before they are made.
        self.max_tokens = max_tokens
        self._as_text: dict[str, list[int]] = {}  # spelling -> its ids as text, mid-prompt
        self.controls = control_tokens(tokenizer, self.template)
        self.control_ids = frozenset(self.controls.values())
        longest_first = sorted(self.controls, key=len, reverse=True)
        self._alternation = "|".join(map(re.escape, longest_first)) or "(?!)"  # (?!) matches nothing
        self._spelled = re.compile(self._alternation)
        self._newline = self.encode("\n")
        self._base = self._render(_PROBE_SYSTEM, gen=False)
        with_reply = self._render(_PROBE_SYSTEM + [{"role": "assistant", "content": _PROBE_REPLY}], gen=False)
        if not with_reply.startswith(self._base) or _PROBE_REPLY not in with_reply:
            raise ValueError("the chat template alters message content: cannot find the assistant turn's closing")
        self.closing_text = with_reply[len(self._base):].split(_PROBE_REPLY, 1)[1]
        self.closing_ids = self.encode(self.closing_text)
        self.tool_syntax: ToolSyntax | None = self._probe_tools()  # None: the template shows no tools

    def _probe_tools(self) -> ToolSyntax | None:
        """The syntax this template writes tool calls in, if it renders tools at all."""
        if not isinstance(self.template, str) or "tools" not in self.template:
            return None
        try:
            return syntax_of(self._render(_PROBE_CALL, gen=False, tools=_PROBE_TOOLS))
        except Exception:  # a template that cannot render the probe: no tools through it
            return None

    def _render(self, messages: list[dict], gen: bool, tools: list[dict] | None = None) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, chat_template=self.template, tools=tools)

    def encode(self, text: str) -> list[int]:
        """Trusted text (the template's own): control-token spellings become control tokens."""
        return self.tok(text, add_special_tokens=False).input_ids

    def encode_as_text(self, text: str) -> list[int]:
        """Client text: every spelling is plain text, added tokens included."""
        backend = getattr(self.tok, "backend_tokenizer", None)
        if backend is None:  # a slow (Python) tokenizer: its special tokens are split, other added ones are not
            ids = self.tok(text, add_special_tokens=False, split_special_tokens=True).input_ids
        else:  # the fast tokenizer's pipeline without its added-token pass
            norm = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
            words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(norm)] if backend.pre_tokenizer is not None else [norm]
            ids = [t.id for w in words for t in backend.model.tokenize(w)]
        if self.control_ids.intersection(ids):
            raise InvalidRequestError(f"this model's tokenizer makes a control token of the plain text {text!r}")
        return ids

    def first_round(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The conversation's opening, with ``tools`` (OpenAI's tool objects) where the template shows them."""
        marks = self._marks(messages)
        if tools:
            self._check_tools(tools)
        return self._encode(self._render(self._mark(messages, marks), gen=True, tools=tools or None), marks)

    def _check_tools(self, tools: list[dict]) -> None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise InvalidRequestError("tools: must be a list of tool objects")
        if self.tool_syntax is None:
            raise InvalidRequestError("tools: this model's chat template has no place for tools")
        if not self.allow_control_tokens and self._spelled.search(json.dumps(tools, ensure_ascii=False)):
            raise InvalidRequestError("tools: a tool definition contains a control-token spelling of this model's tokenizer")

    def next_round(self, messages: list[dict]) -> list[int]:
        marks = self._marks(messages)
        full = self._render(_PROBE_SYSTEM + self._mark(messages, marks), gen=True)
        if not full.startswith(self._base):
            raise InvalidRequestError("the chat template cannot render these messages as a continuation")
        return self._encode(full[len(self._base):], marks)

    # ---- marking ----

    def _marks(self, messages: list[dict]) -> tuple[str, str] | None:
        """Two characters that occur in no message (so a client cannot forge or
        unpair a marker), or None when control tokens in content are allowed."""
        if self.allow_control_tokens:
            return None
        used = set(_PLANE16.findall("".join(m["content"] for m in messages)))
        for cp in range(_MARK_LO, _MARK_HI, 2):
            a, b = chr(cp), chr(cp + 1)
            if a not in used and b not in used:
                return a, b
        raise InvalidRequestError("the messages use every character of Unicode plane 16; this server reserves a pair of them")

    def _mark(self, messages: list[dict], marks: tuple[str, str] | None) -> list[dict]:
        if marks is None:
            return messages
        a, b = marks
        return [{**m, "content": self._spelled.sub(lambda s: a + s.group() + b, m["content"])} for m in messages]

    def _encode(self, text: str, marks: tuple[str, str] | None) -> list[int]:
        if marks is None:
            return self.encode(text)
        cuts = list(_cut_pattern(self._alternation, *marks).finditer(text))
        if self.max_tokens is not None and len(cuts) > self.max_tokens:
            raise PromptTooLongError(f"the new messages are longer than the limit of {self.max_tokens} tokens")
        ids, pos = [], 0
        for cut in cuts:
            ids += self._piece(text[pos:cut.start()], as_text=False, at_start=pos == 0)
            spelling = next((g for g in cut.groups() if g is not None), "")  # "" for a lone marker: dropped
            if cut.start() == 0:
                ids += self._piece(spelling, as_text=True, at_start=True)
            elif spelling:
                if spelling not in self._as_text:
                    self._as_text[spelling] = self._piece(spelling, as_text=True, at_start=False)
                ids += self._as_text[spelling]
            pos = cut.end()
        return ids + self._piece(text[pos:], as_text=False, at_start=pos == 0)

    def _piece(self, piece: str, as_text: bool, at_start: bool) -> list[int]:
        """One piece of the cut prompt, encoded as if in place. SentencePiece-style
        tokenizers give a string's first word a leading space, right only at the
        prompt's start; elsewhere, encode after a newline and drop the newline's
        ids (if the newline merges with the piece, encode the piece alone)."""
        encode = self.encode_as_text if as_text else self.encode
        if not piece or at_start:
            return encode(piece) if piece else []
        ids = encode("\n" + piece)
        if ids[: len(self._newline)] == self._newline:
            return ids[len(self._newline):]
        return encode(piece)

    def after_reply(self, last_token: int, eos_ids: set[int]) -> list[int]:
        """Tokens to feed before the next round, given the reply's last sampled
        (never fed) token: the token itself unless it was an end token, then the
        template's closing."""
        if last_token in eos_ids:
            if self.closing_ids and self.closing_ids[0] == last_token:
                return list(self.closing_ids)
            return list(self.closing_ids)
        return [last_token] + list(self.closing_ids)
