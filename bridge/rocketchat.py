"""The only Rocket.Chat HTTP code: URLs, auth headers, status codes, retries, rate limits.

One pooled ``httpx.Client`` per process, explicit timeouts. Every call goes through ``request()``, which
- authenticates with ``X-User-Id``/``X-Auth-Token`` (a personal access token, or the token ``POST /api/v1/login``
  returned for ``ROCKETCHAT_USERNAME``/``ROCKETCHAT_PASSWORD``; on a 401 it logs in again once);
- asks the route's learned rate limit for a call (``bridge.ratelimits``) and, when it has none left, raises
  ``RateLimited`` at once instead of waiting: the caller keeps its work and comes back at ``retry_after``;
- learns from every answer's ``X-RateLimit-*`` headers (or their absence: the account is not limited);
- turns a 429 into ``RateLimited`` too, blocking the route for every process until ``X-RateLimit-Reset``;
- retries connection errors and 5xx a bounded number of times with a short jittered back-off (under a second
  each); a timeout is not retried here, since Rocket.Chat may have applied the call: the caller decides;
- turns every other answer into an error that says what to do (docs/rocketchat.md §5.2: bodies differ between 7.x and
  8.x, so it keys on the status and ``errorType``, never on the message text).
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

from bridge.errors import (
    ConfigError,
    CredentialsRejected,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestRejected,
    RocketChatError,
    RocketChatUnavailable,
)
from bridge.metrics import Metrics
from bridge.ratelimits import Grant, RateLimits, heard_from
from bridge.settings import Settings

log = logging.getLogger("bridge.rocketchat")

USER_AGENT = "omnichannel-bridge"
BACKOFF_BASE = 0.1
BACKOFF_CAP = 1.0
_BRACKET_CODE = re.compile(r"\[([\w.-]+)\]\s*$")

# What a 403 on each route means: the permission the account lacks (docs/rocketchat.md §§2, 3, 5).
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
        limits: RateLimits | None = None,
        metrics: Metrics | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not settings.rocketchat_url:
            raise ConfigError("ROCKETCHAT_URL", "is required to call Rocket.Chat")
        self.settings = settings
        self.limits = limits
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
    ) -> dict[str, Any]:
        """Call ``route`` (a template such as ``/api/v1/livechat/department/{id}/agents``) and return its JSON.

        Never waits for a rate limit: ``RateLimited`` says when to come back.
        """
        name = f"{method} {route}"
        url = route.format(**{key: quote(value, safe="") for key, value in (path or {}).items()})
        relogged = False
        attempt = 0
        while True:
            headers = self._auth_headers() if auth else {}
            grant = self._grant(name)
            response: httpx.Response | None = None
            try:
                response = self.http.request(method, url, params=params, json=json, headers=headers)
            except httpx.TimeoutException as error:
                self._count(name, type(error).__name__)
                if isinstance(error, httpx.ConnectTimeout):  # never reached Rocket.Chat: safe to try again
                    attempt = self._backoff(name, attempt, type(error).__name__)
                    continue
                raise RocketChatUnavailable(
                    f"Rocket.Chat did not answer {name} within {self.settings.rocketchat_timeout:.0f} s "
                    "(it may have applied it); it will be looked at again later",
                    route=name,
                ) from None
            except httpx.TransportError as error:
                self._count(name, type(error).__name__)
                attempt = self._backoff(name, attempt, type(error).__name__)
                continue
            finally:
                self._learn(name, grant, response)
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
                raise self._rate_limited(name, response)
            if status >= 500:
                attempt = self._backoff(name, attempt, f"HTTP {status}")
                continue
            raise self._error(name, status, body)

    @property
    def max_call_seconds(self) -> float:
        """The longest one ``request()`` can take: every attempt timing out, with every back-off in between."""
        retries = self.settings.rocketchat_retries
        return (retries + 1) * self.settings.rocketchat_timeout + retries * BACKOFF_CAP

    def _grant(self, name: str) -> Grant | None:
        if self.limits is None:
            return None
        grant = self.limits.acquire(name)
        if not grant.ok:
            if self.metrics is not None:
                self.metrics.inc("omnibridge_rate_limit_deferrals", route=name, reason=grant.why)
            raise RateLimited(
                f"no call left for {name} in Rocket.Chat's rate limit ({grant.why}) for {grant.wait:.1f} s; "
                "the work keeps its place and is picked up then",
                route=name,
                retry_after=grant.wait,
            )
        return grant

    def _learn(self, name: str, grant: Grant | None, response: httpx.Response | None) -> None:
        if self.limits is None:
            return
        heard = heard_from(response.status_code, response.headers) if response is not None else None
        self.limits.learned(name, grant, heard)

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

    def _rate_limited(self, name: str, response: httpx.Response) -> RateLimited:
        wait = self.limits.block(name, heard_from(429, response.headers)) if self.limits is not None else 2.0
        log.warning("rocket.chat %s answered 429; no process calls it for %.1f s", name, wait, extra={"route": name})
        if self.metrics is not None:
            self.metrics.inc("omnibridge_rate_limit_deferrals", route=name, reason="429")
        return RateLimited(
            f"Rocket.Chat rate-limits {name} for another {wait:.0f} s; give the service account the bot role "
            "(permission api-bypass-rate-limit), or set ROCKETCHAT_CALLS_PER_MINUTE if other clients share its limit",
            route=name,
            retry_after=wait,
            status=429,
        )

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
