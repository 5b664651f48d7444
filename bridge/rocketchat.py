"""The only Rocket.Chat HTTP code: URLs, auth headers, status codes, retries, rate limits.

One pooled ``httpx.Client`` per process, explicit timeouts. Every call goes through ``request()``, which
- authenticates with ``X-User-Id``/``X-Auth-Token`` (a personal access token, or the token ``POST /api/v1/login``
  returned for ``ROCKETCHAT_USERNAME``/``ROCKETCHAT_PASSWORD``; on a 401 it logs in again once);
- takes a slot in the deployment-wide call budget for the route;
- waits out a 429 until ``X-RateLimit-Reset`` (epoch milliseconds) and tries again;
- retries 5xx, timeouts and connection errors with exponential back-off and full jitter, a bounded number of times;
- turns every other answer into an error that says what to do (reference 5.2: bodies differ between 7.x and 8.x,
  so it keys on the status and ``errorType``, never on the message text).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from bridge.budget import CallBudget
from bridge.errors import (
    ConfigError,
    CredentialsRejected,
    NotFound,
    PermissionDenied,
    RequestRejected,
    RocketChatError,
    RocketChatUnavailable,
)
from bridge.metrics import Metrics
from bridge.settings import Settings

log = logging.getLogger("bridge.rocketchat")

USER_AGENT = "omnichannel-bridge"
MAX_RATE_LIMIT_WAIT = 65.0  # one Rocket.Chat window (60 s) and a little
BACKOFF_BASE = 0.25
BACKOFF_CAP = 5.0
_BRACKET_CODE = re.compile(r"\[([\w.-]+)\]\s*$")

# What a 403 on each route means: the permission the account lacks (reference sections 2, 3, 5).
ROUTE_PERMISSIONS: dict[str, str] = {
    "GET /api/v1/omnichannel/agents/available": "manage-agent-extension-association",
    "GET /api/v1/livechat/users/agent": "transfer-livechat-guest (or edit-omnichannel-contact)",
    "GET /api/v1/livechat/department": "view-livechat-departments (or view-l-room)",
    "GET /api/v1/livechat/department/{id}/agents": "view-livechat-departments (or view-l-room)",
    "GET /api/v1/livechat/agents/{id}/departments": "view-l-room",
    "GET /api/v1/livechat/inquiries.getOne": "view-l-room",
    "POST /api/v1/livechat/inquiries.take": "view-l-room",
    "GET /api/v1/livechat/inquiries.queuedForUser": "view-l-room",
    "GET /api/v1/livechat/inquiries.list": "view-livechat-manager",
    "POST /api/v1/livechat/room.forward": "transfer-livechat-guest (and view-l-room)",
    "GET /api/v1/livechat/rooms": "view-livechat-rooms",
    "POST /api/v1/omnichannel/agent/extension": "manage-agent-extension-association",
    "GET /api/v1/omnichannel/extension": "manage-agent-extension-association",
}


def error_type_of(body: Mapping[str, Any]) -> str | None:
    """Rocket.Chat's error code: ``errorType``, else the ``[code]`` Meteor appends, else a bare code message."""
    if isinstance(body.get("errorType"), str):
        return body["errorType"]
    error = body.get("error")
    if not isinstance(error, str):
        return None
    match = _BRACKET_CODE.search(error)
    if match:
        return match.group(1)
    return error if re.fullmatch(r"[\w.-]+", error) else None


def error_text_of(body: Mapping[str, Any]) -> str:
    for key in ("error", "message"):
        if isinstance(body.get(key), str):
            return body[key]
    return "no error message"


