"""The bridge's own HTTP API besides webhooks: External Service, voice routing, decisions.

| endpoint | auth | answers |
|---|---|---|
| ``GET /external-queue?departmentId=&ignoreAgentId=`` | ``X-RocketChat-Secret-Token`` = ``ROCKETCHAT_EXTERNAL_QUEUE_TOKEN`` | 200 ``{"_id","username"}`` or ``{}``; 400 an id that is not one (field named); 403 wrong token; 404 not enabled; 503 Redis down |
| ``POST /voice/route`` ``{"extension", "departmentId"?, "requestId"?}`` | ``Authorization: Bearer`` ``BRIDGE_API_TOKEN`` | 202 ``{"id", "decision"}``; 400 bad body; 401/403 token; 429 too many queued; 503 Redis down |
| ``GET /decisions/{roomId}`` (a chat) | ``Authorization: Bearer`` ``BRIDGE_API_TOKEN`` | 200 ``{"room_id", "decisions": [...]}``, 400 not an id, 404 none; 401/403 token |
| ``GET /decisions/voice/{requestId}`` | the same | 200 ``{"request_id", "decisions": [...]}``, 400, 404; 401/403 |
| ``GET /decisions/external/{departmentId}`` (``-``: none) | the same | 200 ``{"department_id", "decisions": [...]}``, 400, 404; 401/403 |

Every id taken from input is checked here, before anything is read or written (``bridge.identifiers``): a
Rocket.Chat id (1-64 letters, digits, ``_``, ``-``, ``.``), or for ``requestId`` 1-64 letters, digits, ``_``, ``-``.

Without ``BRIDGE_API_TOKEN`` the bearer endpoints answer 403 (unless ``BRIDGE_INSECURE_DEV=1``); without
``ROCKETCHAT_EXTERNAL_QUEUE_TOKEN`` the External Service endpoint answers 404.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote

import redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import jobqueue
from bridge.bodies import BodyTooLarge, answer, decode_json, read_body, token_matches
from bridge.decisions import DecisionLog
from bridge.directory import AgentDirectory
from bridge.errors import InvalidEvent
from bridge.external import ExternalQueue
from bridge.identifiers import REQUEST_ID_RULE, check_request_id, check_rocketchat_id, is_request_id
from bridge.load import LoadBook
from bridge.settings import Settings
from bridge.voice import voice_job_id
from bridge.voicequeue import VoiceSlots, token_digest

log = logging.getLogger("bridge.api")

EXTENSION = re.compile(r"[0-9A-Za-z*#+_.-]{1,32}")
VOICE_BODY_LIMIT = 4096
VOICE_RETRY_AFTER_SECONDS = 5
NO_DEPARTMENT = "-"  # the External Service record of queries that named no department
DECISION_ANSWER_KEYS = {"chat": "room_id", "voice": "request_id", "external": "department_id"}


class AnyPath(Convertor[str]):
    """Starlette's ``path`` convertor is ``.*``, which stops at a newline: ``/decisions/%0A`` would match no route and
    be answered by the router (a plain-text 404, or a 307 to the same path without its last ``/``). This one takes
    every character, so every ``/decisions/...`` reaches ``decision_address`` and gets its JSON answer."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", AnyPath())


def _no_rocketchat() -> None:
    raise RuntimeError("the web process never calls Rocket.Chat: directory refreshes are a worker's job")


