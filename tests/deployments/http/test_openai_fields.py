"""Issue 18 on a real local Ray cluster, through the ``openai`` client: penalties,
logit_bias, min_tokens and logprobs (streamed and not) against the model's own
logits computed here; /v1/completions (text and token-id prompts, sessions,
logprobs, echo with prompt logprobs, stop, batches of prompts); /tokenize and /detokenize; vLLM's
``stream_options.continuous_usage_stats`` on both APIs (and the load client's token counts from it);
and a 400 naming each field this server still refuses."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest
import torch
from ray import serve

from serve_helpers import MODEL_ID, app_config, deploy, wait_for

USER = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def app(cluster):
    prefix = deploy("fields", app_config("fields-sessions", scaling={"min_replicas": 1, "max_replicas": 1}))
    from openai import OpenAI

    with httpx.Client(base_url=cluster, timeout=180) as http:
        yield OpenAI(base_url=f"{cluster}{prefix}/v1", api_key="unused", max_retries=0), http, prefix
    serve.delete("fields")


@pytest.fixture(scope="module")
def reference(model_dir):
    """(tokenizer's ChatFormat, transformers' float32 model) of the default model, on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swiftinfer_core.conversation.chat_format import ChatFormat

    fmt = ChatFormat(AutoTokenizer.from_pretrained(model_dir))
    return fmt, AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()


def greedy_reference(fmt, model, params, steps: int, ids: list[int] | None = None) -> list[tuple[int, torch.Tensor]]:
    """(token, log-probabilities [V]) per step after ``ids`` (default: the USER
    chat turn): greedy on the adjusted logits, penalties counting every token so
    far (all of it fits in the test cache)."""
    from swiftinfer_core.engine.penalties import RowAdjust, adjust

    ids = list(fmt.first_round(USER) if ids is None else ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            row = model(torch.tensor([ids])).logits[0, -1:].float()
            lp = torch.log_softmax(adjust(row, [params], [RowAdjust(counts=Counter(ids))])[0].double(), -1)
            tok = int(lp.argmax())
            out.append((tok, lp))
            ids.append(tok)
    return out


def token_bytes(fmt, tok: int) -> list[int]:
    from deployments.http.tokens import TextCodec

    return list(TextCodec(fmt.tok).token_bytes(tok))


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_with_penalties_equal_the_models_logits(app, reference, stream):
    from swiftinfer_core.config import SamplingParams

    oai, _, _ = app
    fmt, model = reference
    kw = dict(model=MODEL_ID, messages=USER, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3,
              presence_penalty=0.6, frequency_penalty=0.4, extra_body={"repetition_penalty": 1.2, "session_id": f"lp-{stream}"})
    if stream:
        chunks = [c for c in oai.chat.completions.create(stream=True, **kw) if c.choices]
        content = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
    else:
        choice = oai.chat.completions.create(**kw).choices[0]
        content, text = choice.logprobs.content, choice.message.content
    params = SamplingParams(presence_penalty=0.6, frequency_penalty=0.4, repetition_penalty=1.2)
    ref = greedy_reference(fmt, model, params, len(content))
    assert content and text == "".join(e.token for e in content)
    for e, (tok, lp) in zip(content, ref):
        assert e.bytes == token_bytes(fmt, tok), (e.token, fmt.tok.decode([tok]))
        assert abs(e.logprob - float(lp[tok])) < 2e-3
        top = torch.topk(lp, 3)
        assert [t.bytes for t in e.top_logprobs] == [token_bytes(fmt, t) for t in top.indices.tolist()]
        assert all(abs(t.logprob - float(v)) < 2e-3 for t, v in zip(e.top_logprobs, top.values.tolist()))


@pytest.mark.parametrize("stream", [False, True])
def test_logit_bias_and_min_tokens(app, reference, stream):
    oai, _, _ = app
    fmt, _ = reference
    banana = fmt.tok.encode(" banana")[0]

    def ask(messages=USER, **kw):
        resp = oai.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0, stream=stream,
                                           stream_options={"include_usage": True} if stream else None, **kw)
        if not stream:
            return resp.choices[0].message.content, resp.choices[0].finish_reason, resp.usage.completion_tokens
        chunks = list(resp)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].choices[0].finish_reason, chunks[-1].usage.completion_tokens

    text, _, n = ask(max_tokens=4, logit_bias={str(banana): 100})
    assert text == " banana" * 4 and n == 4
    short = ask(max_tokens=40, messages=[{"role": "user", "content": "Reply with one word: yes or no?"}])
    assert short[1] == "stop"
    forced = ask(max_tokens=short[2] + 5, extra_body={"min_tokens": short[2] + 5},
                 messages=[{"role": "user", "content": "Reply with one word: yes or no?"}])
    assert forced[1] == "length" and forced[2] == short[2] + 5


