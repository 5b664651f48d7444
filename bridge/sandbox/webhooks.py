"""`WebhookPoster`: the sandbox posts livechat webhooks to a URL the way Rocket.Chat's `sendRequest` does.

Reference 1.4 (apps/meteor/app/livechat/server/lib/webhooks.ts): a JSON POST, the token header only when
one is set, success is status 200 exactly, up to `attempts` tries `Livechat_http_timeout * 4` apart. On
200 the raw response text becomes the room's crmData (1.5). Rocket.Chat does not await `sendRequest`,
so deliveries run on background threads and events of different rooms may overtake each other.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import httpx

from bridge.sandbox import payloads
from bridge.sandbox.documents import Doc
from bridge.sandbox.state import CLOSED, FORWARDED, QUEUED, TAKEN, SandboxState

RetryPolicy = Literal["new", "old"]
# `dropped`: still pending when the poster was closed without flushing.
OutcomeKind = Literal["delivered", "gave_up", "not_retryable", "dropped"]

EMITTED_EVENTS = frozenset({QUEUED, TAKEN, FORWARDED, CLOSED})  # what SandboxState tells listeners

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """One POST: `status` when the receiver answered, `error` (the exception's name) when it did not."""

    delivery: int
    event_type: str
    rid: str
    attempt: int
    status: int | None
    error: str | None
    at: datetime


@dataclass(frozen=True)
class Outcome:
    delivery: int
    event_type: str
    rid: str
    outcome: OutcomeKind
    attempts: int


@dataclass(order=True)
class _Pending:
    due: float  # time.monotonic() at which the next attempt may start
    delivery: int
    event_type: str = field(compare=False)
    rid: str = field(compare=False)
    body: bytes = field(compare=False)  # built once: every attempt resends the same bytes
    attempt: int = field(default=0, compare=False)  # attempts made so far


class WebhookPoster:
    """Posts the state's livechat events to `url`: `attach()` to start, `drain()` to wait, `close()`."""

    def __init__(
        self,
        state: SandboxState,
        url: str,
        token: str,
        *,
        timeout: float = 5.0,
        retry_delay: float | None = None,
        attempts: int = 5,
        retry_policy: RetryPolicy = "new",
        events: Iterable[str] | None = None,
        workers: int = 4,
    ) -> None:
        if timeout <= 0 or attempts < 1 or workers < 1:
            raise ValueError("timeout must be positive; attempts and workers at least 1")
        if retry_policy not in ("new", "old"):
            raise ValueError(f"retry_policy must be 'new' or 'old', not {retry_policy!r}")
        self.events = frozenset(EMITTED_EVENTS if events is None else events)
        if unknown := self.events - EMITTED_EVENTS:
            raise ValueError(f"unknown event types {sorted(unknown)}; known: {sorted(EMITTED_EVENTS)}")
        self.state = state
        self.url = _loopback_url(url)
        self.timeout = timeout
        self.retry_delay = 4 * timeout if retry_delay is None else retry_delay  # Livechat_http_timeout * 4
        self.attempts = attempts
        self.retry_policy: RetryPolicy = retry_policy
        self._headers = {"Content-Type": "application/json"}
        if token:  # Rocket.Chat sends the header only when Livechat_secret_token is set
            self._headers["X-RocketChat-Livechat-Token"] = token
        # trust_env=False: no proxy from the environment may carry a request off this machine;
        # redirects are not followed for the same reason (a 3xx is then just a non-200).
        self._client = httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._pending = 0  # deliveries not yet settled, queued or in flight
        self._closing = False
        self._ids = itertools.count(1)
        self._attempts: list[Attempt] = []
        self._outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._work, name=f"sandbox-webhooks-{n}", daemon=True) for n in range(workers)
        ]

    def attach(self) -> WebhookPoster:
        with self._cond:
            if self._closing:
                raise RuntimeError("the webhook poster is closed")
            if not self._threads[0].is_alive():
                for thread in self._threads:
                    thread.start()
        with self.state.lock:
            if self._on_event not in self.state.listeners:
                self.state.listeners.append(self._on_event)
        return self

    def detach(self) -> None:
        with self.state.lock:
            if self._on_event in self.state.listeners:
                self.state.listeners.remove(self._on_event)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every delivery is settled (delivered or given up); False if `timeout` ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float = 10.0, *, flush: bool = True) -> None:
        """Stop listening, flush (or with flush=False drop) pending deliveries, stop the threads."""
        self.detach()
        if flush:
            self.drain(timeout)
        with self._cond:
            self._closing = True
            dropped, self._queue = self._queue, []
            for item in dropped:
                self._settle(item, "dropped")
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(self.timeout + 1)  # an attempt in flight ends within the HTTP timeout
        self._client.close()

    def deliveries(self) -> list[Attempt]:
        """Every attempt so far, in the order they ended."""
        with self._cond:
            return list(self._attempts)

    def outcomes(self) -> list[Outcome]:
        with self._cond:
            return list(self._outcomes)

    def _on_event(self, event_type: str, room: Doc) -> None:
        """The listener. It runs on the sandbox's event loop, so it only builds the body and enqueues."""
        if event_type not in self.events:
            return  # a Livechat_webhook_on_* toggle that is off
        item = _Pending(time.monotonic(), 0, event_type, room["_id"], self._body(event_type, room))
        with self._cond:
            item.delivery = next(self._ids)
            self._pending += 1
            if self._closing:
                self._settle(item, "dropped")
                return
            heapq.heappush(self._queue, item)
            self._cond.notify_all()

    def _body(self, event_type: str, room: Doc) -> bytes:
        state = self.state
        with state.lock:
            live = state.rooms.get(room["_id"], {})
            if "crmData" in live:  # a delivery may have stored it after the event's snapshot was taken
                room = {**room, "crmData": live["crmData"]}
            visitor = state.visitors.get(room["v"]["_id"], room["v"])
            agent = state.users.get((room.get("servedBy") or {}).get("_id", ""))
            body = payloads.room_event(event_type, room, visitor, agent, state.messages.get(room["_id"], []))
        # JSON.stringify: compact, non-ASCII as is.
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        return
                    now = time.monotonic()
                    if self._queue and self._queue[0].due <= now:
                        item = heapq.heappop(self._queue)
                        break
                    self._cond.wait(self._queue[0].due - now if self._queue else None)
            try:
                self._attempt(item)
            except Exception:
                # A bug here, not a receiver failure: say so, and still settle it so drain() returns.
                log.exception("webhook delivery %s crashed", item.delivery)
                with self._cond:
                    self._settle(item, "gave_up")

    def _attempt(self, item: _Pending) -> None:
        item.attempt += 1
        status: int | None = None
        error: str | None = None
        try:
            response = self._client.post(self.url, content=item.body, headers=self._headers)
        except httpx.TransportError as exc:  # timeouts and refused connections: every version retries
            error = type(exc).__name__
        else:
            status = response.status_code
            if status == 200:  # saveCRMDataByRoomId(rid, await response.text()): UTF-8, whatever the charset
                with self.state.lock:
                    if (room := self.state.rooms.get(item.rid)) is not None:
                        room["crmData"] = response.content.decode("utf-8", errors="replace")
        now = datetime.now(UTC)
        record = Attempt(item.delivery, item.event_type, item.rid, item.attempt, status, error, now)
        with self._cond:
            self._attempts.append(record)
            if status == 200:
                self._settle(item, "delivered")
            elif status is not None and not self._retryable(status):
                log.info("webhook %s for room %s: status %s, not retried", item.event_type, item.rid, status)
                self._settle(item, "not_retryable")
            elif self._closing:
                self._settle(item, "dropped")
            elif item.attempt >= self.attempts:
                log.warning("webhook %s for room %s: max attempts reached", item.event_type, item.rid)
                self._settle(item, "gave_up")
            else:
                item.due = time.monotonic() + self.retry_delay  # setTimeout(sendRequest, timeout * 4)
                heapq.heappush(self._queue, item)
                self._cond.notify_all()

    def _retryable(self, status: int) -> bool:
        if self.retry_policy == "old":
            return True  # PR #30687 (6.x to 7.10.3): every non-200 is retried
        return status >= 500 or status == 429  # PR #36793 (7.10.4 on)

    def _settle(self, item: _Pending, outcome: OutcomeKind) -> None:
        """Record the final outcome (hold self._cond)."""
        self._outcomes.append(Outcome(item.delivery, item.event_type, item.rid, outcome, item.attempt))
        self._pending -= 1
        self._cond.notify_all()


def _loopback_url(url: str) -> str:
    """The URL, if it is http(s) to this machine: the sandbox must never reach another address."""
    try:
        parsed = httpx.URL(url)
        loopback = parsed.host == "localhost" or ipaddress.ip_address(parsed.host).is_loopback
        ok = loopback and parsed.scheme in ("http", "https")
    except (httpx.InvalidURL, ValueError):  # not a URL, or a host name other than localhost
        ok = False
    if not ok:
        raise ValueError(f"webhooks go only to http(s) loopback URLs, not {url!r}")
    return url
