"""``response_format``, ``tools`` and ``tool_choice`` of a chat request, and the
grammar (swiftinfer_core.config.Grammar) they ask the engine for.

- ``response_format``: ``text`` (nothing), ``json_object`` (any JSON object) or
  ``json_schema`` (the given schema, always enforced strictly: objects take no
  properties the schema does not allow, so every reply validates, whatever
  ``strict`` says).
- ``tools`` with ``tool_choice`` (``ToolPlan``), on a chat template with tool
  syntax (one that renders ``tools``: EngineConfig.chat_template can supply
  it; swiftinfer_core/conversation/tool_syntax.py):

  - ``auto`` (OpenAI's default when tools are given): the tools are rendered
    into the prompt by the template and the model chooses; its calls, written
    in the template's syntax, are parsed into ``tool_calls``;
  - ``required`` / a named function: as ``auto``, and the reply is constrained
    to one call in the template's syntax (``<tool_call>\n{...}\n</tool_call>``);
  - ``none``: no call; the tools are not shown.

  On a template without tool syntax (the default model's, SmolLM2):

  - ``none``: no call (the tools are not shown to the model: it has no place for them);
  - ``required``: the reply is one call of any of the tools;
  - a named function: one call of that function;
  - ``auto``: refused with a 400 naming ``tool_choice``: the model cannot
    choose between text and a call it was never shown.

  A forced call is constrained to ``{"name": "<tool>", "arguments": {...}}``
  (inside the template's tags, if it has any), the name a constant and the
  arguments the tool's ``parameters`` schema, and parsed into ``tool_calls``.

Schemas are checked with the grammar library here, so a schema it cannot
enforce is a 400 before any turn starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from swiftinfer_core.config import Grammar
from swiftinfer_core.conversation.tool_syntax import JsonCall, ToolSyntax
from swiftinfer_core.engine.grammar import check_schema
from swiftinfer_core.errors import InvalidRequestError

NAME_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"  # OpenAI's function and schema names
NO_ARGUMENTS = {"type": "object", "properties": {}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class JsonSchemaFormat(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="The schema's name (describes the request only).")
    description: str | None = Field(None, description="Describes the request only.")
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON schema the reply must match.")
    strict: bool | None = Field(None, description="Accepted; the schema is always enforced strictly.")


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDef(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = Field(None, description="Not shown to the model: the default template has no place for it.")
    parameters: dict[str, Any] | None = Field(None, description="JSON schema of the arguments; none: no arguments.")
    strict: bool | None = Field(None, description="Accepted; arguments always match the parameters schema.")


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: str = Field(pattern=NAME_PATTERN)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def call_schema(fn: FunctionDef) -> dict:
    """The JSON schema of one call of ``fn``: ``{"name": <const>, "arguments": <parameters>}``."""
    return {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
            "properties": {"name": {"const": fn.name}, "arguments": fn.parameters or NO_ARGUMENTS}}


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for its reply."""

    syntax: ToolSyntax  # how calls are written (and constrained) and parsed back
    names: list[str]  # the functions a reply's calls may name
    forced: list[FunctionDef]  # the reply must call one of these (grammar); empty: the model chooses
    shown: list[dict] | None  # the tools the template renders into the prompt; None: not shown


def tool_plan(tools: list[Tool] | None, choice: ToolChoice | None, syntax: ToolSyntax | None) -> ToolPlan | None:
    """The plan of ``tools`` / ``tool_choice`` on a template whose tool syntax is
    ``syntax`` (None: the template has none). None: the reply is no call.
    Raises InvalidRequestError for what cannot be served."""
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InvalidRequestError("tool_choice: needs tools")
        return None
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tools: function names must be unique")
    if choice == "none":
        return None
    if choice in (None, "auto") and syntax is None:
        raise InvalidRequestError("tool_choice: 'auto' (the default with tools) is unsupported: this model's chat template has no "
                                  "tool syntax; send tool_choice 'required' or a named function (the reply is then a call)")
    if choice in (None, "auto"):
        forced = []
    elif choice == "required":
        forced = [t.function for t in tools]
    elif choice.function.name not in names:
        raise InvalidRequestError(f"tool_choice: no tool named {choice.function.name!r}")
    else:
        forced = [t.function for t in tools if t.function.name == choice.function.name]
    shown = None if syntax is None else [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]
    return ToolPlan(syntax or JsonCall(), [f.name for f in forced] if forced else names, forced, shown)


def grammar_for(response_format: ResponseFormat | None, plan: ToolPlan | None) -> Grammar | None:
    """The engine grammar of a request (None: free text)."""
    fmt = None if response_format is None or response_format.type == "text" else response_format
    if fmt is not None and plan is not None:
        raise InvalidRequestError("response_format: cannot be combined with tools unless tool_choice is 'none' (a reply may be a call)")
    if plan is not None and plan.forced:
        calls = plan.forced
        schema = call_schema(calls[0]) if len(calls) == 1 else {"anyOf": [call_schema(f) for f in calls]}
        g = _checked(json.dumps(schema), "tools")
        return Grammar(kind=g.kind, json_schema=g.json_schema, before=plan.syntax.before, after=plan.syntax.after)
    if plan is not None:
        return None
    if fmt is None:
        return None
    if fmt.type == "json_object":
        if fmt.json_schema is not None:
            raise InvalidRequestError("response_format.json_schema: only with type 'json_schema'")
        return Grammar(kind="json_object")
    if fmt.json_schema is None:
        raise InvalidRequestError("response_format.json_schema: required with type 'json_schema'")
    return _checked(json.dumps(fmt.json_schema.schema_), "response_format.json_schema.schema")


def _checked(schema_text: str, field: str) -> Grammar:
    try:
        check_schema(schema_text)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"{field}: {exc}") from None
    return Grammar(kind="json_schema", json_schema=schema_text)