def test_refused_fields_are_named_in_a_400(app):
    from openai import BadRequestError

    oai, _, _ = app
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    cases = {
        "n": dict(n=17),  # more choices than the engine's 16 cache slots
        "tools": dict(tools=[tool]),  # tool_choice auto, the default: this template has no tool syntax
        "response_format": dict(response_format={"type": "json_schema"}),  # no schema
        "top_logprobs": dict(top_logprobs=2),
        "logit_bias": dict(logit_bias={"x1": 3}),
        "min_tokens": dict(max_tokens=2, extra_body={"min_tokens": 3}),
        "repetition_penalty": dict(extra_body={"repetition_penalty": 0.001}),
        "frobnicate": dict(extra_body={"frobnicate": 1}),
    }
    for field, kw in cases.items():
        with pytest.raises(BadRequestError) as err:
            oai.chat.completions.create(model=MODEL_ID, messages=USER, **kw)
        assert field in str(err.value), (field, str(err.value))
    bad = oai.chat.completions.with_raw_response.create  # an out-of-vocabulary bias: the engine's 400
    with pytest.raises(BadRequestError, match="vocabulary"):
        bad(model=MODEL_ID, messages=USER, logit_bias={"99999999": 1}, extra_body={"session_id": "oov-1"})


def test_tokenize_and_detokenize(app, reference):
    _, http, prefix = app
    fmt, _ = reference
    text = "Hello <|im_end|> world, ça va?"
    body = http.post(f"{prefix}/tokenize", json={"model": MODEL_ID, "prompt": text, "return_token_strs": True}).json()
    assert body["tokens"] == fmt.encode_as_text(text) and body["count"] == len(body["tokens"])
    assert body["token_strs"] == fmt.tok.convert_ids_to_tokens(body["tokens"]) and body["max_model_len"] > 0
    assert http.post(f"{prefix}/detokenize", json={"tokens": body["tokens"]}).json() == {"prompt": text}
    chat = http.post(f"{prefix}/tokenize", json={"messages": USER}).json()
    assert chat["tokens"] == fmt.first_round(USER) and chat["token_strs"] is None
    for path, bad in (("/tokenize", {"prompt": "a", "messages": USER}), ("/tokenize", {"prompt": 3}),
                      ("/detokenize", {"tokens": [-1]}), ("/detokenize", {"tokens": [10**9]}), ("/tokenize", {"prompt": "a", "x": 1})):
        resp = http.post(f"{prefix}{path}", json=bad)
        assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error", (path, bad, resp.text)
    assert http.post(f"{prefix}/tokenize", json={"model": "gpt-4", "prompt": "a"}).status_code == 404


def test_completions_text_and_token_prompts_with_logprobs(app, reference):
    from swiftinfer_core.config import SamplingParams

    oai, _, _ = app
    fmt, model = reference
    prompt = "The three primary colours are"
    ids = fmt.encode_as_text(prompt)
    ref = greedy_reference(fmt, model, SamplingParams(), 6, ids)
    got = oai.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=6, temperature=0, logprobs=2, extra_body={"ignore_eos": True})
    choice = got.choices[0]
    assert got.object == "text_completion" and choice.finish_reason == "length" and got.usage.completion_tokens == 6
    assert choice.text == fmt.tok.decode([t for t, _ in ref])
    lp = choice.logprobs
    assert lp.tokens == [fmt.tok.decode([t]) for t, _ in ref]
    assert all(abs(a - float(b[t])) < 2e-3 for a, (t, b) in zip(lp.token_logprobs, ref))
    assert [len(m) for m in lp.top_logprobs] == [2] * 6 and lp.text_offset[0] == 0
    assert lp.text_offset == [sum(len(x) for x in lp.tokens[:i]) for i in range(6)]
    # streamed, and from token ids: the same
    chunks = list(oai.completions.create(model=MODEL_ID, prompt=ids, max_tokens=6, temperature=0, logprobs=2, stream=True,
                                         extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens] == lp.tokens
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 6
    stopped = oai.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=6, temperature=0, stop=[choice.text[3:6]])
    assert stopped.choices[0].finish_reason == "stop" and choice.text.startswith(stopped.choices[0].text)


