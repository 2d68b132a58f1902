"""Shared prompt prefixes (engine/prefix_cache.py) through the served path, on a real
local Ray cluster with the default model: new conversations that share a system
prompt report its tokens as cached in OpenAI's usage, and /metrics counts them."""

from __future__ import annotations

import time

import httpx
import pytest
from ray import serve

from serve_helpers import MODEL_ID, app_config, chat, deploy

ENGINE = {"device": "cpu", "sink_tokens": 4, "window": 250, "max_sessions": 6, "max_turn_tokens": 512,
          "prefix_cache_slots": 2, "prefix_cache_min_tokens": 32}
SYSTEM = {"role": "system", "content": "You work at the front desk of a museum of clocks in Geneva. Answer visitors in one "
                                       "sentence, name the room where each clock is kept, and never guess opening hours."}


@pytest.fixture(scope="module")
def app(cluster):
    prefix = deploy("prefixes", app_config("prefixes-sessions", engine=ENGINE, scaling={"min_replicas": 1, "max_replicas": 1}))
    with httpx.Client(base_url=cluster, timeout=300) as http:
        yield http, prefix
    serve.delete("prefixes")


def _usage(resp: httpx.Response) -> tuple[str, dict]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return body["cache"], body["usage"]


def _tokens(http: httpx.Client, prefix: str, messages: list[dict]) -> list[int]:
    resp = http.post(f"{prefix}/tokenize", json={"model": MODEL_ID, "messages": messages})
    assert resp.status_code == 200, resp.text
    return resp.json()["tokens"]


def test_new_conversations_sharing_a_system_prompt_report_it_cached(app):
    http, prefix = app
    first = [SYSTEM, {"role": "user", "content": "Where is the oldest clock?"}]
    second = [SYSTEM, {"role": "user", "content": "Is there a cuckoo clock?"}]
    a, b = _tokens(http, prefix, first), _tokens(http, prefix, second)
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert shared > 32

    cache, u = _usage(chat(http, prefix, first, "clock-a"))
    assert cache == "new" and u["prompt_tokens_details"]["cached_tokens"] == 0 and u["prefilled_tokens"] == len(a)
    cache, u = _usage(chat(http, prefix, second, "clock-b"))
    assert cache == "new" and u["prompt_tokens"] == len(b)
    assert u["prompt_tokens_details"]["cached_tokens"] == shared and u["prefilled_tokens"] == len(b) - shared
    cache, u = _usage(chat(http, prefix, [{"role": "user", "content": "And the smallest one?"}], "clock-b"))
    assert cache == "warm"  # the conversation goes on from its own cache as usual

    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:  # the gauges follow the replica's stats reports
        text = http.get(f"{prefix}/metrics").text
        hits = [ln for ln in text.splitlines() if ln.startswith("swiftinfer_prefix_cache_hits{")]
        if hits and float(hits[0].split()[-1]) >= 1:
            break
        time.sleep(1)
    values = {ln.split("{")[0]: float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("swiftinfer_prefix_cache_")}
    assert values == {"swiftinfer_prefix_cache_hits": 1.0, "swiftinfer_prefix_cache_tokens": float(shared)}, values


def test_a_system_prompt_longer_than_the_cache_is_cached_from_its_third_conversation(app):
    """A system prompt longer than the cache (4+250 rows): the second conversation keeps
    the slot where it parts from the first, and the third reuses all of it."""
    http, prefix = app
    rules = " ".join(f"Rule {i}: room {i} chimes at {i}." for i in range(30))
    system = {"role": "system", "content": "You work at the front desk of a museum of clocks in Geneva. " + rules}
    asks = [[system, {"role": "user", "content": q}] for q in ("Where is room 3?", "Is room 7 open?", "Does room 12 chime?")]
    ids = [_tokens(http, prefix, m) for m in asks]
    shared = next(i for i, (x, y) in enumerate(zip(ids[0], ids[1])) if x != y)
    assert 254 < shared == next(i for i, (x, y) in enumerate(zip(ids[0], ids[2])) if x != y)

    cached = []
    for i, messages in enumerate(asks):
        cache, u = _usage(chat(http, prefix, messages, f"long-{i}"))
        assert cache == "new" and u["prompt_tokens"] == len(ids[i])
        cached.append(u["prompt_tokens_details"]["cached_tokens"])
        assert u["prefilled_tokens"] == len(ids[i]) - cached[-1]
    assert cached == [0, 0, shared]
    cache, u = _usage(chat(http, prefix, [{"role": "user", "content": "And room 4?"}], "long-2"))
    assert cache == "warm"  # it goes on from the copied slot
