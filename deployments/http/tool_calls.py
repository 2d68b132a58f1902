"""A tool call's text, both ways.

A forced call is generated under a grammar (structured_schema.py) that fixes
its text given its values: ``{"name": "<tool>", "arguments": <ARGS>}`` with
``", "`` and ``": "`` separators and no other whitespace
(swiftinfer_core/engine/grammar.py). So:

- ``parse_call``: the reply's text -> ``(name, arguments)``, ``arguments`` the
  exact text of ``<ARGS>`` as the model wrote it (OpenAI's ``arguments`` is a
  JSON string); None when the text is not a whole call (cut by ``max_tokens``
  or a stop string): the reply then stays text.
- ``call_text``: ``(name, arguments)`` -> that same text. An assistant message
  with ``tool_calls`` sent back by a client becomes this text (several calls
  one per line), so the conversation the model sees again is what it wrote,
  and an id-less client's history digest matches the reply the replica
  recorded (deployments/sessions/history.py).
"""

from __future__ import annotations

import json
import uuid


def call_text(name: str, arguments: str) -> str:
    return '{"name": ' + json.dumps(name) + ', "arguments": ' + arguments + "}"


def parse_call(text: str, names: list[str] | None = None) -> tuple[str, str] | None:
    """``(name, arguments text)`` of a whole call in ``text``, else None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"name", "arguments"} or not isinstance(value["name"], str):
        return None
    name = value["name"]
    head = call_text(name, "")[:-1]
    if not (text.startswith(head) and text.endswith("}")) or (names is not None and name not in names):
        return None
    return name, text[len(head):-1]


def tool_call(name: str, arguments: str, index: int | None = None) -> dict:
    """One entry of OpenAI's ``tool_calls`` (with ``index`` in a stream's delta)."""
    out = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": arguments}}
    return out if index is None else {"index": index, **out}


def assistant_text(content: str, calls: list[dict], where: str) -> str:
    """The text an assistant message with ``tool_calls`` (OpenAI's shape) stands
    for: its content, then one ``call_text`` per line. Raises ValueError naming
    ``where`` for a malformed call."""
    lines = [content] if content else []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if call.get("type", "function") != "function" or not isinstance(fn, dict):
            raise ValueError(f"{where}.tool_calls[{j}]: must be a function call")
        name, args = fn.get("name"), fn.get("arguments")
        if not isinstance(name, str) or not isinstance(args, str):
            raise ValueError(f"{where}.tool_calls[{j}].function: needs a string name and string arguments")
        try:
            json.loads(args)
        except ValueError:
            raise ValueError(f"{where}.tool_calls[{j}].function.arguments: must be JSON text") from None
        lines.append(call_text(name, args))
    return "\n".join(lines)
