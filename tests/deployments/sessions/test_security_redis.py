"""Redis session log with a password and TLS (issue 13), against a real
redis-server started here with ``requirepass`` and a TLS port (self-signed
certificate made with openssl), the config rules that keep secrets out of
``serve_config.yaml``, and erasure read back from Redis itself."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest
import redis

from deployments.config import SessionLogConfig
from deployments.sessions.log_redis import RedisSessionLog
from deployments.sessions.session_log import CommitOp, DeleteOp, LastTurn, SessionState, TurnEntry

PASSWORD = "s3cret-" + uuid.uuid4().hex


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory):
    """``{"plain": port, "tls": port, "ca": path}`` of a redis-server that needs PASSWORD on both ports."""
    from redis_server import ensure_installed

    ensure_installed()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    d = tmp_path_factory.mktemp("redis-tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    plain, tls = _port(), _port()
    proc = subprocess.Popen(["redis-server", "--port", str(plain), "--bind", "127.0.0.1", "--tls-port", str(tls),
                             "--tls-cert-file", str(d / "cert.pem"), "--tls-key-file", str(d / "key.pem"),
                             "--tls-ca-cert-file", str(d / "cert.pem"), "--tls-auth-clients", "no",
                             "--requirepass", PASSWORD, "--save", "", "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while True:
        try:
            redis.Redis(port=plain, password=PASSWORD).ping()
            break
        except redis.ConnectionError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"redis-server with TLS did not start (exit {proc.poll()})")
            time.sleep(0.1)
    (d / "password").write_text(PASSWORD + "\n")
    (d / "wrong").write_text("not-it\n")
    try:
        yield {"plain": plain, "tls": tls, "ca": str(d / "cert.pem"), "dir": d}
    finally:
        proc.terminate()
        proc.wait(10)


def _roundtrip(log: RedisSessionLog) -> None:
    sid, now = f"acme:s-{uuid.uuid4().hex[:6]}", time.time()
    turn = TurnEntry(sid, 1, None, "r1", "stop", 3, 2, now)
    assert log.write([CommitOp(SessionState(sid, 1, {"ids": [1]}, "r1", None, LastTurn(turn, "hi", {}), now, now), turn)]) == [None]
    assert [t.seq for t in log.turns(sid, 0, 10)] == [1]
    assert log.write([DeleteOp(sid)]) == [None] and log.turns(sid, 0, 10) == []


def test_security_redis_password_from_a_file(secured_redis):
    d, url = secured_redis["dir"], f"redis://127.0.0.1:{secured_redis['plain']}/0"
    with pytest.raises(redis.AuthenticationError):
        RedisSessionLog(SessionLogConfig(backend="redis", redis_url=url), "sec")  # no password: refused at start-up
    with pytest.raises(redis.AuthenticationError):
        RedisSessionLog(SessionLogConfig(backend="redis", redis_url=url, redis_password_file=str(d / "wrong")), "sec")
    log = RedisSessionLog(SessionLogConfig(backend="redis", redis_url=url, redis_password_file=str(d / "password")), "sec")
    _roundtrip(log)
    log.close()


def test_security_redis_tls(secured_redis):
    d, port = secured_redis["dir"], secured_redis["tls"]
    common = {"backend": "redis", "redis_password_file": str(d / "password")}
    log = RedisSessionLog(SessionLogConfig(redis_url=f"rediss://127.0.0.1:{port}/0", redis_tls_ca_file=secured_redis["ca"], **common), "sec")
    _roundtrip(log)
    log.close()
    with pytest.raises(redis.ConnectionError):  # the server's certificate is not signed by the system's CAs
        RedisSessionLog(SessionLogConfig(redis_url=f"rediss://127.0.0.1:{port}/0", **common), "sec")
    with pytest.raises(redis.ConnectionError):  # plain text to the TLS port gets nowhere
        RedisSessionLog(SessionLogConfig(redis_url=f"redis://127.0.0.1:{port}/0", **common), "sec")


def test_security_redis_secrets_stay_out_of_the_config():
    with pytest.raises(ValueError, match="carries a password"):
        SessionLogConfig(backend="redis", redis_url="redis://:hunter2@redis:6379/0")
    with pytest.raises(ValueError, match="need a rediss:// URL"):
        SessionLogConfig(backend="redis", redis_url="redis://redis:6379/0", redis_tls_ca_file="/ca.pem")
    with pytest.raises(ValueError, match="go together"):
        SessionLogConfig(backend="redis", redis_url="rediss://redis:6379/0", redis_tls_cert_file="/c.pem")
    with pytest.raises(ValueError, match="Extra inputs"):
        SessionLogConfig(backend="redis", redis_password="hunter2")


def test_security_delete_erases_the_redis_log(redis_url):
    ns, sid = f"sec-{uuid.uuid4().hex[:6]}", "acme:erase-redis"
    log = RedisSessionLog(SessionLogConfig(backend="redis", redis_url=redis_url), ns)
    now = time.time()
    for seq in (1, 2):
        turn = TurnEntry(sid, seq, f"k{seq}", "r1", "stop", 5, 3, now)
        state = SessionState(sid, seq, {"tokens": [1, 2, 3]}, "r1", "d" * 64, LastTurn(turn, "secret reply", {}), now, now)
        assert log.write([CommitOp(state, turn)]) == [None]
    r = redis.Redis.from_url(redis_url)
    assert len(list(r.scan_iter(f"swiftinfer:{ns}:*erase-redis*"))) == 3 and r.sismember(f"swiftinfer:{ns}:ids", sid)
    assert log.write([DeleteOp(sid)]) == [None]
    assert list(r.scan_iter(f"swiftinfer:{ns}:*erase-redis*")) == [] and not r.sismember(f"swiftinfer:{ns}:ids", sid)
    assert log.turns(sid, 0, 10) == [] and list(log.load_all()) == []
    log.close()
