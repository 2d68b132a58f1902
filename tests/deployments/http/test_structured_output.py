"""Structured output and tools on a real local Ray cluster with the default
model, through the ``openai`` client: JSON-schema replies that parse and
validate over 50 seeded samples at temperature 1, ``json_object``, forced tool
calls (``required`` and a named function, streamed and not), a tool-call round
trip that continues the same conversation, and a 400 naming each field or
combination this server refuses."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from ray import serve

from serve_helpers import MODEL_ID, app_config, deploy

ENGINE = {"device": "cpu", "sink_tokens": 4, "window": 250, "max_sessions": 16, "max_turn_tokens": 512}
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pets"], "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pets": {"type": "array", "maxItems": 3, "items": {"enum": ["cat", "dog", "fish"]}},
}}
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"], "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now"}},
]
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


@pytest.fixture(scope="module")
def app(cluster):
    prefix = deploy("structured", app_config("structured-sessions", engine=ENGINE, scaling={"min_replicas": 1, "max_replicas": 1}))
    from openai import OpenAI

    base = f"{cluster}{prefix}/v1"
    yield OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300), base
    serve.delete("structured")


def person_format() -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def test_json_schema_replies_always_parse_and_validate_over_50_seeded_samples(app):
    from openai import AsyncOpenAI

    _, base = app
    messages = [{"role": "user", "content": "Invent a person and describe them as JSON."}]

    async def sample_all():
        oai = AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
        gate = asyncio.Semaphore(10)

        async def one(seed: int):
            async with gate:
                kw = dict(model=MODEL_ID, messages=messages, temperature=1.0, seed=seed, max_tokens=96,
                          response_format=person_format())
                if seed % 5:
                    choice = (await oai.chat.completions.create(**kw)).choices[0]
                    return choice.message.content, choice.finish_reason
                text, reason = "", None  # every fifth one streamed
                async for c in await oai.chat.completions.create(stream=True, **kw):
                    if c.choices:
                        text += c.choices[0].delta.content or ""
                        reason = c.choices[0].finish_reason or reason
                return text, reason

        try:
            return await asyncio.gather(*(one(s) for s in range(50)))
        finally:
            await oai.close()

    replies = asyncio.run(sample_all())
    for seed, (text, reason) in enumerate(replies):
        assert reason == "stop", (seed, text)
        jsonschema.validate(json.loads(text), PERSON)
    assert len({t for t, _ in replies}) > 25  # temperature 1 really sampled: mostly different replies


@pytest.mark.parametrize("stream", [False, True])
def test_json_object_reply_is_a_json_object(app, stream):
    oai, _ = app
    kw = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Reply with a JSON object with the keys name and age of a cat."}], temperature=0,
              max_tokens=120, response_format={"type": "json_object"}, stream=stream)
    resp = oai.chat.completions.create(**kw)
    if stream:
        chunks = [c for c in resp if c.choices]
        text, reason = "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason
    else:
        text, reason = resp.choices[0].message.content, resp.choices[0].finish_reason
    assert reason == "stop" and isinstance(json.loads(text), dict), text


def streamed_call(resp) -> tuple[list[dict], str]:
    """(tool calls, finish reason) accumulated from a stream's deltas, as clients do."""
    calls: dict[int, dict] = {}
    reason = None
    for c in resp:
        if not c.choices:
            continue
        d = c.choices[0].delta
        assert not d.content  # a call's text is never streamed as content
        for tc in d.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        reason = c.choices[0].finish_reason or reason
    return [calls[i] for i in sorted(calls)], reason


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_tool_choice_is_a_call_of_that_tool(app, stream):
    oai, _ = app
    resp = oai.chat.completions.create(model=MODEL_ID, messages=ASK, tools=TOOLS, temperature=0.8, seed=7, max_tokens=60,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=stream)
    if stream:
        calls, reason = streamed_call(resp)
    else:
        msg, reason = resp.choices[0].message, resp.choices[0].finish_reason
        assert msg.content is None
        calls = [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments} for t in msg.tool_calls]
    assert reason == "tool_calls" and len(calls) == 1
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER)


def test_tool_call_round_trip_continues_the_conversation(app):
    oai, _ = app
    first = oai.chat.completions.with_raw_response.create(model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice="required",
                                                          temperature=0, max_tokens=60)
    msg = first.parse().choices[0].message
    assert first.parse().choices[0].finish_reason == "tool_calls"
    (call,) = msg.tool_calls
    assert call.function.name in ("get_weather", "get_time")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(args, WEATHER)
    # the client runs the tool and sends the whole history back, tool result included (no session id)
    history = ASK + [msg.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})}]
    second = oai.chat.completions.with_raw_response.create(model=MODEL_ID, messages=history, tools=TOOLS, tool_choice="none",
                                                           temperature=0, max_tokens=24)
    answer = second.parse()
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    # the same conversation, found by its history digest: the call's text was what the model wrote
    assert second.headers["x-session-id"] == first.headers["x-session-id"]
    assert answer.usage.prompt_tokens_details.cached_tokens > 0


def test_refusals_name_the_field(app):
    from openai import BadRequestError

    oai, _ = app
    cases = {
        "tool_choice": dict(tools=TOOLS),  # auto, the default with tools: this template has no tool syntax
        "tool_choice: 'auto'": dict(tools=TOOLS, tool_choice="auto"),
        "tool_choice: no tool named": dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
        "response_format: cannot be combined": dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}),
        "response_format.json_schema.schema": dict(response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "frobnicate"}}}),
        "min_tokens": dict(response_format={"type": "json_object"}, extra_body={"min_tokens": 3}),
        "n: 17 choices": dict(n=17),  # more than the engine's 16 cache slots
        "function_call": dict(messages=ASK + [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]),
    }
    for field, kw in cases.items():
        with pytest.raises(BadRequestError) as err:
            oai.chat.completions.create(**{"model": MODEL_ID, "messages": ASK, "max_tokens": 4, **kw})
        assert field in str(err.value), (field, str(err.value))
