"""``POST /v1/responses`` (OpenAI's Responses API) on a real local Ray Serve app with the
default model, driven by the ``openai`` SDK itself: a conversation continued by
``previous_response_id`` runs warm on its session's cache, streamed events come in
OpenAI's order and shapes, and what the server cannot do is a clear 4xx."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from ray import serve

from serve_helpers import MODEL_ID, app_config, deploy

ENGINE = {"device": "cpu", "sink_tokens": 4, "window": 250, "max_sessions": 8, "max_turn_tokens": 512}


@pytest.fixture(scope="module")
def base(cluster):
    prefix = deploy("resp", app_config("resp-sessions", engine=ENGINE, scaling={"min_replicas": 1, "max_replicas": 1}))
    yield f"{cluster}{prefix}"
    serve.delete("resp")


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def _session(response) -> str:
    return response.id.removeprefix("resp_").rpartition(".")[0]


def test_a_conversation_continues_warm_by_previous_response_id(client, base):
    first = client.responses.create(model=MODEL_ID, input="Hello! My name is Ann and I like green apples.",
                                    instructions="Answer in one short sentence.", max_output_tokens=12, temperature=0)
    assert first.status in ("completed", "incomplete") and first.output_text, first
    assert first.id.startswith("resp_conv-") and first.id.endswith(".1") and first.previous_response_id is None
    assert first.output[0].type == "message" and first.output[0].role == "assistant"
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.model_extra["cache"] == "new"
    second = client.responses.create(model=MODEL_ID, previous_response_id=first.id, input="What fruit do I like?",
                                     max_output_tokens=12, temperature=0)
    assert second.id == first.id[:-1] + "2" and second.previous_response_id == first.id and second.output_text
    assert second.model_extra["cache"] == "warm"  # only the new input was prefilled
    assert second.usage.input_tokens_details.cached_tokens > first.usage.input_tokens / 2, second.usage
    if first.status == "incomplete":
        assert first.incomplete_details.reason == "max_output_tokens"
    turns = httpx.get(f"{base}/v1/sessions/{_session(first)}/turns", timeout=30).json()["data"]
    assert [t["seq"] for t in turns] == [1, 2]


def test_streamed_events_come_in_openais_order(client):
    stream = client.responses.create(model=MODEL_ID, input="Name three colours.", max_output_tokens=10, temperature=0, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"], kinds
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"], kinds
    assert kinds[-1] in ("response.completed", "response.incomplete") and "response.output_text.delta" in kinds, kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text and final.output_text == text == events[-4].text, (text, final)
    assert final.usage.output_tokens > 0 and final.id.endswith(".1")
    assert events[0].response.id == final.id and events[0].response.status == "in_progress"
    after = client.responses.create(model=MODEL_ID, previous_response_id=final.id, input="And three more.", max_output_tokens=6)
    assert after.model_extra["cache"] == "warm" and after.id.endswith(".2")


def test_only_the_latest_response_continues_and_unknown_ids_are_404(client):
    first = client.responses.create(model=MODEL_ID, input="Count to three.", max_output_tokens=6, temperature=0)
    client.responses.create(model=MODEL_ID, previous_response_id=first.id, input="Now to five.", max_output_tokens=6)
    with pytest.raises(openai.ConflictError) as stale:  # a branch from an older response: one linear cache per conversation
        client.responses.create(model=MODEL_ID, previous_response_id=first.id, input="Again.", max_output_tokens=6)
    assert stale.value.body["code"] == "previous_response_not_latest", stale.value.body
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=MODEL_ID, previous_response_id="resp_conv-nothing.1", input="Hi", max_output_tokens=4)
    assert missing.value.body["code"] == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError, match="not a response id"):
        client.responses.create(model=MODEL_ID, previous_response_id="chatcmpl-123", input="Hi", max_output_tokens=4)


def test_a_retry_with_its_idempotency_key_is_answered_again(base, client):
    first = client.responses.create(model=MODEL_ID, input="Say hello.", max_output_tokens=6, temperature=0)
    body = {"model": MODEL_ID, "previous_response_id": first.id, "input": "Say goodbye.", "max_output_tokens": 6, "temperature": 0}
    headers = {"idempotency-key": "resp-retry-1"}
    once = httpx.post(f"{base}/v1/responses", json=body, headers=headers, timeout=120).json()
    again = httpx.post(f"{base}/v1/responses", json=body, headers=headers, timeout=120).json()
    assert once["id"] == again["id"] == first.id[:-1] + "2", (once, again)
    assert again["cache"] == "replayed" and again["output"] == once["output"], again
    other = httpx.post(f"{base}/v1/responses", json=body, timeout=120)  # no key: a second branch from the first response
    assert other.status_code == 409 and other.json()["error"]["code"] == "previous_response_not_latest", other.text
    # another key passes the arrival check (it may be a retry) but is not the committed turn's: the replica's
    # own check of the turn number refuses it instead of running it as turn 3
    late = httpx.post(f"{base}/v1/responses", json=body, headers={"idempotency-key": "resp-retry-2"}, timeout=120)
    assert late.status_code == 409 and late.json()["error"]["code"] == "session_busy", late.text
    turns = httpx.get(f"{base}/v1/sessions/{_session(first)}/turns", timeout=30).json()["data"]
    assert [t["seq"] for t in turns] == [1, 2]


def test_store_false_is_not_kept(client, base):
    gone = client.responses.create(model=MODEL_ID, input="Hi there.", max_output_tokens=4, store=False)
    assert gone.store is False and gone.output_text
    sid = _session(gone)

    def dropped() -> bool:
        return httpx.get(f"{base}/v1/sessions/{sid}", timeout=30).status_code == 404
    for _ in range(40):  # dropped in the background once the turn is over
        if dropped():
            break
        time.sleep(0.25)
    assert dropped()
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL_ID, previous_response_id=gone.id, input="More.", max_output_tokens=4)


@pytest.mark.parametrize("kwargs,named", [
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]}, "tools"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"background": True}, "background"),
    ({"extra_body": {"max_tokens": 5}}, "max_tokens"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"stream": True, "extra_body": {"stream_options": {"continuous_usage_stats": True}}}, "continuous_usage_stats"),  # chat's, vLLM's
])
def test_what_this_server_cannot_do_is_a_400_naming_it(client, kwargs, named):
    with pytest.raises(openai.BadRequestError, match=named):
        client.responses.create(model=MODEL_ID, input="Hi", **kwargs)


def test_input_as_messages_and_a_wrong_model(client):
    r = client.responses.create(model=MODEL_ID, max_output_tokens=6, temperature=0, input=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Name a fruit."}]}])
    assert r.output_text
    with pytest.raises(openai.BadRequestError, match="input_image"):
        client.responses.create(model=MODEL_ID, input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="not-this-one", input="Hi")
