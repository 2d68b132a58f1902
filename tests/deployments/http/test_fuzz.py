"""Hostile input against the real service: thousands of generated requests, no
5xx, no stuck slot.

- Bulk (~2200 cases): the real ``Ingress`` class and its FastAPI app in this
  process (httpx ASGI transport: the same body limits, parsing, validation and
  session resolution code), in front of the real LLM deployment through a
  Serve handle, so every request that passes validation runs a real turn.
- Through the real Serve HTTP proxy (~300 cases, plus Ray's own per-request
  timeout and disconnect headers), 10 MB bodies (413 from the Content-Length
  alone, or after 1 MiB of a chunked body), and slow-loris clients: a body
  dribbled byte by byte gets 408 after ``body_timeout_s``; headers dribbled
  forever stay in the proxy's uvicorn (it has no header timeout) but never reach
  the ingress or an engine. Meanwhile a normal conversation goes on.
- Afterwards the engine has no running or waiting request and a conversation
  still works (warm on its second turn).

The service runs with API keys (issue 13): the clients send a valid key by
default, and about 2 in 5 requests carry hostile ``Authorization`` headers
instead (empty, huge, non-ASCII, other schemes, near-misses, dozens at once).
Those get 401 (or the proxy's 400 for a header it cannot parse), never a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from urllib.parse import quote, urlsplit

import httpx
import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import serve

from fuzz_strategies import authorization, control_spellings, edge_text, header_values, raw_bytes, request_body, valid_request
from serve_helpers import MODEL_ID, app_config, deploy, wait_for

LIMITS = {"max_body_bytes": 1 << 20, "body_timeout_s": 2.0, "request_timeout_s": 60.0, "max_output_tokens": 4}
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
STATUSES: Counter = Counter()
TENANT = "fuzz"  # the key's tenant: the directory knows sessions as "fuzz:<client id>"


@pytest.fixture(scope="module")
def target(cluster, tmp_path_factory):
    from deployments.http.api_keys import add_key
    from deployments.app.builder import parse_config
    from deployments.http.ingress import Ingress

    keyfile = tmp_path_factory.mktemp("fuzz-keys") / "keys.json"
    key = add_key(keyfile, "fuzzer", TENANT)
    config = app_config("fuzz-sessions", limits=LIMITS, default_max_tokens=2, stats_report_period_s=0.5, auth={"keys_file": str(keyfile)})
    prefix = deploy("fuzz", config)
    ingress = Ingress(serve.get_deployment_handle("LLMReplica", app_name="fuzz"), parse_config(config).model_dump(mode="json"))
    app = ingress.__serve_build_asgi_app__()
    loop = asyncio.new_event_loop()
    auth = {"authorization": f"Bearer {key}"}
    local = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process", timeout=120, headers=auth)
    with httpx.Client(base_url=f"{cluster}{prefix}", timeout=120, headers=auth) as remote:
        yield {"loop": loop, "local": local, "remote": remote, "app": app, "ingress": ingress, "prefix": prefix, "url": cluster, "key": key}
    loop.run_until_complete(local.aclose())
    loop.close()
    serve.delete("fuzz")
    print(f"fuzz statuses over all cases: {dict(STATUSES)}")


def _schema(target) -> dict:
    return target["app"].openapi()["components"]["schemas"]


def _old_key_refused(resp: httpx.Response, key, errors: list[str]) -> bool:
    """docs/reliability.md: an Idempotency-Key of a turn older than the session's
    last is refused by the log at commit (``turn_not_committed``); a stream has
    answered 200 by then, so the refusal is its error event. True only when that
    is the one error and the log does hold an earlier turn of the session with the key."""
    if key is None or len(errors) != 1 or '"code":"turn_not_committed"' not in errors[0]:
        return False
    key = key.decode("latin-1") if isinstance(key, bytes) else key
    directory = ray.get_actor("fuzz-sessions", namespace="swiftinfer")
    turns = ray.get(directory.turns.remote(f"{TENANT}:{resp.headers['x-session-id']}", 0, 1 << 20))
    return any(t.turn_key == key for t in turns)


def _check(resp: httpx.Response, what, chat: bool = True, key=None) -> None:
    STATUSES[resp.status_code] += 1
    assert resp.status_code < 500, (what, resp.status_code, resp.text[:500])
    if resp.status_code == 200 and not chat:
        assert resp.json()["object"] in ("session", "session.deleted", "list"), what
    elif resp.status_code == 200 and resp.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [ln for ln in resp.text.split("\n") if ln.startswith("data: ")]
        errors = [ln for ln in lines if '"error"' in ln]
        assert lines[-1] == "data: [DONE]" and (not errors or _old_key_refused(resp, key, errors)), (what, key, resp.text[-500:])
    elif resp.status_code == 200:
        assert isinstance(resp.json()["choices"][0]["message"]["content"], str), what
    elif resp.headers.get("content-type", "").startswith("application/json") and "error" in resp.text[:20]:
        assert resp.json()["error"]["message"], what


def _encode(body, ascii_only: bool) -> bytes:
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", errors="surrogatepass")


def _headers(session_header, key, content_type, auth: list[bytes] | None = None) -> list[tuple]:
    """Header list (repeats allowed); ``auth`` replaces the client's valid key when given."""
    h = [("content-type", content_type)]
    if session_header is not None:
        h.append(("x-session-id", session_header))
    if key is not None:
        h.append(("idempotency-key", key))
    return h + [("authorization", v) for v in auth or []]


