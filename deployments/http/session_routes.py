"""Session routes of the ingress: ``GET``/``DELETE /v1/sessions/{id}`` and
``GET /v1/sessions/{id}/turns`` (the session log's committed turns: the
exactly-once audit).

Ids in paths are the client's; the key's tenant scopes them (tenants.py) and
every answer words them unscoped, so another tenant's session and an unknown one
get the very same body.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from ray.actor import ActorHandle
from ray.serve.handle import DeploymentHandle

from deployments.http.auth import tenant_of
from deployments.http.errors import error_response, unwrap
from deployments.sessions.tenants import scoped
from swiftinfer_core.errors import InvalidRequestError, SessionNotFoundError
from swiftinfer_core.session_id import CLIENT_MAX, check_session_id, is_session_id

NO_REPLICA = "none"  # x-replica-id when no replica answered
MAX_TURNS_PAGE = 1000


class SessionRoutes:
    def __init__(self, llm: DeploymentHandle, directory: ActorHandle):
        self._llm = llm
        self._directory = directory

    def add_routes(self, app: FastAPI) -> None:
        app.add_api_route("/v1/sessions/{session_id}/turns", self.session_turns, methods=["GET"])
        app.add_api_route("/v1/sessions/{session_id}", self.get_session, methods=["GET"])
        app.add_api_route("/v1/sessions/{session_id}", self.delete_session, methods=["DELETE"])

    async def get_session(self, session_id: str, request: Request) -> Response:
        try:
            check_session_id(session_id, "session_id", CLIENT_MAX)
            sid = scoped(tenant_of(request), session_id)
            info = await self._llm.options(session_id=sid).session_info.remote(sid)
        except Exception as exc:
            return error_response(_as_client(exc, session_id), {"x-session-id": _echo(session_id), "x-replica-id": NO_REPLICA})
        info.pop("session_id", None)
        info["id"] = session_id
        info["object"] = "session"
        return JSONResponse(info, headers={"x-session-id": _echo(session_id), "x-replica-id": info["replica"] or NO_REPLICA})

    async def session_turns(self, session_id: str, request: Request) -> Response:
        """``?after=<seq>&limit=<n>``: committed turns with seq > after, from the log."""
        headers = {"x-session-id": _echo(session_id), "x-replica-id": NO_REPLICA}
        try:
            check_session_id(session_id, "session_id", CLIENT_MAX)
            sid = scoped(tenant_of(request), session_id)
            after, limit = (_query_int(request, name, default, hi) for name, default, hi in (("after", 0, 1 << 62), ("limit", 100, MAX_TURNS_PAGE)))
            if await self._directory.describe.remote(sid) is None:
                raise SessionNotFoundError(f"no session {session_id!r}")
            turns = await self._directory.turns.remote(sid, after, limit)
        except Exception as exc:
            return error_response(_as_client(exc, session_id), headers)
        data = [{**t.to_dict(), "session_id": session_id} for t in turns]
        return JSONResponse({"object": "list", "session_id": session_id, "data": data}, headers=headers)

    async def delete_session(self, session_id: str, request: Request) -> Response:
        headers = {"x-session-id": _echo(session_id), "x-replica-id": NO_REPLICA}
        try:
            check_session_id(session_id, "session_id", CLIENT_MAX)
            sid = scoped(tenant_of(request), session_id)
            if not await self._llm.options(session_id=sid).close_session.remote(sid):
                raise SessionNotFoundError(f"no session {session_id!r}")
        except Exception as exc:
            return error_response(_as_client(exc, session_id), headers)
        return JSONResponse({"id": session_id, "object": "session.deleted", "deleted": True}, headers=headers)


def _as_client(exc: BaseException, session_id: str) -> BaseException:
    """A session-not-found error worded with the client's id, never the scoped one:
    another tenant's id and an unknown id get the very same body."""
    return SessionNotFoundError(f"no session {session_id!r}") if isinstance(unwrap(exc), SessionNotFoundError) else exc


def _echo(session_id: str) -> str:
    """A session id fit for a response header (an invalid one, possibly not even
    latin-1 encodable, is not echoed)."""
    return session_id if is_session_id(session_id, CLIENT_MAX) else ""


def _query_int(request: Request, name: str, default: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > hi:
        raise InvalidRequestError(f"query parameter {name!r} must be an integer in [0, {hi}]")
    return int(raw)
