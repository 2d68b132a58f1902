"""Session log in Redis: the cluster backend (every node reaches one server).

Keys under ``swiftinfer:<namespace>:``: ``s:<id>`` (hash: the session's row),
``t:<id>`` (sorted set of turn entries scored by seq), ``k:<id>`` (hash: turn
key -> seq) and ``ids`` (set of session ids). A commit is one Lua script, so its
sequence and turn-key checks and its writes are atomic; a batch is one
MULTI/EXEC pipeline (one round trip), whose per-command results say which
operations were refused. Durability is Redis' own: run it with
``appendonly yes`` (``appendfsync always`` to survive power loss).

Credentials: an ACL user and a password file (never the password in the
config or URL); ``rediss://`` turns on TLS, with a CA bundle and an optional
client certificate (``connection_options``).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Iterator, Sequence

import redis

from deployments.config import SessionLogConfig
from deployments.sessions.session_log import (
    CommitOp,
    DeleteOp,
    LastTurn,
    LogConflictError,
    LogOp,
    ReleaseOp,
    SessionState,
    TurnEntry,
)

# KEYS: session hash, turns zset, keys hash, ids set.
# ARGV: session id, seq, turn json, turn key ('' = none), owner, digest, record, last turn, created, updated
_COMMIT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if current + 1 ~= tonumber(ARGV[2]) then
  return redis.error_reply('CONFLICT session ' .. ARGV[1] .. ': turn ' .. ARGV[2] .. ' after turn ' .. current)
end
if ARGV[4] ~= '' and redis.call('HSETNX', KEYS[3], ARGV[4], ARGV[2]) == 0 then
  return redis.error_reply('CONFLICT session ' .. ARGV[1] .. ': turn key ' .. ARGV[4] .. ' already committed')
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'owner', ARGV[5], 'digest', ARGV[6], 'record', ARGV[7],
           'last_turn', ARGV[8], 'updated', ARGV[10])
redis.call('HSETNX', KEYS[1], 'created', ARGV[9])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""
_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'owner', '', 'updated', ARGV[1]) end
return 1
"""
LOAD_CHUNK = 500


def connection_options(config: SessionLogConfig) -> dict:
    """Credentials and TLS settings for ``redis.Redis.from_url`` (the password is
    read from its file here, in the directory's process, and kept nowhere else)."""
    opts: dict = {}
    if config.redis_username:
        opts["username"] = config.redis_username
    if config.redis_password_file:
        lines = Path(config.redis_password_file).expanduser().read_text(encoding="utf-8").splitlines()
        opts["password"] = lines[0] if lines else ""
    if config.redis_url.startswith("rediss://"):
        opts["ssl_cert_reqs"] = "required" if config.redis_tls_verify else "none"
        opts["ssl_check_hostname"] = config.redis_tls_verify
        for opt, path in (("ssl_ca_certs", config.redis_tls_ca_file), ("ssl_certfile", config.redis_tls_cert_file),
                          ("ssl_keyfile", config.redis_tls_key_file)):
            if path:
                opts[opt] = str(Path(path).expanduser())
    return opts


class RedisSessionLog:
    def __init__(self, config: SessionLogConfig, namespace: str):
        self._r = redis.Redis.from_url(config.redis_url, decode_responses=True, socket_timeout=30, socket_connect_timeout=10,
                                       **connection_options(config))
        self._r.ping()  # fail at start-up, not at the first commit
        self._p = f"swiftinfer:{namespace}:"
        self._commit = self._r.register_script(_COMMIT)
        self._release = self._r.register_script(_RELEASE)

    def _keys(self, sid: str) -> tuple[str, str, str]:
        return f"{self._p}s:{sid}", f"{self._p}t:{sid}", f"{self._p}k:{sid}"

    # ---- writes ----------------------------------------------------------------
    def write(self, ops: Sequence[LogOp]) -> list[Exception | None]:
        pipe = self._r.pipeline(transaction=True)
        spans = [self._queue(op, pipe) for op in ops]  # commands each op queued
        replies = pipe.execute(raise_on_error=False)
        results: list[Exception | None] = []
        i = 0
        for n in spans:
            errors = [r for r in replies[i : i + n] if isinstance(r, Exception)]
            i += n
            if errors and not str(errors[0]).startswith("CONFLICT"):
                raise errors[0]  # a server problem, not a refusal
            results.append(LogConflictError(str(errors[0])) if errors else None)
        return results

    @functools.singledispatchmethod
    def _queue(self, op: LogOp, pipe) -> int:
        raise TypeError(f"unknown log operation {type(op).__name__}")

    @_queue.register
    def _(self, op: CommitOp, pipe) -> int:
        st, t = op.state, op.turn
        if t.seq != st.seq:
            raise ValueError("a commit's turn and state must have the same seq")
        args = [
            st.session_id, st.seq, json.dumps(t.to_dict()), t.turn_key or "", st.owner or "", st.digest or "",
            json.dumps(st.record), json.dumps(st.last_turn.to_dict()) if st.last_turn else "", st.created, st.updated,
        ]
        self._commit(keys=[*self._keys(st.session_id), f"{self._p}ids"], args=args, client=pipe)
        return 1

    @_queue.register
    def _(self, op: ReleaseOp, pipe) -> int:
        now = time.time()
        for sid in op.session_ids:
            self._release(keys=[self._keys(sid)[0]], args=[now], client=pipe)
        return len(op.session_ids)

    @_queue.register
    def _(self, op: DeleteOp, pipe) -> int:
        pipe.delete(*self._keys(op.session_id))
        pipe.srem(f"{self._p}ids", op.session_id)
        return 2

    # ---- reads -----------------------------------------------------------------
    def load_all(self) -> Iterator[SessionState]:
        ids = list(self._r.sscan_iter(f"{self._p}ids", count=LOAD_CHUNK))
        for start in range(0, len(ids), LOAD_CHUNK):
            chunk = ids[start : start + LOAD_CHUNK]
            pipe = self._r.pipeline(transaction=False)
            for sid in chunk:
                pipe.hgetall(self._keys(sid)[0])
            for sid, h in zip(chunk, pipe.execute()):
                if h:
                    yield SessionState(
                        sid, int(h["seq"]), json.loads(h["record"]), h["owner"] or None, h["digest"] or None,
                        LastTurn.from_dict(json.loads(h["last_turn"])) if h.get("last_turn") else None,
                        float(h["created"]), float(h["updated"]),
                    )

    def turns(self, session_id: str, after_seq: int, limit: int) -> list[TurnEntry]:
        rows = self._r.zrangebyscore(self._keys(session_id)[1], f"({after_seq}", "+inf", start=0, num=limit)
        return [TurnEntry.from_dict(json.loads(r)) for r in rows]

    def find_turn(self, session_id: str, turn_key: str) -> TurnEntry | None:
        _, turns, keys = self._keys(session_id)
        seq = self._r.hget(keys, turn_key)
        if seq is None:
            return None
        rows = self._r.zrangebyscore(turns, seq, seq)
        return TurnEntry.from_dict(json.loads(rows[0])) if rows else None

    def close(self) -> None:
        self._r.close()
