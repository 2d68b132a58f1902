"""Tools through the model's own chat template on a real local Ray cluster: the
default model served with a Hermes-style template given as
``engine.chat_template`` (tests/conversation/chatml_tools.jinja), through the
``openai`` client. The prompt holds the tool schema; a ``required`` call comes
back as ``tool_calls`` (streamed and not) and the conversation continues from
it with the tool's result; ``auto`` is served with the tools in the prompt."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from ray import serve

from serve_helpers import MODEL_ID, app_config, deploy

TEMPLATE = (Path(__file__).parents[2] / "conversation" / "chatml_tools.jinja").read_text()
ENGINE = {"device": "cpu", "sink_tokens": 4, "window": 500, "max_sessions": 8, "max_turn_tokens": 512, "chat_template": TEMPLATE}
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city"], "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 20}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def app(cluster):
    prefix = deploy("tmpltools", app_config("tmpltools-sessions", engine=ENGINE, scaling={"min_replicas": 1, "max_replicas": 1}))
    from openai import OpenAI

    yield OpenAI(base_url=f"{cluster}{prefix}/v1", api_key="unused", max_retries=0, timeout=300)
    serve.delete("tmpltools")


def test_the_prompt_holds_the_tool_schema(app, base_model):
    from swiftinfer_core.conversation.chat_format import ChatFormat

    fmt = ChatFormat(base_model.tokenizer, template=TEMPLATE)
    with_tools = app.chat.completions.create(model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=40, temperature=0)
    plain = app.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=2, temperature=0)
    assert with_tools.usage.prompt_tokens == len(fmt.first_round(ASK, TOOLS))
    assert plain.usage.prompt_tokens == len(fmt.first_round(ASK)) < with_tools.usage.prompt_tokens
    assert json.dumps(TOOLS[0]) in base_model.tokenizer.decode(fmt.first_round(ASK, TOOLS))


def test_a_required_call_round_trips_and_the_conversation_continues(app):
    first = app.chat.completions.with_raw_response.create(model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice="required",
                                                          temperature=0, max_tokens=40)
    choice = first.parse().choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    history = ASK + [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})}]
    second = app.chat.completions.with_raw_response.create(model=MODEL_ID, messages=history, tools=TOOLS, tool_choice="none",
                                                           temperature=0, max_tokens=16)
    answer = second.parse()
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    # the same conversation, found by its history digest: the call came back as the tagged text the model wrote
    assert second.headers["x-session-id"] == first.headers["x-session-id"] and answer.cache == "warm"


def test_a_streamed_named_call(app):
    resp = app.chat.completions.create(model=MODEL_ID, messages=ASK, tools=TOOLS, stream=True, temperature=0.7, seed=4, max_tokens=40,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    args, reasons = "", []
    for c in resp:
        for ch in c.choices:
            for tc in ch.delta.tool_calls or []:
                assert tc.function.name == "get_weather"
                args += tc.function.arguments or ""
            reasons.append(ch.finish_reason)
    assert "tool_calls" in reasons
    jsonschema.validate(json.loads(args), WEATHER)


def test_auto_shows_the_tools_and_lets_the_model_answer_in_text(app, base_model):
    """This 135M model answers this question in text, greedily, with the tools in
    its prompt (it was not seen to call by itself); a call it writes is parsed as
    under ``required`` (same parser: tests/conversation/test_tool_syntax.py)."""
    from swiftinfer_core.conversation.chat_format import ChatFormat

    body = app.chat.completions.create(model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice="auto", temperature=0, max_tokens=48)
    msg, reason = body.choices[0].message, body.choices[0].finish_reason
    assert body.usage.prompt_tokens == len(ChatFormat(base_model.tokenizer, template=TEMPLATE).first_round(ASK, TOOLS))
    assert msg.tool_calls is None and reason == "stop" and msg.content and "<tool_call>" not in msg.content
