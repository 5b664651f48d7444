"""The bridge's own HTTP API besides webhooks: External Service, voice routing, decisions.

| endpoint | auth | answers |
|---|---|---|
| ``GET /external-queue?departmentId=&ignoreAgentId=`` | ``X-RocketChat-Secret-Token`` = ``ROCKETCHAT_EXTERNAL_QUEUE_TOKEN`` | 200 ``{"_id","username"}`` or ``{}``; 403 wrong token; 404 not enabled; 503 Redis down |
| ``POST /voice/route`` ``{"extension", "departmentId"?, "requestId"?}`` | ``Authorization: Bearer`` ``BRIDGE_API_TOKEN`` | 202 ``{"id", "decision"}``; 400 bad body; 401/403 token; 503 Redis down |
| ``GET /decisions/{roomId}`` | ``Authorization: Bearer`` ``BRIDGE_API_TOKEN`` | 200 ``{"room_id", "decisions": [...]}``, 404 none; 401/403 token |

Without ``BRIDGE_API_TOKEN`` the bearer endpoints answer 403 (unless ``BRIDGE_INSECURE_DEV=1``); without
``ROCKETCHAT_EXTERNAL_QUEUE_TOKEN`` the External Service endpoint answers 404.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import jobqueue
from bridge.bodies import BodyTooLarge, answer, decode_json, read_body, token_matches
from bridge.decisions import DecisionLog
from bridge.directory import AgentDirectory
from bridge.errors import InvalidEvent
from bridge.external import ExternalQueue
from bridge.load import LoadBook
from bridge.settings import Settings
from bridge.voice import voice_decision_id

log = logging.getLogger("bridge.api")

EXTENSION = re.compile(r"[0-9A-Za-z*#+_.-]{1,32}")
IDENTIFIER = re.compile(r"[0-9A-Za-z_-]{1,64}")  # Rocket.Chat ids, and what RQ allows in a job id
VOICE_BODY_LIMIT = 4096


def _no_rocketchat() -> None:
    raise RuntimeError("the web process never calls Rocket.Chat: directory refreshes are a worker's job")


def api_routes(settings: Settings, connection: redis.Redis) -> list[Route]:
    load = LoadBook(connection)
    decisions = DecisionLog(connection, settings.decision_retention_seconds)
    directory = AgentDirectory(settings, connection, _no_rocketchat)  # type: ignore[arg-type]
    queue = jobqueue.make_queue(settings, connection)

    def request_refresh() -> None:
        slot = int(time.time() // max(1.0, settings.directory_ttl_seconds))
        jobqueue.enqueue(queue, settings, jobqueue.REFRESH_DIRECTORY, job_id=f"refresh-{slot}", unique=True)

    external = ExternalQueue(settings, connection, directory, load, decisions, request_refresh)

    def bearer_problem(request: Request) -> Response | None:
        if not settings.api_token:
            if settings.insecure_dev:
                return None
            return answer(403, ok=False, error="set BRIDGE_API_TOKEN to use this endpoint")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return answer(401, ok=False, error="Authorization: Bearer <BRIDGE_API_TOKEN> is required")
        if not token_matches(token, settings.api_token):
            return answer(403, ok=False, error="wrong bridge API token")
        return None

    async def external_queue(request: Request) -> Response:
        if not settings.external_queue_token and not settings.insecure_dev:
            return answer(
                404, ok=False, error="External Service routing is not enabled: set ROCKETCHAT_EXTERNAL_QUEUE_TOKEN"
            )
        if settings.external_queue_token and not token_matches(
            request.headers.get("x-rocketchat-secret-token"), settings.external_queue_token
        ):
            return answer(403, ok=False, error="missing or wrong X-RocketChat-Secret-Token")
        department = request.query_params.get("departmentId") or None
        ignore = request.query_params.get("ignoreAgentId") or None
        try:
            result = await run_in_threadpool(external.answer, department, ignore)
        except (RedisError, OSError) as error:
            log.error("external queue unanswered: Redis %s", type(error).__name__)
            return answer(503, ok=False, error="Redis unavailable")
        return JSONResponse(result)

    async def route_voice(request: Request) -> Response:
        problem = bearer_problem(request)
        if problem is not None:
            return problem
        try:
            body = decode_json(await read_body(request, VOICE_BODY_LIMIT))
            extension, department, request_id = _voice_fields(body)
        except InvalidEvent as error:
            return answer(400, ok=False, error=str(error), field=error.field)
        except BodyTooLarge:
            return answer(413, ok=False, error=f"body larger than {VOICE_BODY_LIMIT} bytes")
        try:
            await run_in_threadpool(
                jobqueue.enqueue,
                queue,
                settings,
                jobqueue.ROUTE_VOICE,
                request_id,
                extension,
                department,
                job_id=voice_decision_id(request_id),
                unique=True,
            )
        except (RedisError, OSError) as error:
            return answer(503, ok=False, error=f"cannot record the request now (Redis {type(error).__name__})")
        return answer(202, ok=True, id=request_id, decision=f"/decisions/{voice_decision_id(request_id)}")

    async def room_decisions(request: Request) -> Response:
        problem = bearer_problem(request)
        if problem is not None:
            return problem
        room_id = request.path_params["room_id"]
        try:
            found = await run_in_threadpool(decisions.for_room, room_id)
        except (RedisError, OSError) as error:
            return answer(503, ok=False, error=f"Redis unavailable ({type(error).__name__})")
        if not found:
            return answer(404, ok=False, error=f"no decision recorded for {room_id}")
        return JSONResponse({"room_id": room_id, "decisions": found})

    return [
        Route("/external-queue", external_queue, methods=["GET"]),
        Route("/voice/route", route_voice, methods=["POST"]),
        Route("/decisions/{room_id}", room_decisions, methods=["GET"]),
    ]


def _voice_fields(body: object) -> tuple[str, str | None, str]:
    if not isinstance(body, dict):
        raise InvalidEvent("the body must be a JSON object")
    extension = body.get("extension")
    if not isinstance(extension, str) or not EXTENSION.fullmatch(extension):
        raise InvalidEvent("field 'extension' must be 1-32 characters of digits, letters or *#+_.-", "extension")
    department = body.get("departmentId")
    if department is not None and (not isinstance(department, str) or not IDENTIFIER.fullmatch(department)):
        raise InvalidEvent("field 'departmentId' must be a Rocket.Chat id", "departmentId")
    request_id = body.get("requestId", uuid.uuid4().hex)
    if not isinstance(request_id, str) or not IDENTIFIER.fullmatch(request_id):
        raise InvalidEvent("field 'requestId' must be 1-64 characters of letters, digits, _ or -", "requestId")
    return extension, department, request_id
