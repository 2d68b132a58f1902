"""Two clients that apps use, unmodified, against a real local Ray Serve app
with the default model: LangChain's ``ChatOpenAI`` and ``litellm``. Each runs
one multi-turn conversation (the second turn continues the first from the
cache: its prompt tokens are mostly cached) and one tool or structured-output
call. Both are test-only extras (pyproject's ``dev``)."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest
from ray import serve

from serve_helpers import MODEL_ID, app_config, deploy

ENGINE = {"device": "cpu", "sink_tokens": 4, "window": 250, "max_sessions": 8, "max_turn_tokens": 512}
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city"], "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 20}}}
PET = {"type": "object", "additionalProperties": False, "required": ["name", "legs"], "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 12}, "legs": {"type": "integer", "minimum": 0, "maximum": 8}}}


@pytest.fixture(scope="module")
def base_url(cluster):
    prefix = deploy("clients", app_config("clients-sessions", engine=ENGINE, scaling={"min_replicas": 1, "max_replicas": 1}))
    yield f"{cluster}{prefix}/v1"
    serve.delete("clients")


@pytest.fixture(scope="module")
def litellm():
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no network here: the cost map the package ships
    import litellm

    litellm.telemetry = False
    return litellm


def test_langchain_chatopenai_multi_turn_and_a_tool_call_round_trip(base_url):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL_ID, base_url=base_url, api_key="unused", temperature=0, max_tokens=12, max_retries=0, timeout=120)
    history = [HumanMessage("Hello! My name is Ann and I like green apples.")]
    first = llm.invoke(history)
    history += [first, HumanMessage("What fruit do I like?")]
    second = llm.invoke(history)
    assert first.content and second.content
    # the second call resent the whole history; the server found the conversation and fed only the new message
    cached = second.usage_metadata["input_token_details"]["cache_read"]
    assert cached > second.usage_metadata["input_tokens"] / 2, second.usage_metadata

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    ask = [HumanMessage("What is the weather in Paris?")]
    caller = ChatOpenAI(model=MODEL_ID, base_url=base_url, api_key="unused", temperature=0, max_tokens=40, max_retries=0, timeout=120)
    call_msg = caller.bind_tools([get_weather], tool_choice="get_weather").invoke(ask)
    (call,) = call_msg.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str) and call["args"]["city"]
    answer = llm.invoke(ask + [call_msg, ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])])
    assert answer.content and not answer.tool_calls
    assert answer.usage_metadata["input_token_details"]["cache_read"] > 0  # the call's conversation, continued


def test_litellm_multi_turn_and_structured_output(base_url, litellm):
    kw = dict(model=f"openai/{MODEL_ID}", api_base=base_url, api_key="unused", temperature=0, max_tokens=12, num_retries=0)
    history = [{"role": "user", "content": "Hello! My name is Ann and I like green apples."}]
    first = litellm.completion(messages=history, **kw)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "What fruit do I like?"}]
    second = litellm.completion(messages=history, **kw)
    assert first.choices[0].message.content and second.choices[0].message.content
    assert second.usage.prompt_tokens_details.cached_tokens > second.usage.prompt_tokens / 2

    fmt = {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET, "strict": True}}
    pet = litellm.completion(messages=[{"role": "user", "content": "Describe a pet as JSON."}], response_format=fmt,
                             **{**kw, "max_tokens": 60})
    assert pet.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(pet.choices[0].message.content), PET)
    # and a forced tool call, streamed, as litellm assembles it
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}}
    chunks = list(litellm.completion(messages=[{"role": "user", "content": "Weather in Rome?"}], tools=[tool], tool_choice="required",
                                     stream=True, **{**kw, "max_tokens": 40}))
    built = litellm.stream_chunk_builder(chunks)
    (call,) = built.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and built.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
