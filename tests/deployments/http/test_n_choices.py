"""``n`` choices from one prefill on a real local Ray cluster with the default
model, through the ``openai`` client: each choice with its own finish reason,
logprobs and seed stream, usage summed; streamed chunks by index; the session
rule (choice 0 continues the conversation, found again by its history digest;
the others are discarded); the idempotent replay of such a turn; grammar and
forced tool calls per choice; /v1/completions with n and echo."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from ray import serve

from serve_helpers import MODEL_ID, app_config, deploy

ENGINE = {"device": "cpu", "sink_tokens": 4, "window": 250, "max_sessions": 6, "max_turn_tokens": 512}
USER = [{"role": "user", "content": "Tell me something about cats."}]
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"], "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}}]


@pytest.fixture(scope="module")
def app(cluster):
    prefix = deploy("choices", app_config("choices-sessions", engine=ENGINE, scaling={"min_replicas": 1, "max_replicas": 1}))
    from openai import OpenAI

    with httpx.Client(base_url=cluster, timeout=300) as http:
        yield OpenAI(base_url=f"{cluster}{prefix}/v1", api_key="unused", max_retries=0, timeout=300), http, prefix
    serve.delete("choices")


def streamed(resp) -> tuple[dict[int, str], dict[int, str], object]:
    """(text by index, finish reason by index, usage) of a streamed reply."""
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    usage = None
    for c in resp:
        usage = c.usage or usage
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                assert ch.index not in reasons  # one finish per choice
                reasons[ch.index] = ch.finish_reason
    return texts, reasons, usage


def test_choices_have_their_own_streams_logprobs_and_summed_usage(app):
    oai, _, _ = app
    kw = dict(model=MODEL_ID, messages=USER, n=3, max_tokens=8, temperature=1.0, seed=11, logprobs=True,
              extra_body={"ignore_eos": True})
    body = oai.chat.completions.create(**kw, extra_headers={"x-session-id": "n-plain"})
    assert [c.index for c in body.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" and len(c.logprobs.content) == 8 for c in body.choices)
    texts = [c.message.content for c in body.choices]
    assert len(set(texts)) == 3  # seed + i: distinct streams
    prompt = body.usage.prompt_tokens
    assert body.usage.completion_tokens == 3 * 8 and body.usage.total_tokens == prompt + 24
    # streamed, on another session with the same seed: the same choices, chunk by chunk per index
    s_texts, reasons, usage = streamed(oai.chat.completions.create(**kw, stream=True, extra_headers={"x-session-id": "n-stream"}))
    assert s_texts == dict(enumerate(texts)) and reasons == {0: "length", 1: "length", 2: "length"}
    assert usage.completion_tokens == 24 and usage.prompt_tokens == prompt


def test_choice_zero_continues_the_conversation_and_the_others_are_discarded(app):
    oai, http, prefix = app
    first = oai.chat.completions.with_raw_response.create(model=MODEL_ID, messages=USER, n=2, max_tokens=12, temperature=1.0, seed=3)
    sid, body = first.headers["x-session-id"], first.parse()
    zero, one = (c.message.content for c in body.choices)
    assert zero != one
    info = http.get(f"{prefix}/v1/sessions/{sid}").json()
    assert info["rounds"] == 1 and info["generated_tokens"] <= 12  # one choice's tokens are the session's
    follow = [{"role": "user", "content": "And dogs?"}]
    # an id-less client sending choice 1 back is a different conversation (rebuilt from its history) ...
    other = oai.chat.completions.with_raw_response.create(model=MODEL_ID, messages=USER + [{"role": "assistant", "content": one}] + follow,
                                                          max_tokens=4, temperature=0)
    assert other.headers["x-session-id"] != sid
    # ... choice 0 is the one the session kept: found by its digest, warm
    kept = oai.chat.completions.with_raw_response.create(model=MODEL_ID, messages=USER + [{"role": "assistant", "content": zero}] + follow,
                                                         max_tokens=4, temperature=0)
    assert kept.headers["x-session-id"] == sid and kept.parse().cache == "warm"
    assert http.get(f"{prefix}/v1/sessions/{sid}").json()["rounds"] == 2


def test_a_retried_turn_with_choices_replays_every_choice(app):
    oai, _, _ = app
    kw = dict(model=MODEL_ID, messages=USER, n=3, max_tokens=6, temperature=1.0, seed=5,
              extra_body={"session_id": "n-replay"}, extra_headers={"Idempotency-Key": "n-replay-1"})
    a = oai.chat.completions.create(**kw)
    b = oai.chat.completions.create(**kw)
    assert b.cache == "replayed" and a.cache != "replayed"
    assert [(c.index, c.message.content, c.finish_reason) for c in b.choices] == [(c.index, c.message.content, c.finish_reason) for c in a.choices]
    assert b.usage.completion_tokens == a.usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_every_choice_is_its_own_tool_call(app, stream):
    oai, _, _ = app
    resp = oai.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
                                       tool_choice="required", n=2, temperature=1.0, seed=9, max_tokens=60, stream=stream)
    calls: dict[int, str] = {}
    reasons: dict[int, str] = {}
    if stream:
        for c in resp:
            for ch in c.choices:
                for tc in ch.delta.tool_calls or []:
                    calls[ch.index] = calls.get(ch.index, "") + (tc.function.arguments or "")
                reasons[ch.index] = ch.finish_reason or reasons.get(ch.index)
    else:
        for ch in resp.choices:
            (tc,) = ch.message.tool_calls
            calls[ch.index], reasons[ch.index] = tc.function.arguments, ch.finish_reason
    assert reasons == {0: "tool_calls", 1: "tool_calls"}
    for args in calls.values():
        jsonschema.validate(json.loads(args), WEATHER)


def test_completions_with_n_and_echo(app):
    oai, _, _ = app
    kw = dict(model=MODEL_ID, prompt="Once upon a time", n=2, max_tokens=6, temperature=1.0, seed=2, echo=True)
    body = oai.completions.create(**kw)
    assert [c.index for c in body.choices] == [0, 1]
    assert all(c.text.startswith("Once upon a time") for c in body.choices) and body.choices[0].text != body.choices[1].text
    assert body.usage.completion_tokens <= 12
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for c in oai.completions.create(stream=True, **kw):  # streamed: each choice's events by index, the prompt once per choice
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            if ch.finish_reason:
                reasons[ch.index] = ch.finish_reason
    assert texts == {c.index: c.text for c in body.choices} and reasons == {c.index: c.finish_reason for c in body.choices}


def test_more_choices_than_cache_slots_is_a_400_naming_n(app):
    from openai import BadRequestError

    oai, _, _ = app
    with pytest.raises(BadRequestError, match=r"n: 7 choices need 7 cache slots"):
        oai.chat.completions.create(model=MODEL_ID, messages=USER, n=7, max_tokens=4)
