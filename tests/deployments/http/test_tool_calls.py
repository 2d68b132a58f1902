"""A tool call's text both ways (deployments/http/tool_calls.py), and an assistant
message with tool_calls sent back becoming that text."""

import json

import pytest

from deployments.http.openai_schema import ChatCompletionRequest
from deployments.http.tool_calls import assistant_text, call_text, parse_call
from swiftinfer_core.errors import InvalidRequestError


def test_a_call_parses_to_its_exact_argument_text_and_back():
    args = '{"city": "Caf\\u00e9 \\"x\\"", "n": [1, 2.5e3]}'  # escapes kept as written, not re-dumped
    text = '{"name": "get_weather", "arguments": ' + args + "}"
    assert parse_call(text, ["get_weather"]) == ("get_weather", args)
    assert call_text("get_weather", args) == text
    assert parse_call('{"name": "f", "arguments": {}}') == ("f", "{}")


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "arguments": {"city": "Par',  # cut by max_tokens
    '{"name": "other", "arguments": {}}',  # not one of the tools
    '{"name":"get_weather","arguments":{}}',  # not the grammar's spacing: not what the model wrote under it
    '{"name": "get_weather", "arguments": {}, "x": 1}',
    '[{"name": "get_weather", "arguments": {}}]',
    "plain words",
])
def test_anything_but_a_whole_call_stays_text(text):
    assert parse_call(text, ["get_weather"]) is None


def test_an_assistant_message_with_tool_calls_comes_back_as_the_text_the_model_wrote():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    body = {"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]}
    msgs = ChatCompletionRequest.parse(json.dumps(body).encode()).engine_messages()
    assert msgs[1] == {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'}
    assert msgs[2] == {"role": "tool", "content": "18 C"}
    assert assistant_text("ok", [call, call], "m").split("\n") == ["ok", msgs[1]["content"], msgs[1]["content"]]
    for bad, word in (({**call, "function": {"name": "f", "arguments": "{not json"}}, "arguments: must be JSON"),
                      ({**call, "function": {"name": 3, "arguments": "{}"}}, "string name")):
        body["messages"][1]["tool_calls"] = [bad]
        with pytest.raises(InvalidRequestError, match=word):
            ChatCompletionRequest.parse(json.dumps(body).encode()).engine_messages()
    body["messages"][0]["tool_calls"] = [call]
    with pytest.raises(InvalidRequestError, match="only assistant messages"):
        ChatCompletionRequest.parse(json.dumps(body).encode()).engine_messages()
