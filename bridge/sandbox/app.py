"""`create_sandbox_app(state)`: the Rocket.Chat double as a Starlette app.

Every request goes through the steps of Rocket.Chat's `_internalRouteActionHandler` (ApiClass.ts),
in its order: route lookup (unknown → 404), authentication (401), rate limit (429), parameter
validation (400 invalid-params), `permissionsRequired` (403), then the handler. Injected faults come
first of all, as they stand for the network in front of Rocket.Chat. Every request is logged.
"""

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge.sandbox import api_agents, api_auth, api_inquiries, api_rooms, api_voip, errors
from bridge.sandbox.endpoint import Call, Endpoint
from bridge.sandbox.requestlog import LoggedRequest, Query
from bridge.sandbox.state import SandboxState

ENDPOINTS: list[Endpoint] = [
    *api_auth.ENDPOINTS,
    *api_agents.ENDPOINTS,
    *api_inquiries.ENDPOINTS,
    *api_rooms.ENDPOINTS,
    *api_voip.ENDPOINTS,
]

_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
_NOT_JSON = object()


@dataclass
class _Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    user_id: str | None = None


def create_sandbox_app(state: SandboxState) -> Starlette:
    async def dispatch(request: Request) -> JSONResponse:
        arrived = time.monotonic()
        query = _query(request)
        body = await _json_body(request)
        answer = _Answer(500, errors.status_error(500).body)  # logged if a sandbox bug escapes below
        try:
            answer = await _answer(state, request, query, body)
        finally:
            logged_body = None if body is _NOT_JSON else body
            entry = LoggedRequest(
                request.method, request.url.path, query, logged_body, answer.status, answer.user_id, arrived
            )
            state.log.append(entry)
        return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)

    return Starlette(routes=[Route("/{path:path}", dispatch, methods=_METHODS)])


async def _answer(state: SandboxState, request: Request, query: Query, body: Any) -> _Answer:
    path = request.url.path
    fault = state.faults.take(path)
    if fault is not None:
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)  # only this request waits; the server keeps serving
        if fault.status is not None:
            injected = errors.status_error(fault.status)
            return _Answer(injected.status, injected.body)

    major = state.major
    found = _route(request.method, path, major)
    if found is None:
        missing = errors.not_found()  # Rocket.Chat's router answers unknown routes this way
        return _Answer(missing.status, missing.body)
    endpoint, path_params = found

    user = None
    headers: dict[str, str] = {}
    try:
        if endpoint.auth:
            user = state.authenticate(request.headers.get("x-user-id"), request.headers.get("x-auth-token"))
            if user is None:
                raise errors.unauthorized(major)
        headers = _rate_limit(state, endpoint, request, user)
        if body is _NOT_JSON:
            raise errors.failure("Request body is not valid JSON")
        call = Call(state, major, user, path_params, query, body if isinstance(body, dict) else {})
        if endpoint.validate is not None and (problem := endpoint.validate(call)):
            raise errors.invalid_params(problem)
        if user is not None and not endpoint.permitted(state, user):
            raise errors.permission_denied(major)
        result = endpoint.handler(call)
    except errors.ApiError as refused:
        return _Answer(refused.status, refused.body, {**headers, **refused.headers}, _id_of(user))
    return _Answer(200, {**result, "success": True}, headers, _id_of(user))


def _id_of(user: dict[str, Any] | None) -> str | None:
    return str(user["_id"]) if user else None


def _route(method: str, path: str, major: int) -> tuple[Endpoint, dict[str, str]] | None:
    for endpoint in ENDPOINTS:
        if endpoint.exists_in(major) and (path_params := endpoint.match(method, path)) is not None:
            return endpoint, path_params
    return None


def _rate_limit(
    state: SandboxState, endpoint: Endpoint, request: Request, user: dict[str, Any] | None
) -> dict[str, str]:
    """Rocket.Chat's `enforceRateLimit`; callers with api-bypass-rate-limit skip it entirely."""
    if not state.rate_limit_enabled or (user is not None and state.has_permission(user, "api-bypass-rate-limit")):
        return {}
    client_ip = request.client.host if request.client else ""
    verdict = state.limiter.hit(
        (endpoint.path, endpoint.method, client_ip), state.rate_limit_calls, state.rate_limit_window_ms
    )
    if not verdict.allowed:
        limited = errors.too_many_requests(verdict.wait_seconds)
        raise errors.ApiError(limited.status, limited.body, verdict.headers())
    return verdict.headers()


def _query(request: Request) -> Query:
    """Query parameters as Express's qs gives them: `key[]` and repeated keys become lists."""
    query: Query = {}
    for key, value in request.query_params.multi_items():
        if key in query:
            previous = query[key]
            query[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            query[key] = [value] if key.endswith("[]") else value
    return query


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON
