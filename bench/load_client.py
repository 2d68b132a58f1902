"""One conversation turn over HTTP + SSE, retried until it is acknowledged.

Only ``httpx`` and the standard library: the load generator runs anywhere a
URL is reachable. Every attempt of a turn carries the same ``Idempotency-Key``,
so a retry after a lost acknowledgement is answered from the session log
(``"cache": "replayed"``) instead of becoming a second turn.

An attempt fails (and is retried, with backoff, honouring ``Retry-After``) on a
connection error, a 408/409/429/5xx status, a 404 that is not the server's own
JSON error (route gone while the app restarts), an in-band SSE error, or a
stream that ends without its final chunk. A 400/404/413 answer is final.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class TurnResult:
    session_id: str
    round: int
    key: str
    scheduled: float  # when the turn was due (perf_counter), before any queueing
    ok: bool = False
    attempts: int = 0
    sent: float = 0.0  # start of the successful attempt
    first_token: float | None = None
    done: float = 0.0
    gaps: list[float] = field(default_factory=list)  # between streamed content chunks
    token_gaps: list[float] = field(default_factory=list)  # per token after the first, when chunks tell their token counts
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cache: str = ""
    replica: str = ""
    errors: Counter = field(default_factory=Counter)  # kind -> count, over all attempts
    final_error: str = ""

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.sent

    @property
    def ttft_from_due_s(self) -> float | None:
        """TTFT including client-side queueing and retries (no coordinated omission)."""
        return None if self.first_token is None else self.first_token - self.scheduled


class AttemptFailed(Exception):
    def __init__(self, kind: str, retry: bool, wait_s: float = 0.0):
        super().__init__(kind)
        self.kind, self.retry, self.wait_s = kind, retry, wait_s


def _retry_after(resp: httpx.Response) -> float:
    try:
        return float(resp.headers.get("retry-after", "0"))
    except ValueError:
        return 0.0


def _status_failure(resp: httpx.Response, body: bytes) -> AttemptFailed:
    try:
        code = json.loads(body)["error"].get("code") or "error"
        ours = True
    except (ValueError, KeyError, TypeError, AttributeError):
        code, ours = "not_json", False
    retry = resp.status_code in RETRY_STATUSES or (resp.status_code == 404 and not ours)
    return AttemptFailed(f"http_{resp.status_code}_{code}", retry, _retry_after(resp))


@dataclass
class TokenClock:
    """The gaps between a stream's content chunks, and per token: a chunk of k tokens after a
    gap g gives k entries of g / k; the tokens of the first chunk, k - 1 zeros (no wait of their
    own). A chunk's k is the rise of ``usage.completion_tokens`` since the last content chunk
    (stream_options.continuous_usage_stats), else the tokens its logprobs list; a chunk
    telling neither adds no per-token entries."""

    first: float | None = None
    prev: float = 0.0
    counted: int = 0  # completion tokens told by the usage of the content chunks so far
    gaps: list[float] = field(default_factory=list)
    token_gaps: list[float] = field(default_factory=list)

    def tokens(self, event: dict, choice: dict) -> int | None:
        """Tokens of a content chunk (None: it does not tell)."""
        usage = event.get("usage")
        if usage is not None and usage.get("completion_tokens") is not None:
            k, self.counted = usage["completion_tokens"] - self.counted, usage["completion_tokens"]
            return k
        listed = (choice.get("logprobs") or {}).get("content")
        return len(listed) if listed else None

    def content(self, now: float, event: dict, choice: dict) -> None:
        """A content chunk arrived at ``now``."""
        k = self.tokens(event, choice)
        if self.first is None:
            self.first = now
            if k is not None and k > 1:
                self.token_gaps.extend([0.0] * (k - 1))
        else:
            self.gaps.append(now - self.prev)
            if k:
                self.token_gaps.extend([(now - self.prev) / k] * k)
        self.prev = now


async def _attempt(client: httpx.AsyncClient, url: str, body: dict, key: str, res: TurnResult) -> None:
    headers = {"Idempotency-Key": key, "accept": "text/event-stream"}
    if body.get("session_id"):  # as in the body; a router in front (http_front: direct's route picker) sees only headers
        headers["x-session-id"] = body["session_id"]
    sent = time.perf_counter()
    clock = TokenClock()
    final = None
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        if resp.status_code != 200:
            raise _status_failure(resp, await resp.aread())
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise AttemptFailed(f"sse_{event['error'].get('code') or 'error'}", True)
            choice = event["choices"][0]
            now = time.perf_counter()
            if choice["delta"].get("content"):
                clock.content(now, event, choice)
            if choice.get("finish_reason") is not None:
                final = event
    if final is None:
        raise AttemptFailed("stream_incomplete", True)
    usage = final.get("usage") or {}
    res.sent, res.first_token, res.done, res.gaps = sent, clock.first or time.perf_counter(), time.perf_counter(), clock.gaps
    res.token_gaps = clock.token_gaps
    res.completion_tokens = usage.get("completion_tokens", 0)
    res.prompt_tokens = usage.get("prompt_tokens", 0)
    res.cache, res.replica = final.get("cache", ""), final.get("replica_id", "")


async def run_turn(client: httpx.AsyncClient, url: str, body: dict, res: TurnResult, retry_s: float, rng: random.Random) -> TurnResult:
    """Attempt the turn until it is acknowledged, a final error, or ``retry_s`` passes."""
    deadline = time.perf_counter() + retry_s
    backoff = 0.2
    while True:
        res.attempts += 1
        try:
            await _attempt(client, url, body, res.key, res)
            res.ok = True
            return res
        except AttemptFailed as exc:
            failure = exc
        except (httpx.TransportError, json.JSONDecodeError, KeyError, IndexError) as exc:
            failure = AttemptFailed(f"transport_{type(exc).__name__}", True)
        res.errors[failure.kind] += 1
        if not failure.retry or time.perf_counter() + backoff > deadline:
            res.final_error = failure.kind
            res.done = time.perf_counter()
            return res
        await asyncio.sleep(max(failure.wait_s, backoff) * (0.5 + rng.random()))
        backoff = min(backoff * 2, 5.0)