class RocketChat:
    def __init__(
        self,
        settings: Settings,
        budget: CallBudget | None = None,
        metrics: Metrics | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not settings.rocketchat_url:
            raise ConfigError("ROCKETCHAT_URL", "is required to call Rocket.Chat")
        self.settings = settings
        self.budget = budget
        self.metrics = metrics
        self.sleep = sleep
        self.http = http or httpx.Client(
            base_url=settings.rocketchat_url,
            timeout=httpx.Timeout(settings.rocketchat_timeout, connect=min(5.0, settings.rocketchat_timeout)),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,
        )
        self._user_id = settings.rocketchat_user_id
        self._token: str | None = settings.rocketchat_auth_token or None

    def close(self) -> None:
        self.http.close()

    # -- the one way to call Rocket.Chat ------------------------------------------------------------

    def request(
        self,
        method: str,
        route: str,
        *,
        path: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
        json: Mapping[str, Any] | None = None,
        auth: bool = True,
        budget_wait: float = MAX_RATE_LIMIT_WAIT,
    ) -> dict[str, Any]:
        """Call ``route`` (a template such as ``/api/v1/livechat/department/{id}/agents``) and return its JSON.

        ``budget_wait`` bounds how long to wait for a budget slot or a rate-limit reset; a caller that would
        rather serve cached data than wait passes a small value and catches ``RocketChatUnavailable``.
        """
        name = f"{method} {route}"
        url = route.format(**{key: quote(value, safe="") for key, value in (path or {}).items()})
        relogged = False
        attempt = 0
        while True:
            if self.budget is not None and self.budget.take(name, max_wait=budget_wait) and self.metrics:
                self.metrics.inc("omnibridge_rate_limit_waits", route=name)
            headers = self._auth_headers() if auth else {}
            try:
                response = self.http.request(method, url, params=params, json=json, headers=headers)
            except httpx.TransportError as error:
                self._count(name, type(error).__name__)
                attempt = self._backoff(name, attempt, f"{type(error).__name__}")
                continue
            status = response.status_code
            self._count(name, str(status))
            log.debug("rocket.chat %s > %s", name, status, extra={"route": name, "status": status})
            if status == 200:
                return _json(response, name)
            body = _json_or_empty(response)
            if status == 401 and auth and not relogged and self.settings.rocketchat_username:
                relogged = True
                self.login()
                continue
            if status == 429:
                attempt = self._wait_rate_limit(name, response, attempt, budget_wait)
                continue
            if status >= 500:
                attempt = self._backoff(name, attempt, f"HTTP {status}")
                continue
            raise self._error(name, status, body)

    def _count(self, name: str, status: str) -> None:
        if self.metrics is not None:
            self.metrics.inc("omnibridge_rocketchat_calls", route=name, status=status)

    def _auth_headers(self) -> dict[str, str]:
        if not self._token and self.settings.rocketchat_username:
            self.login()
        if not self._token or not self._user_id:
            return {}
        return {"X-User-Id": self._user_id, "X-Auth-Token": self._token}

    def login(self) -> None:
        """``POST /api/v1/login`` with the configured username and password; keeps the token in memory only."""
        body = self.request(
            "POST",
            "/api/v1/login",
            json={"user": self.settings.rocketchat_username, "password": self.settings.rocketchat_password},
            auth=False,
        )
        data = body.get("data") or {}
        if not isinstance(data.get("userId"), str) or not isinstance(data.get("authToken"), str):
            raise RocketChatError("Rocket.Chat's login answer has no userId/authToken", route="POST /api/v1/login")
        self._user_id, self._token = data["userId"], data["authToken"]
        log.info("logged in to Rocket.Chat as %s", self.settings.rocketchat_username)

    def _backoff(self, name: str, attempt: int, what: str) -> int:
        attempt += 1
        if attempt > self.settings.rocketchat_retries:
            raise RocketChatUnavailable(
                f"Rocket.Chat did not answer {name} ({what}) after {attempt} attempts; it will be retried later",
                route=name,
            )
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
        log.warning("rocket.chat %s failed (%s); retry %d in %.2f s", name, what, attempt, delay, extra={"route": name})
        self.sleep(delay)
        return attempt

    def _wait_rate_limit(self, name: str, response: httpx.Response, attempt: int, max_wait: float) -> int:
        reset = response.headers.get("X-RateLimit-Reset", "")
        wait = max(0.0, int(reset) / 1000.0 - time.time()) if reset.isdigit() else 2.0**attempt
        if self.budget is not None and reset.isdigit():
            self.budget.block_until(name, int(reset))
        attempt += 1
        if wait > max_wait or attempt > self.settings.rocketchat_retries + 2:
            raise RocketChatUnavailable(
                f"Rocket.Chat rate-limits {name} for another {wait:.0f} s; give the service account the bot role "
                "(permission api-bypass-rate-limit) or lower ROCKETCHAT_CALLS_PER_MINUTE",
                route=name,
                status=429,
                error_type="error-too-many-requests",
            )
        log.warning(
            "rocket.chat %s rate-limited; waiting %.2f s until X-RateLimit-Reset",
            name,
            wait,
            extra={"route": name, "status": 429},
        )
        if self.metrics is not None:
            self.metrics.inc("omnibridge_rate_limit_waits", route=name)
        self.sleep(wait + 0.05)
        return attempt

    def _error(self, name: str, status: int, body: Mapping[str, Any]) -> RocketChatError:
        text, code = error_text_of(body), error_type_of(body)
        if status == 401:
            how = (
                "ROCKETCHAT_USERNAME/ROCKETCHAT_PASSWORD"
                if self.settings.rocketchat_username
                else "ROCKETCHAT_USER_ID/ROCKETCHAT_AUTH_TOKEN"
            )
            return CredentialsRejected(
                f"Rocket.Chat rejected the bridge's credentials on {name}: check {how} "
                "(a personal access token is revoked when its user logs out everywhere)",
                route=name,
                status=401,
                error_type=code,
            )
        if status == 403:
            permission = ROUTE_PERMISSIONS.get(name, "a permission for this endpoint")
            return PermissionDenied(
                f"the Rocket.Chat account lacks the permission {permission} needed for {name}: "
                "grant it to one of the account's roles (Administration > Permissions)",
                route=name,
                status=403,
                permission=permission,
            )
        if status == 404:
            return NotFound(f"Rocket.Chat answered 404 to {name}: {text}", route=name, status=404, error_type=code)
        return RequestRejected(
            f"Rocket.Chat refused {name} ({status}): {text}", route=name, status=status, error_type=code
        )


def _json(response: httpx.Response, name: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise RocketChatUnavailable(f"Rocket.Chat answered {name} with a body that is not JSON", route=name) from None
    if not isinstance(body, dict):
        raise RocketChatUnavailable(f"Rocket.Chat answered {name} with JSON that is not an object", route=name)
    return body


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