def _bodies(target):
    """About 1 in 7 valid (each runs a real turn), 4 in 7 schema-mutated, 2 in 7 not even JSON requests."""
    mutated = st.tuples(request_body(_schema(target), MODEL_ID), st.booleans()).map(lambda t: _encode(*t))
    valid = st.tuples(valid_request(MODEL_ID), st.booleans()).map(lambda t: _encode(*t))
    return st.one_of(valid, mutated, mutated, mutated, mutated, raw_bytes(), raw_bytes())


def test_fuzz_bulk_in_process(target):
    loop, client = target["loop"], target["local"]
    content_types = st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1", ""])

    @settings(FUZZ, max_examples=2200)
    @given(body=_bodies(target), sid=header_values(), key=header_values(), ctype=content_types, auth=authorization(target["key"]))
    def case(body, sid, key, ctype, auth):
        resp = loop.run_until_complete(client.post("/v1/chat/completions", content=body, headers=_headers(sid, key, ctype, auth)))
        _check(resp, (body[:300], auth and [a[:80] for a in auth[:4]]), key=key)

    case()
    # mostly refused (400; 401 for hostile keys), and deep enough to run many turns
    assert STATUSES[400] > 800 and STATUSES[401] > 300 and STATUSES[200] > 100, STATUSES


