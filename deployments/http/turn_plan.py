"""Where a turn goes and what the engine gets: the plan of a chat or a text
completion request, and the one-call sessions of completions without an id.

A chat turn's plan comes from its session id or history digest (ingress.py).
A completion's prompt is encoded here (text as plain text, token ids as they
are) and goes to the engine as ``RawPrompt``; without a session id it runs on a
fresh ``cmpl-<hex>`` session that is deleted once the turn is over (committed
or rolled back), so stateless clients leave nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from ray.serve.handle import DeploymentHandle

from deployments.http.completions_schema import CompletionRequest
from deployments.http.errors import PreviousResponseNotFoundError, StaleResponseError
from deployments.http.request_context import own_request_id
from deployments.http.responses_schema import ResponsesRequest, parse_response_id
from deployments.sessions.tenants import scoped
from deployments.http.tokens import CodecHolder
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.protocol import RawPrompt, ToolPrompt
from swiftinfer_core.session_id import CLIENT_MAX, check_session_id

DROP_ATTEMPTS = 5
log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class TurnPlan:
    scoped_sid: str
    engine_input: list[dict] | ToolPrompt | RawPrompt  # new chat messages (with the tools the template shows), or a completion's token ids
    history_base: str | None  # digest base for id-less chat clients
    one_call: bool = False  # a completion without a session: deleted after the turn
    expect_turn: int | None = None  # the turn's number must be this (a Responses continuation), else 409
    render: dict = field(default_factory=dict)  # extra fields of the response renderer (a completion's echo, its place in a batch)


def explicit_sid(body_sid: str | None, header_sid: str | None) -> str | None:
    """The client's session id from the body or the X-Session-ID header (they must agree)."""
    if header_sid is not None:
        check_session_id(header_sid, "X-Session-ID", CLIENT_MAX)
    if body_sid and header_sid and body_sid != header_sid:
        raise InvalidRequestError("session_id in the body and X-Session-ID header differ")
    return body_sid or header_sid


async def plan_completion(req: CompletionRequest, header_sid: str | None, tenant: str | None, codecs: CodecHolder) -> list[TurnPlan]:
    """One plan per prompt: on the client's session, or (without one, and always for a
    batch) on a one-call session each."""
    explicit = explicit_sid(req.session_id, header_sid)
    prompts = req.prompts()
    if explicit and len(prompts) > 1:
        raise InvalidRequestError("session_id: a batch of prompts runs each prompt on a session of its own; "
                                  "send one prompt to continue a session")
    texts = [p for p in prompts if isinstance(p, str)]
    codec = await codecs.get() if texts or req.echo else None
    encoded = iter(await asyncio.to_thread(lambda: [codec.prompt_ids(t) for t in texts]) if texts else [])
    plans = []
    for p in prompts:
        ids = next(encoded) if isinstance(p, str) else list(p)
        render = {"index_base": len(plans) * (req.n or 1), "batched": True} if len(prompts) > 1 else {}
        if req.echo:  # the prompt's own text when given as text, else its decoding
            render |= {"echo_text": p if isinstance(p, str) else codec.detokenize(ids), "echo_ids": ids}
        sid = scoped(tenant, explicit or f"cmpl-{uuid.uuid4().hex}")
        plans.append(TurnPlan(sid, RawPrompt(ids), None, one_call=not explicit, render=render))
    return plans


async def plan_response(req: ResponsesRequest, tenant: str | None, directory, retry: bool) -> TurnPlan:
    """A new conversation (a fresh ``conv-<hex>`` session; with ``store: false`` dropped after
    the turn), or the next turn of the one ``previous_response_id`` names, which must be its
    latest response (``retry``: an Idempotency-Key may repeat the turn that came after it,
    which the replica then answers from the log)."""
    if req.previous_response_id is None:
        return TurnPlan(scoped(tenant, f"conv-{uuid.uuid4().hex}"), req.engine_messages(), None, one_call=not req.store,
                        render={"request": req.echo()})
    if not req.store:
        raise InvalidRequestError("store: false with previous_response_id: a continued conversation is stored")
    sid, turn = parse_response_id(req.previous_response_id)
    desc = await directory.describe.remote(scoped(tenant, sid))
    if desc is None:
        raise PreviousResponseNotFoundError(f"previous_response_id: no response {req.previous_response_id!r}")
    if desc.seq != turn and not (retry and desc.seq == turn + 1):  # checked again as the turn starts (expect_turn)
        raise StaleResponseError(f"previous_response_id: {req.previous_response_id!r} is response {turn} of {desc.seq} in its "
                                 "conversation; a conversation continues from its latest response only")
    return TurnPlan(scoped(tenant, sid), req.engine_messages(), None, expect_turn=turn + 1, render={"request": req.echo()})


class OneCallSessions:
    """Deletes one-call sessions in the background once their turn is over."""

    def __init__(self, llm: DeploymentHandle):
        self._llm = llm
        self._tasks: set[asyncio.Task] = set()

    def drop_later(self, scoped_sid: str) -> None:
        task = asyncio.get_running_loop().create_task(self._drop(scoped_sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop(self, scoped_sid: str) -> None:
        own_request_id()  # several drops of one request's sessions may be pending at once
        for attempt in range(DROP_ATTEMPTS):  # a cancelled turn may still hold the session a moment
            try:
                await self._llm.options(session_id=scoped_sid).close_session.remote(scoped_sid)
                return
            except Exception:
                if attempt == DROP_ATTEMPTS - 1:
                    log.warning("could not delete the one-call session %s", scoped_sid, exc_info=True)
                    return
                await asyncio.sleep(0.5 * (attempt + 1))
