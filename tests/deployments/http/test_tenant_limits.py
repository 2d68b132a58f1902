"""Per-tenant limits (deployments/http/tenant_limits.py) for a request that runs several
turns, a batch of completion prompts: it holds a running conversation per prompt,
and its ticket refunds what all of them together did not generate."""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import TenantLimitsConfig
from deployments.http.errors import TenantLimitError
from deployments.http.tenant_limits import TenantLimiter
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.protocol import StreamChunk, Usage


async def _turn(generated: int):
    yield StreamChunk(text="a", token_ids=[1])
    yield StreamChunk(text="b", token_ids=[2], finish_reason="stop", usage=Usage(3, generated, 3, 0))


async def _drain(events) -> None:
    async for _ in events:
        pass


def test_a_batch_holds_a_conversation_per_prompt_and_refunds_what_its_turns_left():
    limiter = TenantLimiter(TenantLimitsConfig(max_conversations=3, tokens_per_s=1e-6, token_burst=100))
    ticket = limiter.acquire("t", 3 * 20, turns=3)  # 3 prompts x max_tokens 20
    state = limiter._state("t")
    assert (state.running, ticket.reserved, round(state.tokens.level)) == (3, 60, 40)
    with pytest.raises(TenantLimitError, match="3 conversations running and may run 3"):
        limiter.acquire("t", 1)

    async def run():
        await asyncio.gather(*(_drain(ticket.meter(_turn(g))) for g in (5, 7, 20)))

    asyncio.run(run())
    assert ticket.generated == 32
    ticket.finish()
    ticket.finish()  # once only
    assert (state.running, round(state.tokens.level)) == (0, 68)  # 60 reserved, 32 generated: 28 back


def test_a_batch_larger_than_the_tenants_conversations_is_refused_not_delayed():
    limiter = TenantLimiter(TenantLimitsConfig(max_conversations=2))
    with pytest.raises(InvalidRequestError, match="batch of 3 prompts"):
        limiter.acquire(None, 30, turns=3)
    limiter.acquire(None, 20, turns=2).finish()
    assert limiter._state(None).running == 0
