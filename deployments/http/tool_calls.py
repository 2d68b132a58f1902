"""Tool calls at the HTTP edge: OpenAI's ``tool_calls`` entries, and the text an
assistant message with ``tool_calls`` stands for.

How a reply writes calls, and how they are parsed back, is the chat template's
tool syntax (swiftinfer_core/conversation/tool_syntax.py): a bare
``{"name": ..., "arguments": ...}`` object on templates without tools (a forced
call under a grammar), ``<tool_call>`` blocks on Hermes-style templates.

An assistant message with ``tool_calls`` sent back by a client becomes the
text the model wrote for them in that syntax (its content, then one call per
line), so the conversation the model sees again is what it wrote, and an
id-less client's history digest matches the reply the replica recorded
(deployments/sessions/history.py).
"""

from __future__ import annotations

import json
import uuid

from swiftinfer_core.conversation.tool_syntax import JsonCall, ToolCall, ToolSyntax


def tool_call(name: str, arguments: str, index: int | None = None) -> dict:
    """One entry of OpenAI's ``tool_calls`` (with ``index`` in a stream's delta)."""
    out = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": arguments}}
    return out if index is None else {"index": index, **out}


def assistant_text(content: str, calls: list[dict], where: str, syntax: ToolSyntax | None = None) -> str:
    """The text an assistant message with ``tool_calls`` (OpenAI's shape) stands
    for in ``syntax`` (default: bare call objects). Raises ValueError naming
    ``where`` for a malformed call."""
    parsed = []
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
        parsed.append(ToolCall(name, args))
    return (syntax or JsonCall()).reply_text(content, parsed)
