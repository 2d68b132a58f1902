"""An assistant message with tool_calls sent back becoming the text the model
wrote for them, in the template's tool syntax (deployments/http/tool_calls.py;
the parsers themselves: tests/conversation/test_tool_syntax.py)."""

import json

import pytest

from deployments.http.openai_schema import ChatCompletionRequest
from deployments.http.tool_calls import assistant_text
from swiftinfer_core.conversation.tool_syntax import TaggedCalls
from swiftinfer_core.errors import InvalidRequestError


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


def test_on_a_tagged_template_the_calls_come_back_in_its_tags():
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    body = {"model": "m", "messages": [{"role": "user", "content": "weather?"},
                                       {"role": "assistant", "content": "Let me look.", "tool_calls": [call, call]}]}
    msgs = ChatCompletionRequest.parse(json.dumps(body).encode()).engine_messages(TaggedCalls())
    one = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert msgs[1]["content"] == "Let me look.\n" + one + "\n" + one
