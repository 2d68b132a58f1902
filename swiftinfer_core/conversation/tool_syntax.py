"""How a reply writes tool calls, both ways: parsing a reply into calls, and the
text a call (or an assistant message with calls) stands for.

Two syntaxes, one class each, chosen by what the chat template emits
(``ChatFormat`` renders a probe call through the template at start-up):

- ``JsonCall``: the whole reply is one bare ``{"name": ..., "arguments": ...}``
  object. Used with templates that have no tool syntax (SmolLM2's): such a
  reply only exists under a grammar (``tool_choice`` ``required`` or a named
  function), which fixes its text given its values.
- ``TaggedCalls`` (Hermes / Qwen 2.5 style): any number of
  ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`` blocks, with
  optional text before them; the template renders the request's tools, so the
  model may choose between text and calls (``tool_choice: auto``).

A call's JSON is written compact with ``", "`` and ``": "`` separators, as the
grammar generates it (swiftinfer_core/engine/grammar.py): a call sent back in a
conversation's history is then the text the model wrote, and an id-less
client's history digest finds the conversation again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # the arguments object as JSON text (OpenAI's ``arguments``)


@dataclass(frozen=True)
class ParsedReply:
    content: str | None  # the text besides the calls (None when there is none)
    calls: tuple[ToolCall, ...]


def call_json(name: str, arguments: str) -> str:
    """One call's object, compact: ``{"name": "<name>", "arguments": <arguments>}``."""
    return '{"name": ' + json.dumps(name) + ', "arguments": ' + arguments + "}"


def _call_of(text: str, names: list[str] | None) -> ToolCall | None:
    """The call ``text`` is (exactly one compact call object), else None. The
    arguments are returned as the exact text the model wrote."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"name", "arguments"} or not isinstance(value["name"], str):
        return None
    if not isinstance(value["arguments"], dict):
        return None
    head = call_json(value["name"], "")[:-1]
    if not (text.startswith(head) and text.endswith("}")) or (names is not None and value["name"] not in names):
        return None
    return ToolCall(value["name"], text[len(head):-1])


@dataclass(frozen=True)
class JsonCall:
    """The reply is one bare call object; nothing else is a call."""

    before: str = ""  # fixed text around a constrained call's JSON (none here)
    after: str = ""

    def call_text(self, call: ToolCall) -> str:
        return call_json(call.name, call.arguments)

    def parse(self, text: str, names: list[str] | None = None) -> ParsedReply:
        call = _call_of(text, names)
        return ParsedReply(None, (call,)) if call is not None else ParsedReply(text, ())

    def reply_text(self, content: str, calls: list[ToolCall]) -> str:
        """An assistant message with calls as text: its content, then one call per line."""
        return "\n".join(([content] if content else []) + [self.call_text(c) for c in calls])


_TAGGED = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class TaggedCalls:
    """``<tool_call>\\n{call}\\n</tool_call>`` blocks (Hermes, Qwen 2.5), after optional text."""

    before: str = "<tool_call>\n"
    after: str = "\n</tool_call>"

    def call_text(self, call: ToolCall) -> str:
        return self.before + call_json(call.name, call.arguments) + self.after

    def parse(self, text: str, names: list[str] | None = None) -> ParsedReply:
        """Calls only when the reply is text (maybe none) followed by whole call
        blocks separated by newlines; anything else stays text."""
        blocks = list(_TAGGED.finditer(text))
        if not blocks:
            return ParsedReply(text, ())
        calls, pos = [], blocks[0].start()
        for m in blocks:
            call = _call_of(m.group(1), names)
            if call is None or text[pos:m.start()].strip():
                return ParsedReply(text, ())
            calls.append(call)
            pos = m.end()
        if text[pos:].strip():
            return ParsedReply(text, ())
        content = text[:blocks[0].start()].rstrip("\n")
        return ParsedReply(content or None, tuple(calls))

    def reply_text(self, content: str, calls: list[ToolCall]) -> str:
        return "\n".join(([content] if content else []) + [self.call_text(c) for c in calls])


ToolSyntax = JsonCall | TaggedCalls

PROBE_NAME = "swiftinfer_probe"


def syntax_of(rendered: str) -> ToolSyntax | None:
    """The syntax a template writes calls in, from its rendering of an assistant
    message calling ``PROBE_NAME`` (ChatFormat); None when it is not one this
    module parses."""
    for m in _TAGGED.finditer(rendered):
        try:
            value = json.loads(m.group(1))
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("name") == PROBE_NAME:
            return TaggedCalls()
    return None
