"""The web process: ``create_app(settings)`` -> Starlette. It answers in milliseconds and does no routing work.

Status policy of ``POST /webhooks/livechat`` (Rocket.Chat counts only exactly 200 as delivered; newer servers
retry 5xx, 429 and timeouts, older ones every non-200; docs/rocketchat.md §1.4). The README has the same table.

| status | when | Rocket.Chat then |
|---|---|---|
| 200 | accepted (in the event log), duplicate (already recorded), or deliberately ignored type | stores our body as crmData |
| 200 | ignored: a well-formed object whose ``type`` we do not know (a newer Rocket.Chat's event): counted, logged once per type, never stored | stores our body as crmData |
| 400 | body not UTF-8 JSON, not an object, no/empty/non-string ``type``, required field missing or mistyped | no retry (newer) |
| 403 | ``X-RocketChat-Livechat-Token`` missing or wrong | no retry (newer) |
| 413 | body larger than ``WEBHOOK_MAX_BYTES`` (refused before it is read whole) | no retry (newer) |
| 408 | headers or body not received within ``WEB_HEADER_TIMEOUT_SECONDS`` / ``WEB_BODY_TIMEOUT_SECONDS`` (connection closed) | its own timeout (``Livechat_http_timeout``, 5 s) came first: retried as a timeout (newer); a 408 itself is not retried by newer servers |
| 503 | the event cannot be recorded: Redis unreachable *and* the spool cannot take it | retries, 5 attempts |
| 503 | the event's lane of the event log is at its bound (``EVENT_LOG_*_MAX_LINES``): nothing recorded | retries, 5 attempts |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.api import api_routes
from bridge.bodies import (
    BodyDeadline,
    BodyTimeout,
    BodyTooLarge,
    answer,
    bearer,
    decode_json,
    read_body,
    token_matches,
)
from bridge.dashboard import dashboard_routes
from bridge.errors import InvalidEvent
from bridge.eventlog import EventLog, LogFull
from bridge.events import UnknownEvent, parse_event
from bridge.intake import Intake
from bridge.logs import Throttled
from bridge.metrics import Metrics, registry_for
from bridge.settings import Settings
from bridge.spool import Spool

log = logging.getLogger("bridge.web")

WEBHOOK_TOKEN_HEADER = "x-rocketchat-livechat-token"
REDIS_TIMEOUT_SECONDS = 2.0
UNKNOWN_TYPES_LOGGED = 100


class UnknownTypes:
    """Logs each unknown event type once per process: a newer Rocket.Chat sends its new type with every chat, and
    one line says as much as thousands. The type is chosen by whoever posts, so at most ``limit`` are remembered
    (by their shown form, at most 67 characters); past that, one line says further ones are not logged."""

    def __init__(self, limit: int = UNKNOWN_TYPES_LOGGED) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.full = False

    def note(self, event: UnknownEvent) -> None:
        shown = event.shown
        if shown in self.seen:
            return
        if len(self.seen) < self.limit:
            self.seen.add(shown)
            log.warning(
                "webhook of unknown type '%s' ignored: answered 200, not stored (logged once per type)",
                shown,
                extra={"event": shown, "outcome": "ignored", "status": 200},
            )
        elif not self.full:
            self.full = True
            log.warning(
                "webhook of unknown type ignored; %d unknown types logged already, further unknown types not logged "
                'individually (omnibridge_webhooks_total{type="unknown",status="200"} counts them)',
                self.limit,
                extra={"outcome": "ignored", "status": 200},
            )


def create_app(settings: Settings) -> Starlette:
    settings.require_webhook_token()
    connection = redis.asyncio.Redis.from_url(
        settings.require_redis(),
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    intake = Intake(EventLog(settings, connection), Spool(settings.spool_dir, settings.spool_max_bytes))
    unknown_types = UnknownTypes()

    async def livechat_webhook(request: Request) -> Response:
        response, event_type = await answer_webhook(request)
        counters.inc("omnibridge_webhooks", type=event_type, status=str(response.status_code))
        return response

    async def answer_webhook(request: Request) -> tuple[Response, str]:
        if settings.webhook_token and not token_matches(
            request.headers.get(WEBHOOK_TOKEN_HEADER), settings.webhook_token
        ):
            log.warning("webhook refused: missing or wrong token", extra={"status": 403})
            return answer(403, ok=False, error="missing or wrong X-RocketChat-Livechat-Token"), "unknown"
        try:
            event = parse_event(decode_json(await read_body(request, settings.max_body_bytes)))
        except BodyTooLarge:
            log.warning("webhook refused: body over %d bytes", settings.max_body_bytes, extra={"status": 413})
            return answer(413, ok=False, error=f"body larger than {settings.max_body_bytes} bytes"), "unknown"
        except InvalidEvent as error:
            log.warning("webhook refused: %s", error, extra={"status": 400})
            return answer(400, ok=False, error=str(error), field=error.field), "invalid"
        if isinstance(event, UnknownEvent):
            # Never the raw type as a label value: it is the sender's choice, so it could mint a series per request.
            unknown_types.note(event)
            return answer(200, ok=True, outcome="ignored", event=event.shown), "unknown"
        try:
            recorded = await intake.record(event)
        except LogFull as error:  # logged by the intake, once per 10 s: a flood would log a line per request
            return answer(503, ok=False, error=f"cannot record the event now ({error}); retry later"), event.TYPE
        except OSError as error:
            log.error(
                "webhook not recorded: Redis unavailable and the spool refused it (%s)",
                error,
                extra={"event": event.TYPE, "room_id": event.room_id, "status": 503},
            )
            failed = answer(
                503, ok=False, error="cannot record the event now (Redis and spool unavailable); retry later"
            )
            return failed, event.TYPE
        if log.isEnabledFor(logging.INFO):  # the hot path: skip building the record when it is not written
            log.info(
                "webhook %s",
                recorded.outcome,
                extra={"event": event.TYPE, "room_id": event.room_id, "event_id": recorded.event_id, "status": 200},
            )
        body: dict[str, Any] = {"ok": True, "outcome": recorded.outcome, "event": event.TYPE}
        if recorded.event_id:
            body["id"] = recorded.event_id
        if recorded.spooled:
            body["spooled"] = True
        return answer(200, **body), event.TYPE

    async def healthz(request: Request) -> Response:
        return answer(200, ok=True)

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.wait_for(connection.ping(), REDIS_TIMEOUT_SECONDS)
        except (TimeoutError, RedisError, OSError) as error:
            return answer(503, ok=False, redis=f"unreachable ({type(error).__name__})")
        return answer(200, ok=True, redis="ok")

    sync_connection = redis.Redis.from_url(
        settings.require_redis(), socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
    )
    counters = Metrics(sync_connection, auto_flush=False)  # flushed by a task below, never on the request path
    registry = registry_for(counters, settings.queue_name)

    async def metrics(request: Request) -> Response:
        # Unauthenticated by default, as Prometheus scrapes; METRICS_TOKEN makes it a bearer endpoint.
        if settings.metrics_token:
            presented = bearer(request)
            if presented is None:
                return JSONResponse(
                    {"ok": False, "error": "Authorization: Bearer <METRICS_TOKEN> is required"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not token_matches(presented, settings.metrics_token):
                return answer(403, ok=False, error="wrong metrics token")
        try:
            text = await run_in_threadpool(generate_latest, registry)
        except (RedisError, OSError) as error:
            return answer(503, ok=False, error=f"metrics unavailable: Redis {type(error).__name__}")
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def unexpected_error(request: Request, error: Exception) -> Response:
        # A safety net, not a path: every expected failure above has its own answer. 503 makes Rocket.Chat retry.
        log.exception("unexpected error while answering %s %s", request.method, request.url.path)
        return answer(503, ok=False, error="internal error; retry later")

    slow_bodies = Throttled(
        log,
        "answered %d request(s) 408: body not received within WEB_BODY_TIMEOUT_SECONDS, connection closed",
        outcome="body-timeout",
        status=408,
    )

    async def body_too_slow(request: Request, error: Exception) -> Response:
        # BodyDeadline: the body did not arrive in time. 408 with Connection: close; the sender may retry.
        slow_bodies.add()
        if request.url.path == "/webhooks/livechat":
            counters.inc("omnibridge_webhooks", type="unknown", status="408")
        return answer(408, ok=False, error=str(error))

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(1.0)
            await run_in_threadpool(counters.flush)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        replayer = asyncio.create_task(intake.replay_forever())
        flusher = asyncio.create_task(flush_forever())
        yield
        for task in (replayer, flusher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await run_in_threadpool(counters.flush)
        intake.spool.close()
        await connection.aclose()
        sync_connection.close()

    app = Starlette(
        routes=[
            Route("/webhooks/livechat", livechat_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *api_routes(settings, sync_connection),
            *dashboard_routes(settings, sync_connection),
        ],
        middleware=[Middleware(BodyDeadline, seconds=float(settings.web_body_timeout_seconds))],
        exception_handlers={BodyTimeout: body_too_slow, Exception: unexpected_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.redis = connection
    return app
