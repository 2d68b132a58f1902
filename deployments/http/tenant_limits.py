"""Per-tenant limits at the ingress: concurrent conversations and two token buckets.

Before a turn reaches any replica the ingress asks ``TenantLimiter.acquire``:
- running turns of the tenant < ``max_conversations`` (a batch of completion
  prompts runs one turn per prompt, and needs room for all of them);
- the request bucket holds one request (refill ``requests_per_s``, size ``request_burst``);
- the token bucket holds the turn's ``max_tokens`` (refill ``tokens_per_s``, size
  ``token_burst``); the part a turn did not generate goes back when it ends.
Past any of them: ``TenantLimitError`` (429) with the seconds until the bucket
holds enough as ``Retry-After``. A refused request takes nothing from any bucket,
so a client that honours Retry-After gets through.

A flooding tenant is refused here, at the cost of a dict lookup, before its
turns reach the engine, so other tenants share the engine with at most the
flooder's admitted rate (bench/tenant_fairness.py measures it). State is per
ingress replica, in its event loop (no lock: acquire and finish never await).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from deployments.config import TenantLimitsConfig
from deployments.http.errors import TenantLimitError
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.protocol import StreamChunk

DEFAULT = "<default>"  # the tenant of a service without keys


@dataclass
class Bucket:
    rate: float | None  # refill per second; None: unlimited
    size: float
    level: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.size

    def refill(self, now: float) -> None:
        if self.rate is not None:
            self.level = min(self.size, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_s(self, need: float) -> float:
        """Seconds until ``need`` is in the bucket (0: it is now)."""
        if self.rate is None or self.level >= need:
            return 0.0
        return (need - self.level) / self.rate

    def take(self, n: float) -> None:
        if self.rate is not None:
            self.level -= n

    def give(self, n: float) -> None:
        if self.rate is not None:
            self.level = min(self.size, self.level + n)


@dataclass
class TenantState:
    requests: Bucket
    tokens: Bucket
    running: int = 0


@dataclass
class Ticket:
    """One admitted turn: ends once (``finish``), refunding unused tokens."""

    state: TenantState
    reserved: int
    turns: int = 1  # running turns it holds
    generated: int | None = None
    done: bool = False

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.state.running -= self.turns
        if self.generated is not None:
            self.state.tokens.refill(time.monotonic())
            self.state.tokens.give(max(0, self.reserved - self.generated))

    async def meter(self, events: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        """Pass a turn's chunks through, adding the generated tokens of its final one
        (a ticket of a batch of prompts meters each prompt's turn)."""
        async for chunk in events:
            if isinstance(chunk, StreamChunk) and chunk.usage is not None:
                self.generated = (self.generated or 0) + chunk.usage.completion_tokens
            yield chunk


class TenantLimiter:
    def __init__(self, default: TenantLimitsConfig, overrides: dict[str, TenantLimitsConfig] | None = None):
        self._default = default
        self._overrides = dict(overrides or {})
        self._tenants: dict[str, TenantState] = {}

    def limits(self, tenant: str | None) -> TenantLimitsConfig:
        return self._overrides.get(tenant, self._default) if tenant is not None else self._default

    def _state(self, tenant: str | None) -> TenantState:
        name = tenant or DEFAULT
        st = self._tenants.get(name)
        if st is None:
            c = self.limits(tenant)
            st = self._tenants[name] = TenantState(Bucket(c.requests_per_s, c.request_burst), Bucket(c.tokens_per_s, c.token_burst))
        return st

    def acquire(self, tenant: str | None, max_tokens: int, turns: int = 1) -> Ticket:
        """``max_tokens``: what the request's ``turns`` may generate together."""
        st = self._state(tenant)
        c, now = self.limits(tenant), time.monotonic()
        if c.max_conversations is not None and turns > c.max_conversations:
            raise InvalidRequestError(f"prompt: a batch of {turns} prompts runs {turns} conversations at once; "
                                      f"this key's tenant may run {c.max_conversations}")
        if c.max_conversations is not None and st.running + turns > c.max_conversations:
            raise TenantLimitError(f"this key's tenant has {st.running} conversations running and may run "
                                   f"{c.max_conversations}; retry when one ends", 1.0)
        st.requests.refill(now)
        st.tokens.refill(now)
        need = min(max_tokens, c.token_burst)  # a turn larger than the bucket waits for a full one
        wait = max(st.requests.wait_s(1), st.tokens.wait_s(need))
        if wait > 0:
            raise TenantLimitError(f"this key's tenant is over its request or token rate; retry in {wait:.2f} s", wait)
        st.requests.take(1)
        st.tokens.take(need)
        st.running += turns
        return Ticket(st, need, turns)