def test_completions_on_a_session_continue_its_token_stream(app, reference):
    from swiftinfer_core.config import SamplingParams

    oai, http, prefix = app
    fmt, model = reference
    a, b = fmt.encode_as_text("Once upon a time"), fmt.encode_as_text(" Then")
    kw = dict(model=MODEL_ID, max_tokens=5, temperature=0, extra_body={"session_id": "cmpl-s1", "ignore_eos": True})
    first = oai.completions.create(prompt=a, **kw).choices[0].text
    second = oai.completions.create(prompt=b, **kw).choices[0].text
    out1 = [t for t, _ in greedy_reference(fmt, model, SamplingParams(), 5, a)]
    out2 = [t for t, _ in greedy_reference(fmt, model, SamplingParams(), 5, a + out1 + b)]
    assert (first, second) == (fmt.tok.decode(out1), fmt.tok.decode(out2))
    assert http.get(f"{prefix}/v1/sessions/cmpl-s1").json()["rounds"] == 2
    # without a session the call's own session is deleted afterwards
    resp = oai.completions.with_raw_response.create(model=MODEL_ID, prompt="Hi", max_tokens=2)
    sid = resp.headers["x-session-id"]
    assert sid.startswith("cmpl-")
    wait_for(lambda: http.get(f"{prefix}/v1/sessions/{sid}").status_code == 404, 30, "the one-call session's deletion")


def test_completions_refuse_what_they_do_not_do(app):
    from openai import BadRequestError

    oai, _, _ = app
    for field, kw in {"best_of": dict(best_of=2), "suffix": dict(suffix="x"), "n": dict(n=2, echo=True, logprobs=1),
                      "logprobs": dict(logprobs=21)}.items():
        with pytest.raises(BadRequestError) as err:
            oai.completions.create(model=MODEL_ID, **{"prompt": "hi", **kw})
        assert field in str(err.value), (field, str(err.value))