def api_routes(settings: Settings, connection: redis.Redis) -> list[Route]:
    load = LoadBook(connection)
    decisions = DecisionLog.from_settings(connection, settings)
    directory = AgentDirectory(settings, connection, _no_rocketchat)  # type: ignore[arg-type]
    queue = jobqueue.make_queue(settings, connection)
    voice_queue = jobqueue.make_voice_queue(settings, connection)
    voice_slots = VoiceSlots.from_settings(connection, settings)

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

    # Whom a voice request counts against, once ``bearer_problem`` passed it: the digest of the configured token it
    # matched (with BRIDGE_INSECURE_DEV and no token, of none: whatever a request sends is not a new caller).
    api_caller = token_digest(settings.api_token)

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
            for field, value in (("departmentId", department), ("ignoreAgentId", ignore)):
                if value is not None:
                    check_rocketchat_id(value, field)
        except InvalidEvent as error:
            return answer(400, ok=False, error=str(error), field=error.field)
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
            claim = await run_in_threadpool(enqueue_voice, api_caller, request_id, extension, department)
        except (RedisError, OSError) as error:
            return answer(503, ok=False, error=f"cannot record the request now (Redis {type(error).__name__})")
        if claim.refused:
            cap, limit, queued = (
                ("VOICE_QUEUE_MAX", settings.voice_queue_max, claim.queued)
                if claim.outcome == "total"
                else ("VOICE_QUEUE_MAX_PER_TOKEN", settings.voice_queue_max_per_token, claim.queued_for_token)
            )
            log.warning("voice request refused: %d queued (%s)", queued, cap, extra={"status": 429})
            refused = answer(
                429,
                ok=False,
                error=f"too many voice requests queued ({queued}, {cap} is {limit}); retry once some have been routed",
                cap=cap,
                queued=queued,
            )
            refused.headers["Retry-After"] = str(VOICE_RETRY_AFTER_SECONDS)
            return refused
        return answer(202, ok=True, id=request_id, decision=f"/decisions/voice/{request_id}")

    def enqueue_voice(digest: str, request_id: str, extension: str, department: str | None) -> Any:
        claim = voice_slots.claim(digest, request_id)
        if claim.outcome != "ok":
            return claim  # refused at a cap, or already queued (answered 202 again, counted once)
        try:
            job_id = jobqueue.enqueue(
                voice_queue,
                settings,
                jobqueue.ROUTE_VOICE,
                request_id,
                extension,
                department,
                job_id=voice_job_id(request_id),
                unique=True,
            )
        except BaseException:
            voice_slots.release(request_id)
            raise
        if job_id is None:
            voice_slots.release(request_id)  # its job exists already (finished or failed): nothing new waits
        return claim

    async def record_decisions(request: Request) -> Response:
        problem = bearer_problem(request)
        if problem is not None:
            return problem
        try:
            kind, record_id = decision_address(request)
        except InvalidEvent as error:
            return answer(400, ok=False, error=str(error), field=error.field)
        try:
            found = await run_in_threadpool(decisions.read, kind, record_id)
        except (RedisError, OSError) as error:
            return answer(503, ok=False, error=f"Redis unavailable ({type(error).__name__})")
        if not found:
            return answer(404, ok=False, error=f"no decision recorded for {kind} {record_id}")
        return JSONResponse({DECISION_ANSWER_KEYS[kind]: record_id, "decisions": found})

    return [
        Route("/external-queue", external_queue, methods=["GET"]),
        Route("/voice/route", route_voice, methods=["POST"]),
        Route("/decisions/{address:anypath}", record_decisions, methods=["GET"]),
    ]


def decision_address(request: Request) -> tuple[str, str]:
    """The record a ``/decisions/...`` path names: ``<roomId>`` (a chat), ``voice/<requestId>`` or
    ``external/<departmentId>`` (``-``: none). Read from the raw path, one percent-decoded segment at a time, so an
    id holding an encoded ``/`` (``voice%2Fx``) is that one id, refused, never the address of another kind."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    segments = raw.partition(b"/decisions/")[2].split(b"/")
    kind, field = "chat", "roomId"
    if len(segments) == 2 and segments[0] in (b"voice", b"external"):
        kind = segments[0].decode()
        field = "requestId" if kind == "voice" else "departmentId"
    elif len(segments) != 1:
        raise InvalidEvent(
            "a decision address is /decisions/<roomId>, /decisions/voice/<requestId> or "
            "/decisions/external/<departmentId>",
            "roomId",
        )
    try:
        record_id = unquote(segments[-1].decode("ascii"), errors="strict")
    except UnicodeDecodeError:
        raise InvalidEvent(f"field '{field}' is not UTF-8", field) from None
    if kind == "voice":
        check_request_id(record_id, field)
    elif not (kind == "external" and record_id == NO_DEPARTMENT):
        check_rocketchat_id(record_id, field)
    return kind, record_id


def _voice_fields(body: object) -> tuple[str, str | None, str]:
    if not isinstance(body, dict):
        raise InvalidEvent("the body must be a JSON object")
    extension = body.get("extension")
    if not isinstance(extension, str) or not EXTENSION.fullmatch(extension):
        raise InvalidEvent("field 'extension' must be 1-32 characters of digits, letters or *#+_.-", "extension")
    department = body.get("departmentId")
    if department is not None:
        if not isinstance(department, str):
            raise InvalidEvent("field 'departmentId' must be a string", "departmentId")
        check_rocketchat_id(department, "departmentId")
    request_id = body.get("requestId", uuid.uuid4().hex)
    if not is_request_id(request_id):
        raise InvalidEvent(f"field 'requestId' must be {REQUEST_ID_RULE}", "requestId")
    return extension, department, request_id
