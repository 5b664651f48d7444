"""The web process's HTTP server: uvicorn, with the limits a server facing slow or hostile clients needs.

uvicorn (0.54, httptools) reads a request's headers for as long as the client keeps sending bytes, keeps a
connection whose chunked body never ends, and has no cap on connections that answers before the headers are read
(its ``limit_concurrency`` counts a connection only once its headers are complete, so connections trickling headers
are never refused, and requests past it get a plain-text 503). ``GuardedProtocol`` adds, per web process:

- **header timeout**: a request's headers must be complete within ``WEB_HEADER_TIMEOUT_SECONDS`` of the connection
  opening (or, on a kept-alive connection, of the request's first byte); else 408 and the connection is closed;
- **body timeout**: the whole body must arrive within ``WEB_BODY_TIMEOUT_SECONDS`` of the headers. The app answers
  408 itself (``bridge.bodies.BodyDeadline``); this protocol closes the connection ``BODY_GRACE_SECONDS`` later
  if nothing did, and closes a connection whose body is still arriving after the app has answered without reading it;
- **connection cap**: past ``WEB_MAX_CONNECTIONS`` open connections, an idle kept-alive connection is closed to make
  room, and if none is idle the new connection is answered 503 (JSON, ``Retry-After``) and closed;
- **keep-alive**: an idle connection is kept ``WEB_KEEPALIVE_SECONDS``.

Why these defaults (see the README, *Slow clients and connection limits*): Rocket.Chat posts a webhook's headers
and body at once and gives up after ``Livechat_http_timeout`` (5 s by default; ``apps/meteor/app/livechat/server/
lib/webhooks.ts`` passes it to ``fetch``), so a webhook taking 10 s to arrive is already lost for its sender. Heroku's
router starts its 30 s request timeout only once the whole request has reached the dyno, and Router 2.0 keeps idle
connections to the dyno open for 90 s: a dyno that closes idle connections sooner races the router's next request
on them (H13/H18), hence 100 s.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from bridge.logs import Throttled
from bridge.settings import Settings

log = logging.getLogger("bridge.web")

BODY_GRACE_SECONDS = 1.0  # the app's own 408 (BodyDeadline) comes first; this protocol only closes what is left
LINGER_SECONDS = 1.0  # a refused connection: what the client already sent is read and dropped, so it reads the 503
DESCRIPTORS_BESIDES_CONNECTIONS = 64  # Redis, the spool, the listening socket, logs


@dataclass(frozen=True, slots=True)
class Limits:
    header_seconds: float
    body_seconds: float
    max_connections: int
    keepalive_seconds: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            header_seconds=float(settings.web_header_timeout_seconds),
            body_seconds=float(settings.web_body_timeout_seconds),
            max_connections=settings.web_max_connections,
            keepalive_seconds=settings.web_keepalive_seconds,
        )


def _response(status: int, reason: str, body: dict[str, Any], *extra: tuple[str, str]) -> bytes:
    content = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(content))),
        ("connection", "close"),
        *extra,
    ]
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("ascii") + b"\r\n" + content


HEADERS_LATE = Throttled(
    log,
    "closed %d connection(s) whose request headers did not arrive in time (answered 408)",
    outcome="header-timeout",
    status=408,
)
BODY_LATE = Throttled(
    log,
    "closed %d connection(s) whose request body was still arriving past the body timeout",
    outcome="body-timeout",
    status=408,
)
REFUSED = Throttled(
    log,
    "refused %d connection(s) past WEB_MAX_CONNECTIONS (answered 503)",
    outcome="too-many-connections",
    status=503,
)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body timeouts and a connection cap (see the module)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: Limits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.header_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.refused = False

    # Connections: the cap.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._close_an_idle_connection():
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._start_header_timer()

    def _close_an_idle_connection(self) -> bool:
        """Close one kept-alive connection waiting for its next request (any HTTP client expects that); False if
        every connection is busy."""
        for other in self.connections:
            idle = isinstance(other, GuardedProtocol) and other.timeout_keep_alive_task is not None
            if idle and not other.transport.is_closing():
                other.transport.close()
                return True
        return False

    def _refuse(self, transport: asyncio.Transport) -> None:
        self.refused = True
        self.transport = transport
        limit = self.limits.max_connections
        transport.write(
            _response(
                503,
                "Service Unavailable",
                {"ok": False, "error": f"too many connections to this web process (over {limit}); retry shortly"},
                ("retry-after", "1"),
            )
        )
        if transport.can_write_eof():
            transport.write_eof()  # the answer, then FIN; the rest of the request is read and dropped until then
        self.header_timer = self.loop.call_later(LINGER_SECONDS, transport.close)
        REFUSED.add()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        super().data_received(data)

    def eof_received(self) -> None:
        if self.refused:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self.refused:
            return
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        for timer in (self.header_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.header_timer = self.body_timer = None

    # Requests: the header and body timeouts.

    def _start_header_timer(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(self.limits.header_seconds, self._headers_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()  # the first request's runs from the connection; a kept-alive one's from here

    def on_headers_complete(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        super().on_headers_complete()
        if self.body_timer is None:
            self.body_timer = self.loop.call_later(self.limits.body_seconds + BODY_GRACE_SECONDS, self._body_late)

    def on_message_complete(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        super().on_message_complete()

    def _headers_late(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        HEADERS_LATE.add()
        if self.cycle is None or self.cycle.response_complete:  # never inside a response still being written
            seconds = f"{self.limits.header_seconds:g}"
            error = f"request headers not received within {seconds} s"
            self.transport.write(_response(408, "Request Timeout", {"ok": False, "error": error}))
        self.transport.close()

    def _body_late(self) -> None:
        self.body_timer = None
        if self.transport.is_closing():
            return
        BODY_LATE.add()
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # The app has not answered (it is not reading the body): answer for it, and make its late answer a no-op.
            cycle.disconnected = True
            cycle.message_event.set()
            seconds = f"{self.limits.body_seconds:g}"
            error = f"request body not received within {seconds} s"
            self.transport.write(_response(408, "Request Timeout", {"ok": False, "error": error}))
        self.transport.close()


def protocol_for(limits: Limits) -> functools.partial[GuardedProtocol]:
    """What uvicorn's ``http=`` takes; a partial of a module-level class pickles, for ``--processes N``."""
    return functools.partial(GuardedProtocol, limits=limits)