def test_completions_batch_of_prompts(app, reference):
    """Each prompt of a batch is a turn of its own on a one-call session; choices are
    numbered prompt * n + j; usage is summed; streamed, the usage comes last, alone."""
    from openai import BadRequestError

    from swiftinfer_core.config import SamplingParams

    oai, http, prefix = app
    fmt, model = reference
    prompts = ["The three primary colours are", "Once upon a time", "Paris is the capital of"]
    ids = [fmt.encode_as_text(p) for p in prompts]
    replies = [fmt.tok.decode([t for t, _ in greedy_reference(fmt, model, SamplingParams(), 4, i)]) for i in ids]
    kw = dict(model=MODEL_ID, max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    raw = oai.completions.with_raw_response.create(prompt=prompts, n=2, **kw)
    body = raw.parse()
    assert [c.index for c in body.choices] == list(range(6)) and {c.finish_reason for c in body.choices} == {"length"}
    assert [c.text for c in body.choices] == [r for r in replies for _ in range(2)]
    assert (body.usage.prompt_tokens, body.usage.completion_tokens) == (sum(map(len, ids)), 3 * 2 * 4)
    sids = raw.headers["x-session-id"].split(",")
    assert len(set(sids)) == 3 and all(s.startswith("cmpl-") for s in sids)
    for sid in sids:
        wait_for(lambda: http.get(f"{prefix}/v1/sessions/{sid}").status_code == 404, 30, "the one-call session's deletion")
    # streamed, from token ids, with echo: each choice's events in order, the usage in a last event with no choices
    chunks = list(oai.completions.create(prompt=ids, stream=True, echo=True, **kw))
    texts: dict[int, str] = {}
    for c in chunks[:-1]:
        assert c.usage is None and len(c.choices) == 1 and c.id == chunks[0].id
        texts[c.choices[0].index] = texts.get(c.choices[0].index, "") + c.choices[0].text
    assert texts == {i: fmt.tok.decode(ids[i]) + replies[i] for i in range(3)}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    # a batch cannot continue a session; one bad prompt fails the request, and no session is left
    with pytest.raises(BadRequestError, match="session_id"):
        oai.completions.create(model=MODEL_ID, prompt=["a", "b"], extra_body={"session_id": "batch-1"})
    bad = http.post(f"{prefix}/v1/completions", json={"model": MODEL_ID, "prompt": [ids[0], [10**8]], "max_tokens": 2})
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"], bad.text
    for sid in bad.headers["x-session-id"].split(","):
        wait_for(lambda: http.get(f"{prefix}/v1/sessions/{sid}").status_code == 404, 30, "the failed batch's sessions' deletion")


@pytest.mark.parametrize("stream", [False, True])
def test_completions_echo_scores_the_prompt(app, reference, stream):
    oai, _, _ = app
    fmt, model = reference
    prompt = "Paris is the capital of France, and Rome is the capital of"
    ids = fmt.encode_as_text(prompt)
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    resp = oai.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=3, temperature=0, logprobs=1, echo=True, stream=stream)
    chunks = list(resp) if stream else [resp]
    text = "".join(c.choices[0].text for c in chunks)
    lp = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    tokens = [t for x in lp for t in x.tokens]
    values = [v for x in lp for v in x.token_logprobs]
    tops = [t for x in lp for t in x.top_logprobs]
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert tokens[: len(ids)] == [fmt.tok.decode([t]) for t in ids] and len(tokens) == len(ids) + 3
    assert values[0] is None and tops[0] is None
    for i in range(1, len(ids)):
        assert abs(values[i] - float(ref[i - 1, ids[i]])) < 2e-3, i
        assert list(tops[i]) == [fmt.tok.decode([int(ref[i - 1].argmax())])], i
    offsets = [o for x in lp for o in x.text_offset]
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]


CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}


def sse_events(http: httpx.Client, url: str, body: dict) -> list[dict]:
    """The ``data:`` events of a streamed request, ``[DONE]`` left out (it must come last)."""
    with http.stream("POST", url, json=body) as resp:
        assert resp.status_code == 200, resp.read()
        data = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def check_running_usage(events: list[dict], text_of) -> dict:
    """Every event of a continuous-usage stream carries usage; the content events' completion
    tokens rise strictly and end at the final usage's, with the final's prompt tokens throughout.
    Returns the final usage (the one event with the full usage body)."""
    (final,) = [e["usage"] for e in events if "usage" in e and "cached_tokens" in e["usage"]]
    assert all("usage" in e for e in events)
    content = [e["usage"] for e in events if e["choices"] and text_of(e["choices"][0])]
    assert content and all(set(u) == {"prompt_tokens", "completion_tokens", "total_tokens"} or u is final for u in content)
    counts = [u["completion_tokens"] for u in content]
    assert all(a < b for a, b in zip(counts, counts[1:])), counts
    assert counts[0] >= 1 and counts[-1] == final["completion_tokens"], (counts, final)
    assert {u["prompt_tokens"] for u in content} == {final["prompt_tokens"]}
    assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in content)
    return final


@pytest.mark.parametrize("n", [1, 2])
def test_chat_stream_continuous_usage(app, reference, n):
    """With continuous_usage_stats every chunk carries the usage so far (choices summed for n > 1);
    without it the chunks are as before: usage on the final one only."""
    _, http, prefix = app
    fmt, _ = reference
    url = f"{prefix}/v1/chat/completions"
    body = dict(model=MODEL_ID, messages=USER, max_tokens=10, temperature=0, ignore_eos=True, n=n, stream=True)
    events = sse_events(http, url, {**body, "stream_options": CONTINUOUS})
    final = check_running_usage(events, lambda c: c["delta"].get("content"))
    assert final["completion_tokens"] == 10 * n and final["prompt_tokens"] == len(fmt.first_round(USER))
    roles = [e for e in events if "role" in e["choices"][0]["delta"]]
    assert len(roles) == n and all(e["usage"]["completion_tokens"] == 0 for e in roles)  # as vLLM's role chunk
    plain = sse_events(http, url, {**body, "stream_options": {"include_usage": True}})
    assert [e for e in plain if "usage" in e] == [plain[-1]] and plain[-1]["usage"]["completion_tokens"] == 10 * n

    def texts(evs):
        return ["".join(e["choices"][0]["delta"].get("content") or "" for e in evs if e["choices"][0]["index"] == i) for i in range(n)]
    assert texts(plain) == texts(events)
    # vLLM's rule: the running usage only with include_usage
    off = sse_events(http, url, {**body, "stream_options": {"include_usage": False, "continuous_usage_stats": True}})
    assert [e for e in off if "usage" in e] == [off[-1]]