def test_fuzz_through_the_serve_proxy(target):
    client = target["remote"]
    ray_headers = st.fixed_dictionaries({}, optional={  # headers Ray's proxy itself interprets
        "x-request-timeout-seconds": st.sampled_from(["0", "-1", "0.01", "nan", "1e9", "abc"]),
        "x-request-disconnect-disabled": st.sampled_from(["?1", "?0", "yes"]),
        "x_session_id": header_values().filter(bool), "serve_multiplexed_model_id": header_values().filter(bool),
        "x-request-id": header_values().filter(bool), "traceparent": header_values().filter(bool),
    })

    @settings(FUZZ, max_examples=250)
    @given(body=_bodies(target), sid=header_values(), key=header_values(), extra=ray_headers, auth=authorization(target["key"]))
    def chat_case(body, sid, key, extra, auth):
        auth = auth and [v.strip() for v in auth]  # a client (h11) sends no value with blanks at its ends
        resp = client.post("/v1/chat/completions", content=body, headers=_headers(sid, key, "application/json", auth) + list(extra.items()))
        _check(resp, (body[:300], auth and [a[:80] for a in auth[:4]]), key=key)

    @settings(FUZZ, max_examples=120)
    @given(sid=edge_text, method=st.sampled_from(["GET", "DELETE"]), turns=st.booleans(),
           query=st.dictionaries(st.sampled_from(["after", "limit", "x"]), st.sampled_from(["-1", "0", "1", "999999999999999999999", "a", ""])),
           auth=authorization(target["key"]))
    def session_case(sid, method, turns, query, auth):
        path = "/v1/sessions/" + quote(sid.encode("utf-8", errors="surrogatepass"), safe="") + ("/turns" if turns else "")
        resp = client.request("GET" if turns else method, path, params=query, headers=[("authorization", v.strip()) for v in auth or []])
        _check(resp, (method, path, query), chat=False)

    chat_case()
    session_case()
    # Found by this test: Ray's proxy decodes these as UTF-8 and answered 500; deployments/http/proxy_guard.py makes it 400.
    for name in ("x-session-id", "serve_multiplexed_model_id", "x-request-id"):
        resp = client.post("/v1/chat/completions", json={"model": MODEL_ID}, headers={name: b"\x80\xff"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_header", (name, resp.text)


def test_fuzz_hostile_authorization_headers_through_the_proxy(target):
    """The extremes, each on every keyed route, through the real proxy: 401 (or the
    proxy's own 4xx for a header it will not parse), never a 5xx, never a turn."""
    key = target["key"].encode()
    hostile = {
        "empty": [b""], "scheme only": [b"Bearer"], "huge 64 KiB": [b"Bearer " + b"A" * (1 << 16)],
        "huge 1 MiB": [b"Bearer " + b"A" * (1 << 20)], "non-ASCII": [b"Bearer \xc3\xa9\xff\x80" + key],
        "many wrong": [b"Bearer x"] * 100, "many with the valid key": [b"Bearer " + key] * 2 + [b"Bearer y"] * 50,
    }
    body = {"model": MODEL_ID, "session_id": "auth-fuzz", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    for what, values in hostile.items():
        headers = [("authorization", v) for v in values]
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/sessions/auth-fuzz"), ("GET", "/v1/models")):
            resp = target["remote"].request(method, path, json=body if method == "POST" else None, headers=headers)
            STATUSES[resp.status_code] += 1
            assert 400 <= resp.status_code < 500, (what, path, resp.status_code, resp.text[:300])
            if resp.status_code == 401:
                assert resp.json()["error"]["code"] == "invalid_api_key", (what, resp.text)


def test_fuzz_huge_bodies_are_refused_with_413_early(target):
    client = target["remote"]
    ten_mb = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"A" * (10 << 20) + b'"}]}'
    t0 = time.perf_counter()
    resp = client.post("/v1/chat/completions", content=ten_mb, headers={"content-type": "application/json"})
    declared_s = time.perf_counter() - t0
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large", resp.text

    def chunks():  # no Content-Length: the ingress stops reading at the limit
        for i in range(0, len(ten_mb), 1 << 16):
            yield ten_mb[i : i + (1 << 16)]

    resp = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    local = target["loop"].run_until_complete(target["local"].post("/v1/chat/completions", content=ten_mb))
    assert local.status_code == 413
    STATUSES[413] += 3
    assert declared_s < 30, declared_s


def _raw(url: str, payload: bytes) -> socket.socket:
    host, port = urlsplit(url).hostname, urlsplit(url).port
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(payload)
    return s


def test_fuzz_slow_loris_clients_hold_no_slot(target):
    url, prefix, client = target["url"], target["prefix"], target["remote"]
    body = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "slow " * 60}], "max_tokens": 2}).encode()
    head = (f"POST {prefix}/v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {target['key']}\r\ncontent-length: {len(body)}\r\n\r\n").encode()
    dribblers = [_raw(url, head) for _ in range(6)]  # headers complete, body byte by byte
    stallers = [_raw(url, head[:30]) for _ in range(6)]  # headers never complete
    t0 = time.time()
    answers: dict[int, bytes] = {}
    normal = None
    sent = 0
    while len(answers) < len(dribblers) and time.time() - t0 < 20:
        for i, s in enumerate(dribblers):
            if i in answers:
                continue
            try:
                s.settimeout(0.05)
                answers[i] = s.recv(4096)
            except socket.timeout:
                s.sendall(body[sent : sent + 1])
        sent += 1
        if normal is None:  # a normal conversation meanwhile
            normal = client.post("/v1/chat/completions", json={"model": MODEL_ID, "session_id": "loris-ok", "max_tokens": 2,
                                                               "messages": [{"role": "user", "content": "Hello"}]})
        time.sleep(0.2)
    elapsed = time.time() - t0
    for s in dribblers + stallers:
        s.close()
    assert normal is not None and normal.status_code == 200, normal and normal.text
    assert len(answers) == len(dribblers), f"only {len(answers)} slow bodies were cut off in {elapsed:.1f}s"
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers.values()), answers
    assert sent < len(body), "the slow client finished its body before the timeout"
    STATUSES[408] += len(answers)


def test_fuzz_every_special_token_in_every_role_runs_a_turn(target):
    """Every special token string of the vocabulary, spread over every role's content (issue 19): a normal
    turn, not a 400 or 5xx (all of them in each message would pass the tests' 256-token turn limit)."""
    spellings, roles = control_spellings(), ("system", "user", "assistant", "tool", "user")
    messages = [{"role": r, "content": "".join(spellings[i::len(roles)]) + "\nobey"} for i, r in enumerate(roles)]
    resp = target["remote"].post("/v1/chat/completions", json={"model": MODEL_ID, "messages": messages, "max_tokens": 2, "session_id": "fz-every"})
    _check(resp, "every special token")
    assert resp.status_code == 200, resp.text


def test_fuzz_leaves_no_stuck_slot_and_conversations_work(target):
    directory = ray.get_actor("fuzz-sessions", namespace="swiftinfer")

    def idle():
        stats = ray.get(directory.replica_stats.remote(5.0))
        return stats and all(s.running == 0 and s.waiting == 0 for s in stats.values()) and stats

    stats = wait_for(idle, 30, "no running or waiting turn on the replicas")
    assert target["ingress"]._metrics.in_flight._value.get() == 0
    client = target["remote"]
    for i, cache in enumerate(("new", "warm")):
        resp = client.post("/v1/chat/completions", json={"model": MODEL_ID, "session_id": "after-fuzz", "max_tokens": 3,
                                                         "messages": [{"role": "user", "content": f"Turn {i}: hello"}]})
        assert resp.status_code == 200 and resp.json()["cache"] == cache, resp.text
    total = sum(STATUSES.values())
    print(f"fuzz: {total} requests, statuses {dict(STATUSES)}, replicas {list(stats)}")
    assert total >= 2500 and not any(code >= 500 for code in STATUSES), STATUSES
