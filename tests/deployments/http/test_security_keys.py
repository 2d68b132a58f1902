"""The key file and key ring without a cluster: header parsing, reloads, a file
that breaks while the service runs (fail closed), tenant-scoped ids."""

from __future__ import annotations

import os
import time

import pytest

from deployments.http.api_keys import KeyFileError, KeyRing, add_key, read_keys, revoke_key
from deployments.http.auth import bearer_token, needs_key, route_path
from deployments.sessions.tenants import TenantRequiredError, check_tenant, client_id, history_seed, scoped


def test_security_bearer_token_parsing():
    ok = b"sk-si-abc"
    assert bearer_token([(b"authorization", b"Bearer " + ok)]) == "sk-si-abc"
    assert bearer_token([(b"Authorization", b"bearer  " + ok + b" ")]) == "sk-si-abc"
    for headers in ([], [(b"authorization", b"")], [(b"authorization", b"Bearer")], [(b"authorization", b"Basic " + ok)],
                    [(b"authorization", b"Bearer " + ok)] * 2, [(b"authorization", b"Bearer " + b"A" * 5000)],
                    [(b"authorization", b"Bearer \xc3\xa9" + ok)], [(b"authorization", b"Bearer " + ok + b" junk")]):
        assert bearer_token(headers) is None, headers


def test_security_keyed_paths():
    assert needs_key("/v1/chat/completions", False) and needs_key("/v1", False) and needs_key("/v1/nope", False)
    assert not needs_key("/healthz", True) and not needs_key("/openapi.json", True) and not needs_key("/v1x", False)
    assert needs_key("/metrics", True) and not needs_key("/metrics", False)
    assert needs_key("/tokenize", False) and needs_key("/detokenize", False)  # vLLM's names, outside /v1
    assert route_path({"path": "/app/v1/models", "root_path": "/app"}) == "/v1/models"


def test_security_key_ring_reloads_and_fails_closed(tmp_path):
    path = tmp_path / "keys.json"
    with pytest.raises(KeyFileError):
        read_keys(path)
    with pytest.raises(FileNotFoundError):
        KeyRing(path)  # no file at start: the ingress does not start
    k1 = add_key(path, "one", "acme")
    ring = KeyRing(path, reload_period_s=0.05)
    assert ring.tenant_of(k1) == "acme" and ring.tenant_of(k1 + "x") is None and ring.tenant_of("") is None
    k2 = add_key(path, "two")  # tenant defaults to the name
    time.sleep(0.06)
    assert ring.tenant_of(k2) == "two" and len(ring) == 2
    path.write_text("{not json")  # an editor's half-written file: nobody gets in
    time.sleep(0.06)
    assert ring.tenant_of(k1) is None and len(ring) == 0
    os.replace(tmp_path / "keys.json", tmp_path / "broken.json")
    with pytest.raises(KeyFileError):
        add_key(tmp_path / "broken.json", "three")  # refuses to overwrite a file it cannot read
    k3 = add_key(path, "three")  # a fresh file
    time.sleep(0.06)
    assert ring.tenant_of(k3) == "three" and ring.tenant_of(k1) is None
    revoke_key(path, "three")
    time.sleep(0.06)
    assert ring.tenant_of(k3) is None
    with pytest.raises(KeyFileError, match="no active key"):
        revoke_key(path, "three")
    assert add_key(path, "three") != k3  # a revoked name can be reused by a new key
    with pytest.raises(KeyFileError, match="exists already"):
        add_key(path, "three")
    with pytest.raises(KeyFileError, match="tenant is"):
        add_key(path, "four", "bad:tenant")


def test_security_scoped_ids_cannot_collide():
    pairs = [("acme", "demo"), ("acme", "x:demo"), ("acme-x", "demo"), ("acm", "e:demo"), (None, "acme:demo")]
    ids = [scoped(t, c) for t, c in pairs[:4]]
    assert len(set(ids)) == 4 and all(client_id(t, s) == c for (t, c), s in zip(pairs, ids))
    assert scoped(None, "demo") == "demo" and client_id(None, "demo") == "demo"
    with pytest.raises(ValueError):
        client_id("beta", "acme:demo")
    assert history_seed("acme") != history_seed("beta") != history_seed(None)
    with pytest.raises(TenantRequiredError):
        check_tenant(None, keyed=True)
    assert check_tenant(None, keyed=False) is None
    with pytest.raises(TenantRequiredError):
        check_tenant("a:b", keyed=False)