def test_completions_stream_continuous_usage(app, reference):
    """Text completions: the running usage counts the prompt's tokens; in a batch each event
    carries its own prompt's usage so far, and the summed usage still comes last, alone."""
    _, http, prefix = app
    fmt, _ = reference
    url = f"{prefix}/v1/completions"
    prompts = ["The three primary colours are", "Once upon a time"]
    ids = [fmt.encode_as_text(p) for p in prompts]
    body = dict(model=MODEL_ID, max_tokens=6, temperature=0, ignore_eos=True, stream=True, stream_options=CONTINUOUS)
    final = check_running_usage(sse_events(http, url, {**body, "prompt": prompts[0]}), lambda c: c["text"])
    assert (final["prompt_tokens"], final["completion_tokens"]) == (len(ids[0]), 6)
    plain = sse_events(http, url, {**body, "prompt": prompts[0], "stream_options": {"include_usage": True}})
    assert [e for e in plain if "usage" in e] == [plain[-1]]
    events = sse_events(http, url, {**body, "prompt": ids})
    *parts, total = events
    assert total["choices"] == [] and total["usage"]["completion_tokens"] == 12
    for i in range(2):
        mine = [e["usage"] for e in parts if e["choices"][0]["index"] == i]
        counts = [u["completion_tokens"] for u in mine]
        assert {u["prompt_tokens"] for u in mine} == {len(ids[i])}
        assert all(a <= b for a, b in zip(counts, counts[1:])) and counts[-1] == 6, counts


def test_continuous_usage_needs_stream(app):
    """As vLLM (which refuses any stream_options without stream): a 400 naming the field."""
    _, http, prefix = app
    for path, extra in (("/v1/chat/completions", {"messages": USER}), ("/v1/completions", {"prompt": "Hi"})):
        for stream in (False, None):
            body = {"model": MODEL_ID, "max_tokens": 2, "stream_options": CONTINUOUS, **extra}
            if stream is not None:
                body["stream"] = stream
            resp = http.post(f"{prefix}{path}", json=body)
            assert resp.status_code == 400, (path, resp.text)
            err = resp.json()["error"]
            assert err["type"] == "invalid_request_error" and "continuous_usage_stats" in err["message"], err
    ok = http.post(f"{prefix}/v1/chat/completions", json={"model": MODEL_ID, "max_tokens": 2, "messages": USER,
                                                         "stream_options": {"continuous_usage_stats": False}})
    assert ok.status_code == 200, ok.text


def test_load_client_counts_tokens_from_continuous_usage(app, cluster):
    """bench/load_client.py's per-token gaps (``--token-counts``) from the usage of a real stream:
    every token after the first gets one entry, with no logprobs asked."""
    from bench.load_client import TurnResult, _attempt

    _, _, prefix = app
    body = {"model": MODEL_ID, "stream": True, "max_tokens": 12, "temperature": 0, "ignore_eos": True, "messages": USER,
            "stream_options": CONTINUOUS}

    async def go() -> TurnResult:
        res = TurnResult("", 0, "load-usage-1", scheduled=0.0)
        async with httpx.AsyncClient(base_url=cluster, timeout=120) as client:
            await _attempt(client, f"{prefix}/v1/chat/completions", body, res.key, res)
        return res

    res = asyncio.run(go())
    assert res.completion_tokens == 12 and len(res.token_gaps) == 11 and res.gaps
    assert all(g >= 0 for g in res.token_gaps)