def ensure_descriptors(max_connections: int) -> None:
    """Raise the soft limit on open files to what ``max_connections`` needs, within the hard limit; warn if short."""
    import resource

    needed = max_connections + DESCRIPTORS_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < needed:
        log.warning(
            "open-file limit %d is below WEB_MAX_CONNECTIONS=%d plus %d: past it, connections wait in the kernel "
            "instead of being answered 503",
            soft,
            max_connections,
            DESCRIPTORS_BESIDES_CONNECTIONS,
        )


def serve(settings: Settings, host: str, port: int, processes: int) -> None:
    """Run the web process as ``omnibridge web`` does (and ``omnibridge up``, which starts ``omnibridge web``)."""
    import uvicorn

    limits = Limits.of(settings)
    ensure_descriptors(limits.max_connections)
    uvicorn.run(
        "bridge.asgi:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=processes,
        http=protocol_for(limits),  # type: ignore[arg-type]
        ws="none",
        timeout_keep_alive=limits.keepalive_seconds,
        log_level="warning",
        log_config=None,  # uvicorn's own warnings go through bridge.logs (escaped, masked, JSON when asked)
        access_log=False,
        proxy_headers=True,
        # Rocket.Chat waits Livechat_http_timeout (5 s) for an answer; hold no request longer than that at stop.
        timeout_graceful_shutdown=5,
    )
