"""response_format / tools / tool_choice -> the engine's grammar
(deployments/http/structured_schema.py), and the 400s naming what is refused."""

import json

import pytest

from deployments.http.openai_schema import ChatCompletionRequest
from swiftinfer_core.conversation.tool_syntax import JsonCall, TaggedCalls
from swiftinfer_core.errors import InvalidRequestError

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time"}}]


def request(**fields) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}
    return ChatCompletionRequest.parse(json.dumps(body).encode())


def grammar(syntax=None, **fields):
    return request(**fields).sampling(8, syntax).grammar


def test_response_formats_map_to_grammars():
    assert grammar() is None and grammar(response_format={"type": "text"}) is None
    assert grammar(response_format={"type": "json_object"}).kind == "json_object"
    g = grammar(response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": False}})
    assert (g.kind, json.loads(g.json_schema)) == ("json_schema", WEATHER)


def test_forced_tool_calls_map_to_a_call_schema():
    named = json.loads(grammar(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}).json_schema)
    assert named["properties"] == {"name": {"const": "get_weather"}, "arguments": WEATHER}
    assert named["required"] == ["name", "arguments"] and named["additionalProperties"] is False
    required = json.loads(grammar(tools=TOOLS, tool_choice="required").json_schema)
    assert [c["properties"]["name"]["const"] for c in required["anyOf"]] == ["get_weather", "get_time"]
    assert required["anyOf"][1]["properties"]["arguments"] == {"type": "object", "properties": {}}
    assert grammar(tools=TOOLS, tool_choice="none") is None  # no call; nothing else to constrain
    plan = request(tools=TOOLS, tool_choice="required").tool_plan()
    assert [f.name for f in plan.forced] == plan.names == ["get_weather", "get_time"]
    assert plan.syntax == JsonCall() and plan.shown is None  # this template has no place for tools
    assert (named.get("before"), grammar(tools=TOOLS, tool_choice="required").before) == (None, "")


def test_on_a_template_with_tool_syntax_tools_are_shown_and_auto_lets_the_model_choose():
    auto = request(tools=TOOLS).tool_plan(TaggedCalls())
    assert auto.forced == [] and auto.names == ["get_weather", "get_time"] and auto.syntax == TaggedCalls()
    assert auto.shown == TOOLS  # as the client sent them, for the template to render
    assert grammar(TaggedCalls(), tools=TOOLS) is None and grammar(TaggedCalls(), tools=TOOLS, tool_choice="auto") is None
    forced = grammar(TaggedCalls(), tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert (forced.before, forced.after) == ("<tool_call>\n", "\n</tool_call>")  # the call inside the template's tags
    assert json.loads(forced.json_schema)["properties"]["name"] == {"const": "get_weather"}
    assert request(tools=TOOLS, tool_choice="none").tool_plan(TaggedCalls()) is None
    with pytest.raises(InvalidRequestError, match="response_format: cannot be combined with tools"):
        grammar(TaggedCalls(), tools=TOOLS, response_format={"type": "json_object"})


@pytest.mark.parametrize("fields,word", [
    (dict(tools=TOOLS), "tool_choice: 'auto'"),
    (dict(tools=TOOLS, tool_choice="auto"), "tool_choice: 'auto'"),
    (dict(tool_choice="required"), "tool_choice: needs tools"),
    (dict(tools=TOOLS + TOOLS[:1], tool_choice="required"), "unique"),
    (dict(tools=[{"type": "function", "function": {"name": "bad name"}}], tool_choice="required"), "tools.0.function.name"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}], tool_choice="required"),
     "tools: unsupported JSON schema"),
    (dict(response_format={"type": "json_schema"}), "response_format.json_schema: required"),
    (dict(response_format={"type": "json_object", "json_schema": {"name": "w", "schema": WEATHER}}), "only with type"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "w"}}), "response_format.json_schema.schema"),
    (dict(response_format={"type": "json_object"}, ignore_eos=True), "ignore_eos"),
])
def test_what_cannot_be_served_is_a_400_naming_it(fields, word):
    with pytest.raises(InvalidRequestError, match=word):
        grammar(**fields)
