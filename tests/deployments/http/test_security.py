"""Issue 13 on the real service: API keys, tenant-isolated sessions, erasure
and per-tenant limits (the refusal to start keyless on a network address:
test_security_exposure.py; Redis: test_security_redis.py).

One Serve app with a key file (three tenants) on the shared local Ray cluster,
the real SmolLM2-135M on CPU behind the real HTTP proxy. The per-tenant limits
run through a second, in-process ``Ingress`` (its own limits config) in front
of the same LLM deployment, so their turns are real too.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from serve_helpers import MODEL_ID, app_config, deploy, wait_for
from deployments.cli import main as cli

DIRECTORY = "sec-sessions"
TENANTS = {"alice": "acme", "carol": "acme", "bob": "beta", "mallory": "gamma"}  # key name -> tenant


def _cli_add_key(path: Path, name: str, tenant: str, capsys) -> str:
    capsys.readouterr()
    assert cli(["keys", "add", name, "--tenant", tenant, "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("sk-si-") and len(key) > 40
    return key


@pytest.fixture(scope="module")
def keyfile(tmp_path_factory):
    return tmp_path_factory.mktemp("keys") / "keys.json"


@pytest.fixture(scope="module")
def sec(cluster, keyfile):
    """``{"keys": name -> key, "client": httpx.Client at the app, "config", "log"}``."""
    from deployments.http.api_keys import add_key  # what `swiftinfer keys add` runs (the CLI itself: test_security_keys_*)

    keys = {name: add_key(keyfile, name, tenant) for name, tenant in TENANTS.items()}
    config = app_config(DIRECTORY, default_max_tokens=4, stats_report_period_s=0.5, auth={"keys_file": str(keyfile)})
    prefix = deploy("sec", config)
    with httpx.Client(base_url=f"{cluster}{prefix}", timeout=120) as client:
        yield {"keys": keys, "client": client, "config": config, "log": Path(config["session_log"]["path"])}
    serve.delete("sec")


def _auth(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


def _chat(sec, who: str | None, content: str, session_id: str | None = None, headers: dict | None = None, **params):
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}] if isinstance(content, str) else content,
            "max_tokens": 4, "temperature": 0, **params}
    if session_id is not None:
        body["session_id"] = session_id
    h = {**(_auth(sec["keys"][who]) if who else {}), **(headers or {})}
    return sec["client"].post("/v1/chat/completions", json=body, headers=h)


def _assert_401(resp: httpx.Response) -> dict:
    assert resp.status_code == 401, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "invalid_api_key"
    assert resp.headers["www-authenticate"] == "Bearer"
    return body


def _directory():
    return ray.get_actor(DIRECTORY, namespace="swiftinfer")


# ---- keys ---------------------------------------------------------------------------
def test_security_keys_missing_wrong_and_correct(sec, keyfile, capsys):
    client, alice = sec["client"], sec["keys"]["alice"]
    stored = keyfile.read_text()
    assert alice not in stored and json.loads(stored)["keys"][0]["sha256"]  # only hashes on disk
    assert keyfile.stat().st_mode & 0o777 == 0o600
    missing = _assert_401(_chat(sec, None, "hi"))
    wrong = _assert_401(_chat(sec, None, "hi", headers=_auth("sk-si-" + "x" * 43)))
    basic = _assert_401(_chat(sec, None, "hi", headers={"authorization": f"Basic {alice}"}))
    assert missing == wrong == basic  # nothing tells a missing key from a wrong one
    for method, path in (("GET", "/v1/models"), ("GET", "/v1/sessions/x"), ("DELETE", "/v1/sessions/x"), ("GET", "/v1/sessions/x/turns")):
        _assert_401(client.request(method, path))
    ok = _chat(sec, "alice", "Hello!", session_id="keys-ok")
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"], ok.text
    assert client.get("/v1/models", headers=_auth(alice)).status_code == 200
    # a key added with the CLI while the service runs works within seconds, as alice's tenant
    dave = _cli_add_key(keyfile, "dave", "acme", capsys)
    assert dave not in keyfile.read_text()
    resp = wait_for(lambda: (r := _chat(sec, None, "Hi, I am Dave.", session_id="keys-ok", headers=_auth(dave))).status_code == 200 and r,
                    5, "the new key to be accepted", period_s=0.2)
    assert resp.json()["cache"] == "warm"  # alice's conversation: same tenant
    assert client.get("/healthz").status_code == 200  # probes need no key
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "swiftinfer" in metrics.text  # open unless auth.metrics_require_key


def test_security_revoked_key_is_refused_within_5s(sec, keyfile, capsys):
    assert _chat(sec, "mallory", "Hello", session_id="revoke-me").status_code == 200
    t0 = time.monotonic()
    assert cli(["keys", "revoke", "mallory", "--file", str(keyfile)]) == 0
    assert "revoked" in capsys.readouterr().out

    def refused():
        resp = _chat(sec, "mallory", "Hello again", session_id="revoke-me")
        assert resp.status_code in (200, 401), resp.text
        return resp if resp.status_code == 401 else None

    resp = wait_for(refused, 10, "the revoked key to be refused", period_s=0.2)
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0, elapsed
    assert _assert_401(resp) == _assert_401(_chat(sec, None, "x", headers=_auth("sk-si-wrong")))  # revoked looks like wrong
    assert cli(["keys", "list", "--file", str(keyfile)]) == 0
    listing = capsys.readouterr().out
    assert "mallory" in listing and sec["keys"]["mallory"] not in listing
    assert _chat(sec, "alice", "still fine", session_id="keys-ok").status_code == 200  # other keys unaffected


# ---- tenants ------------------------------------------------------------------------
def test_security_tenants_same_session_id_history_and_idempotency_key_are_separate(sec):
    client, keys = sec["client"], sec["keys"]
    a = _chat(sec, "alice", "My name is Ada.", session_id="demo")
    b = _chat(sec, "bob", "My name is Bob. Tell me a story about the sea.", session_id="demo")
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.headers["x-session-id"] == b.headers["x-session-id"] == "demo"
    assert a.json()["session_id"] == b.json()["session_id"] == "demo"  # clients never see the scoped id
    assert a.json()["cache"] == b.json()["cache"] == "new"  # bob's turn did not continue alice's conversation
    sa, sb = (client.get("/v1/sessions/demo", headers=_auth(keys[k])).json() for k in ("alice", "bob"))
    assert sa["id"] == sb["id"] == "demo" and sa["rounds"] == sb["rounds"] == 1
    assert sa["tokens_seen"] != sb["tokens_seen"]  # two conversations of different lengths
    carol = client.get("/v1/sessions/demo", headers=_auth(keys["carol"]))  # same tenant as alice: same conversation
    assert carol.status_code == 200 and carol.json()["tokens_seen"] == sa["tokens_seen"]
    d = _directory()
    assert ray.get(d.describe.remote("acme:demo")).seq == ray.get(d.describe.remote("beta:demo")).seq == 1
    assert ray.get(d.describe.remote("demo")) is None

    # one Idempotency-Key, one session id, two tenants: a replay only within the tenant
    key = {"idempotency-key": "turn-1"}
    first = _chat(sec, "alice", "Count to three.", session_id="idem", headers=key)
    other = _chat(sec, "bob", "Count to three.", session_id="idem", headers=key)
    again = _chat(sec, "alice", "Count to three.", session_id="idem", headers=key)
    assert first.json()["cache"] == "new" and other.json()["cache"] == "new", (first.text, other.text)
    assert again.json()["cache"] == "replayed" and again.json()["choices"] == first.json()["choices"]

    # one history, no id, two tenants: bob's identical history is not found in alice's cache (no cache_salt oracle)
    opening = [{"role": "user", "content": "Tell me about tenants and keys."}]
    r1 = _chat(sec, "alice", opening)
    history = opening + [r1.json()["choices"][0]["message"], {"role": "user", "content": "And then?"}]
    cont = _chat(sec, "alice", history)
    stranger = _chat(sec, "bob", history)
    assert r1.status_code == cont.status_code == stranger.status_code == 200
    assert cont.json()["cache"] == "warm" and cont.json()["usage"]["cached_tokens"] > 0, cont.text
    assert stranger.json()["cache"] == "new" and stranger.json()["usage"]["cached_tokens"] == 0, stranger.text
    assert stranger.json()["usage"]["prompt_tokens"] > cont.json()["usage"]["prompt_tokens"]  # bob's engine saw all of it


def _view(resp: httpx.Response) -> tuple:
    return resp.status_code, resp.text, {k: v for k, v in resp.headers.items() if k not in ("date", "content-length", "x-request-id")}  # per request by nature


def test_security_cross_tenant_read_continue_delete_look_like_an_unknown_id(sec):
    client, keys = sec["client"], sec["keys"]
    sid = f"secret-{uuid.uuid4().hex[:8]}"
    assert _chat(sec, "alice", "The password is swordfish.", session_id=sid).status_code == 200
    bob = _auth(keys["bob"])
    requests = [("GET", f"/v1/sessions/{sid}"), ("GET", f"/v1/sessions/{sid}/turns"), ("DELETE", f"/v1/sessions/{sid}")]
    cross = [_view(client.request(m, p, headers=bob)) for m, p in requests]
    assert [c[0] for c in cross] == [404, 404, 404], cross
    assert all(json.loads(c[1])["error"]["code"] == "session_not_found" for c in cross)
    assert all("acme" not in c[1] and "acme" not in str(c[2]) for c in cross)  # the scoped id never leaks
    # alice's conversation is intact after bob's delete
    mine = client.get(f"/v1/sessions/{sid}", headers=_auth(keys["alice"]))
    assert mine.status_code == 200 and mine.json()["rounds"] == 1
    # an id nobody has, asked the same way: the same answers, byte for byte (modulo the id itself)
    never = f"secret-{uuid.uuid4().hex[:8]}"
    unknown = [_view(client.request(m, p.replace(sid, never), headers=bob)) for m, p in requests]
    for c, u in zip(cross, unknown):
        assert c[0] == u[0] and c[1] == u[1].replace(never, sid) and c[2] == {k: v.replace(never, sid) for k, v in u[2].items()}
    # and once alice deletes it, bob's answers do not change at all
    assert client.delete(f"/v1/sessions/{sid}", headers=_auth(keys["alice"])).status_code == 200
    assert [_view(client.request(m, p, headers=bob)) for m, p in requests] == cross
    # continuing someone else's id starts your own conversation, exactly as an unknown id does
    assert _chat(sec, "alice", "The password is swordfish.", session_id=sid).status_code == 200
    cont = _chat(sec, "bob", "What is the password?", session_id=sid)
    fresh = _chat(sec, "bob", "What is the password?", session_id=never)
    assert cont.status_code == fresh.status_code == 200
    assert cont.json()["cache"] == fresh.json()["cache"] == "new"
    assert cont.json()["usage"]["prompt_tokens"] == fresh.json()["usage"]["prompt_tokens"]  # none of alice's history
    assert cont.json()["choices"] == fresh.json()["choices"]  # greedy: the same reply to the same context
    assert client.get(f"/v1/sessions/{sid}", headers=_auth(keys["alice"])).json()["rounds"] == 1


def test_security_errors_name_the_clients_id_not_the_scoped_one(sec):
    alice = _auth(sec["keys"]["alice"])
    body = {"model": MODEL_ID, "session_id": "busy-1", "stream": True, "max_tokens": 48, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count slowly."}]}
    with sec["client"].stream("POST", "/v1/chat/completions", json=body, headers=alice) as first:
        assert first.status_code == 200
        lines = first.iter_lines()
        next(lines)  # the turn runs now
        second = _chat(sec, "alice", "Me too.", session_id="busy-1")
        for _ in lines:
            pass
    assert second.status_code == 409 and second.json()["error"]["code"] == "session_busy", second.text
    assert "'busy-1'" in second.json()["error"]["message"] and "acme" not in second.text, second.text


def test_security_handle_calls_pass_the_tenant(sec):
    from deployments.sessions.tenants import scoped
    from swiftinfer_core.config import SamplingParams

    handle = serve.get_deployment_handle("LLMReplica", app_name="sec")
    params = SamplingParams(max_tokens=3, temperature=0.0)
    msgs = [{"role": "user", "content": "Hi from Python"}]
    with pytest.raises(Exception, match="must pass tenant"):
        list(handle.options(stream=True).chat.remote("py-1", msgs, params))
    with pytest.raises(Exception, match="tenant is 1-32"):
        list(handle.options(stream=True).chat.remote("py-1", msgs, params, tenant="ac:me"))
    chunks = list(handle.options(session_id=scoped("acme", "py-1"), stream=True).chat.remote("py-1", msgs, params, tenant="acme"))
    assert chunks[-1].finish_reason is not None
    seen = sec["client"].get("/v1/sessions/py-1", headers=_auth(sec["keys"]["alice"]))
    assert seen.status_code == 200 and seen.json()["rounds"] == 1
    assert sec["client"].get("/v1/sessions/py-1", headers=_auth(sec["keys"]["bob"])).status_code == 404


# ---- erasure ------------------------------------------------------------------------
def test_security_delete_erases_the_session_log_rows_and_the_kv(sec):
    client, alice = sec["client"], _auth(sec["keys"]["alice"])
    sid = f"erase-me-{uuid.uuid4().hex[:10]}"
    for text in ("Remember: my card number is 4111.", "Say it back."):
        assert _chat(sec, "alice", text, session_id=sid).status_code == 200
    db, scoped_sid = sec["log"], f"acme:{sid}"

    def stored() -> tuple[int, int, bool]:
        with closing(sqlite3.connect(db)) as con:
            rows = con.execute("SELECT COUNT(*) FROM sessions WHERE session_id=?", (scoped_sid,)).fetchone()[0]
            turns = con.execute("SELECT COUNT(*) FROM turns WHERE session_id=?", (scoped_sid,)).fetchone()[0]
        raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))  # the file, its WAL and shm
        return rows, turns, sid.encode() in raw

    assert stored() == (1, 2, True)  # the check sees the session while it exists
    assert client.get(f"/v1/sessions/{sid}", headers=alice).json()["resident"] is True
    stats = ray.get(_directory().replica_stats.remote(10.0))
    before = sum(s.resident for s in stats.values())
    resp = client.delete(f"/v1/sessions/{sid}", headers=alice)
    assert resp.status_code == 200 and resp.json() == {"id": sid, "object": "session.deleted", "deleted": True}
    assert stored() == (0, 0, False)  # no row, no turn, no byte of its id in the database or WAL files
    assert ray.get(_directory().describe.remote(scoped_sid)) is None
    assert client.get(f"/v1/sessions/{sid}", headers=alice).status_code == 404
    assert client.get(f"/v1/sessions/{sid}/turns", headers=alice).status_code == 404

    def kv_freed():
        now = ray.get(_directory().replica_stats.remote(10.0))
        return sum(s.resident for s in now.values()) == before - 1

    wait_for(kv_freed, 15, "the replica to report the session's KV slot freed")


def test_security_a_copy_the_delete_did_not_reach_leaves_its_replica(sec):
    """DELETE closes the owner's copy; a replica holding another copy (it lost the
    session earlier) drops it once the directory no longer gives it the session.
    Staged here by deleting at the directory alone, behind the replica's back."""
    sid = f"stale-{uuid.uuid4().hex[:8]}"
    assert _chat(sec, "alice", "Keep this somewhere.", session_id=sid).status_code == 200
    assert sec["client"].get(f"/v1/sessions/{sid}", headers=_auth(sec["keys"]["alice"])).json()["resident"] is True
    directory = _directory()

    def resident() -> int:
        return sum(s.resident for s in ray.get(directory.replica_stats.remote(10.0)).values())

    time.sleep(1.5)  # three stats reports: the count includes this session
    before = resident()
    assert ray.get(directory.delete.remote(f"acme:{sid}")) is True
    wait_for(lambda: resident() == before - 1, 20, "the replica to drop the copy of the deleted session")


