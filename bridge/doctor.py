"""``omnibridge doctor``: is everything the bridge needs in place? A pass/fail table with the fix for each failure.

Every Rocket.Chat check is a harmless call: reads, or a forward of a room that does not exist (Rocket.Chat checks
permissions before it looks for the room, so a 400 ``error-invalid-room`` proves the permission is there).

Rate limits are not guessed from the roles: the checks' own answers carry Rocket.Chat's ``X-RateLimit-*`` headers
on every route that limits this account (none when it holds ``api-bypass-rate-limit``), and the table shows what
they said, route by route, as the workers learn it (``bridge.ratelimits``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from bridge import endpoints
from bridge.errors import CredentialsRejected, PermissionDenied, RequestRejected, RocketChatError
from bridge.ratelimits import RateLimits
from bridge.rocketchat import RocketChat
from bridge.settings import Settings

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
PROBE_ID = "omnibridge-doctor-probe"
UNAUTHENTICATED = frozenset({"GET /api/info", "POST /api/v1/login"})


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    result: str
    detail: str
    fix: str = ""


def _permission(rc: RocketChat, name: str, call: Callable[[], object], harmless_errors: tuple[str, ...] = ()) -> Check:
    try:
        call()
    except PermissionDenied as error:
        return Check(
            name,
            FAIL,
            f"403 on {error.route}",
            f"grant the permission {error.permission} to a role of the service account",
        )
    except RequestRejected as error:
        if error.error_type in harmless_errors:
            return Check(name, PASS, f"allowed ({error.error_type} for a probe id)")
        return Check(name, FAIL, str(error), "see Rocket.Chat's answer above")
    except RocketChatError as error:
        return Check(name, FAIL, str(error), "see Rocket.Chat's answer above")
    return Check(name, PASS, "allowed")


def _redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check("Redis", FAIL, "REDIS_URL is not set", "set REDIS_URL (omnibridge up starts an embedded Redis)")
    where = urlsplit(settings.redis_url)
    shown = f"{where.hostname}:{where.port or 6379}" if where.hostname else where.path
    connection = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        version = connection.info("server").get("redis_version", "?")
    except (redis.RedisError, OSError) as error:
        return Check("Redis", FAIL, f"{shown} unreachable ({type(error).__name__})", "start Redis or fix REDIS_URL")
    finally:
        connection.close()
    return Check("Redis", PASS, f"{shown}, Redis {version}")


def run_checks(settings: Settings) -> list[Check]:
    checks = [_redis(settings)]
    if not settings.rocketchat_url:
        return [*checks, Check("Rocket.Chat", FAIL, "ROCKETCHAT_URL is not set", "set ROCKETCHAT_URL")]
    connection = redis.Redis.from_url(settings.redis_url) if checks[0].result == PASS and settings.redis_url else None
    limits = RateLimits(connection, settings.rocketchat_calls_per_minute) if connection is not None else None
    rc = RocketChat(settings.replace(rocketchat_retries=min(settings.rocketchat_retries, 1)), limits=limits)
    try:
        checks += _rocketchat_checks(rc, settings)
        if limits is not None and len(checks) > 3:  # credentials passed: the permission checks' answers were read
            checks.append(_learned_limits(limits))
        return checks
    finally:
        rc.close()
        if connection is not None:
            connection.close()


def _learned_limits(limits: RateLimits) -> Check:
    """What Rocket.Chat's headers said of the routes called so far (by these checks and by the workers). Calls made
    without the account (``/api/info``, login) are limited per IP whatever its roles: they say nothing of it."""
    known = {route: entry for route, entry in limits.known().items() if route not in UNAUTHENTICATED}
    limited = {route: entry for route, entry in known.items() if entry["mode"] == "limited"}
    if not known:
        return Check("rate limits", SKIP, "no answer read yet")
    if not limited:
        return Check("rate limits", PASS, f"none: {len(known)} routes answered without X-RateLimit headers")
    shown = "; ".join(
        f"{route} {entry['limit']} per window ({entry['remaining']} left, resets in {entry['reset_in']:.0f} s)"
        for route, entry in sorted(limited.items())
    )
    return Check(
        "rate limits",
        WARN,
        f"Rocket.Chat limits {len(limited)} of {len(known)} routes: {shown}",
        "the bridge keeps to these limits (chats wait for the next window); give the service account the bot role "
        "(permission api-bypass-rate-limit) to route faster",
    )


def _rocketchat_checks(rc: RocketChat, settings: Settings) -> list[Check]:
    try:
        version = endpoints.server_version(rc)
    except RocketChatError as error:
        return [Check("Rocket.Chat", FAIL, str(error), "check ROCKETCHAT_URL and that Rocket.Chat is running")]
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    checks = [Check("Rocket.Chat", PASS, f"{settings.rocketchat_url}, version {version}")]
    if not (settings.rocketchat_user_id or settings.rocketchat_username):
        return [
            *checks,
            Check(
                "credentials",
                FAIL,
                "none configured",
                "set ROCKETCHAT_USER_ID and ROCKETCHAT_AUTH_TOKEN (a personal access token)",
            ),
        ]
    try:
        me = endpoints.me(rc)
    except CredentialsRejected as error:
        return [*checks, Check("credentials", FAIL, "rejected (401)", str(error))]
    except RocketChatError as error:
        return [*checks, Check("credentials", FAIL, str(error), "check the credentials")]
    roles = [r for r in me.get("roles", []) if isinstance(r, str)]
    checks.append(Check("credentials", PASS, f"logged in as {me.get('username')} (roles: {', '.join(roles)})"))
    me_id = str(me.get("_id", ""))
    checks += [
        _permission(
            rc,
            "view-l-room (take inquiries)",
            lambda: rc.request("GET", "/api/v1/livechat/inquiries.getOne", params={"roomId": PROBE_ID}),
        ),
        _permission(
            rc,
            "transfer-livechat-guest (forward)",
            lambda: rc.request("POST", "/api/v1/livechat/room.forward", json={"roomId": PROBE_ID, "userId": me_id}),
            harmless_errors=("error-invalid-room",),
        ),
        _permission(
            rc,
            "view-livechat-rooms (load check)",
            lambda: rc.request("GET", "/api/v1/livechat/rooms", params={"count": 1}),
        ),
        _permission(
            rc,
            "view-livechat-manager (queued inquiries)",
            lambda: rc.request("GET", "/api/v1/livechat/inquiries.list", params={"count": 1}),
        ),
        _permission(
            rc,
            "view-livechat-departments (departments)",
            lambda: rc.request("GET", "/api/v1/livechat/department", params={"count": 1}),
        ),
    ]
    if major >= 8 or settings.agent_source == "users":
        checks.append(
            _permission(
                rc,
                "agent list (livechat/users/agent)",
                lambda: rc.request("GET", endpoints.USERS_AGENT, params={"count": 1}),
            )
        )
        checks.append(Check("voice extensions", SKIP, "omnichannel VoIP was removed in Rocket.Chat 8.0"))
    else:
        checks.append(
            _permission(
                rc,
                "manage-agent-extension-association (agents/available, voice)",
                lambda: rc.request("GET", endpoints.AVAILABLE, params={"count": 1}),
            )
        )
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(check.name) for check in checks)
    lines = [f"{'check':<{width}}  result  detail"]
    for check in checks:
        lines.append(f"{check.name:<{width}}  {check.result:<6}  {check.detail}")
        if check.fix and check.result in (FAIL, WARN):
            lines.append(f"{'':<{width}}  {'':<6}  fix: {check.fix}")
    failed = sum(check.result == FAIL for check in checks)
    lines.append(f"{failed} check(s) failed" if failed else "all checks passed")
    return "\n".join(lines)