# ---- per-tenant limits ----------------------------------------------------------------
def test_security_tenant_limits_answer_429_with_retry_after(sec):
    """A second ingress over the same LLM deployment, with tight limits for every tenant."""
    from deployments.app.builder import parse_config
    from deployments.http.ingress import Ingress

    limits = {"max_conversations": 1, "requests_per_s": 0.05, "request_burst": 2, "tokens_per_s": 1.0, "token_burst": 8}
    config = {**sec["config"], "auth": {**sec["config"]["auth"], "tenant_limits": limits}}
    ingress = Ingress(serve.get_deployment_handle("LLMReplica", app_name="sec"), parse_config(config).model_dump(mode="json"))
    app = ingress.__serve_build_asgi_app__()

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process", timeout=120) as c:
            def post(who, sid, max_tokens=2, **extra):
                body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Count."}], "max_tokens": max_tokens,
                        "temperature": 0, "session_id": sid, **extra}
                return c.post("/v1/chat/completions", json=body, headers=_auth(sec["keys"][who]))

            both = await asyncio.gather(post("alice", "lim-1"), post("alice", "lim-2"))  # 1 conversation at a time
            tokens = await post("bob", "lim-3", max_tokens=8, ignore_eos=True)  # bob's whole token bucket
            after = await post("bob", "lim-4", max_tokens=8)
            third = await post("alice", "lim-5")  # alice: 2nd admitted request of a burst of 2 (the refused one cost nothing)
            fourth = await post("alice", "lim-6")
            return both, tokens, after, third, fourth

    both, tokens, after, third, fourth = asyncio.run(run())
    assert sorted(r.status_code for r in both) == [200, 429], [r.text for r in both]
    busy = next(r for r in both if r.status_code == 429)
    assert busy.json()["error"]["code"] == "rate_limit_exceeded" and busy.headers["retry-after"] == "1"
    assert tokens.status_code == 200 and tokens.json()["usage"]["completion_tokens"] == 8, tokens.text
    assert after.status_code == 429 and int(after.headers["retry-after"]) >= 5, (after.text, after.headers)
    assert third.status_code == 200, third.text  # bob's exhausted buckets did not touch alice's
    assert fourth.status_code == 429 and int(fourth.headers["retry-after"]) >= 2, (fourth.text, fourth.headers)
