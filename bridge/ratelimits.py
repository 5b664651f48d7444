"""How fast the bridge may call each Rocket.Chat route: learned from Rocket.Chat's answers, shared through Redis.

Rocket.Chat limits REST calls per route, method and client IP (``API_Enable_Rate_Limiter_Limit_Calls_Default``,
10 calls per ``..._Time_Default``, 60 s) and says so on every answer of a limited route: ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (an epoch in milliseconds; ``enforceRateLimit`` in
``apps/meteor/app/api/server/ApiClass.ts``). An account holding ``api-bypass-rate-limit`` (roles ``admin``, ``bot``,
``app``) gets no such headers: nothing limits it. So the bridge does not guess; per route it keeps in Redis
(``ob:ratelimit:<route>``) what the last answers said, for every process of the deployment:

- **unknown**: one call at a time (a probe, under the lease ``learn:<route>``) until an answer says what the route
  allows. Concurrent callers are told to come back a moment later.
- **unlimited**: the answer had no ``X-RateLimit-*`` headers. Calls go straight through.
- **limited**: the limit, the calls left in the current window and the window's end. Each call takes one of the
  calls left, atomically, whichever process makes it; each answer lowers the count to what Rocket.Chat reports if
  that is lower (another client of the account, or a call still on its way). When the window has ended, the next
  call is a probe again: Rocket.Chat opens a new window at the first call after the old one ended, and that call's
  answer says when the new one ends.

Nobody waits: ``acquire`` answers at once. A refused call comes with the seconds until a call may be possible; the
Rocket.Chat client raises ``RateLimited`` and the caller leaves its work where it is (the chat keeps its place in
the routing queue, and a wake-up is set for that time).

Clocks: ``X-RateLimit-Reset`` is in Rocket.Chat's clock. It is turned into a delay with the same answer's ``Date``
header (Rocket.Chat's clock too, in whole seconds, so the delay is over-estimated by under a second, never
under-estimated), and stored as Redis's time plus that delay, so the clocks of Rocket.Chat, Redis and the bridge's
hosts need not agree. Without a ``Date`` header the reset is compared with the local clock.

A 429 anyway (another client on the same account and IP) blocks the route for every process until its reset.
``ROCKETCHAT_CALLS_PER_MINUTE``, when set, caps each route further (a sliding window of 60 s), for a Rocket.Chat
whose limits are shared with other clients of the same account.
"""

from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from bridge import keys
from bridge.lease import Lease, Leases

CAP_WINDOW_MS = 60_000
LEARNING_RETRY_SECONDS = 0.25  # a probe of the route is on its way: its answer comes in milliseconds
SAME_WINDOW_MS = 1_500  # two answers whose reset estimates are this close describe one window
RESET_MARGIN_MS = 250
UNLIMITED_MEMORY_MS = 3_600_000  # an unlimited route is re-learned after an hour without calls
LIMITED_MEMORY_MS = 3_600_000
LEARN_FROM = frozenset({200, 400, 403, 404, 429})  # answers that passed Rocket.Chat's rate limiter (after auth)

# KEYS: state, 429 block, cap window. ARGV: cap (0: none), member.
# Returns {verdict, ms}: granted | unknown (probe it) | blocked | capped | exhausted, with the ms to wait.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then return {'blocked', blocked} end
local cap = tonumber(ARGV[1])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[3]) >= cap then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {'capped', math.max(1, tonumber(oldest[2]) + 60000 - now)}
  end
end
local verdict = 'granted'
local mode = redis.call('HGET', KEYS[1], 'mode')
if not mode then
  verdict = 'unknown'
elseif mode == 'limited' then
  local reset = tonumber(redis.call('HGET', KEYS[1], 'reset'))
  if now >= reset then
    verdict = 'unknown'
  else
    local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining'))
    if remaining <= 0 then return {'exhausted', reset - now} end
    redis.call('HINCRBY', KEYS[1], 'remaining', -1)
  end
end
if cap > 0 then
  redis.call('ZADD', KEYS[3], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[3], 60000)
end
return {verdict, 0}
"""

# KEYS: state, routes set. ARGV: route, mode, limit, remaining, delay ms, same-window ms, memory ms.
_LEARN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SADD', KEYS[2], ARGV[1])
if ARGV[2] == 'unlimited' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'mode', 'unlimited', 'learned', now)
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  return 'unlimited'
end
local reset = now + tonumber(ARGV[5])
local remaining = tonumber(ARGV[4])
local current = redis.call('HGET', KEYS[1], 'mode')
local current_reset = tonumber(redis.call('HGET', KEYS[1], 'reset') or '0')
local outcome = 'older'
if current == 'limited' and math.abs(reset - current_reset) <= tonumber(ARGV[6]) then
  if remaining < tonumber(redis.call('HGET', KEYS[1], 'remaining')) then
    redis.call('HSET', KEYS[1], 'remaining', remaining)
  end
  outcome = 'same'
elseif current ~= 'limited' or reset > current_reset then
  redis.call('HSET', KEYS[1], 'mode', 'limited', 'limit', ARGV[3], 'remaining', remaining, 'reset', reset)
  outcome = 'new'
end
redis.call('HSET', KEYS[1], 'learned', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]) + tonumber(ARGV[7]))
return outcome
"""

# KEYS: block key. ARGV: ms.
_BLOCK = """
if tonumber(ARGV[1]) > 0 then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return tonumber(ARGV[1])
"""


@dataclass(frozen=True, slots=True)
class Grant:
    ok: bool
    wait: float = 0.0  # seconds until a call may be possible, when refused
    why: str = ""  # granted | probe | blocked | capped | exhausted | learning
    probe: Lease | None = None  # held while the probe call is on its way; released by ``learned``


@dataclass(frozen=True, slots=True)
class Heard:
    """What one answer said of its route's limit: nothing, unlimited, or a limit with calls left and a delay."""

    limited: bool
    limit: int = 0
    remaining: int = 0
    reset_in_ms: int = 0


def heard_from(status: int, headers: Mapping[str, str], now: float | None = None) -> Heard | None:
    """Read ``X-RateLimit-*`` from an answer; None when the answer cannot tell (401, 5xx: before the limiter)."""
    if status not in LEARN_FROM:
        return None
    limit, remaining, reset = (headers.get(f"x-ratelimit-{name}", "") for name in ("limit", "remaining", "reset"))
    if not (limit.isdigit() and remaining.isdigit() and reset.isdigit()):
        if status == 404 or status == 429:  # an unknown route (answered before the limiter); a 429 without headers
            return None
        return Heard(limited=False)
    return Heard(True, int(limit), int(remaining), _delay_ms(int(reset), headers.get("date"), now))


def _delay_ms(reset_epoch_ms: int, date: str | None, now: float | None) -> int:
    """Milliseconds until the reset, in Rocket.Chat's own clock when its ``Date`` header is there."""
    sent_ms: float | None = None
    if date:
        try:
            sent_ms = email.utils.parsedate_to_datetime(date).timestamp() * 1000
        except (TypeError, ValueError, IndexError):
            sent_ms = None
    if sent_ms is None:
        sent_ms = (time.time() if now is None else now) * 1000
    return max(0, int(reset_epoch_ms - sent_ms)) + RESET_MARGIN_MS


class RateLimits:
    def __init__(self, connection: redis.Redis, calls_per_minute: int = 0, leases: Leases | None = None) -> None:
        self.connection = connection
        self.cap = calls_per_minute
        self.leases = leases or Leases(connection)
        self._acquire = connection.register_script(_ACQUIRE)
        self._learn = connection.register_script(_LEARN)
        self._block = connection.register_script(_BLOCK)

    def acquire(self, route: str) -> Grant:
        """May one call of ``route`` go now? Answers at once; never waits."""
        verdict, wait_ms = self._acquire(
            keys=[keys.rate_limit(route), keys.budget_block(route), keys.budget_window(route)],
            args=[self.cap, uuid.uuid4().hex],
        )
        why = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
        if why == "granted":
            return Grant(True, why=why)
        if why != "unknown":
            return Grant(False, int(wait_ms) / 1000.0, why)
        probe = self.leases.acquire(f"learn:{route}")
        if probe is None:
            return Grant(False, LEARNING_RETRY_SECONDS, "learning")
        return Grant(True, why="probe", probe=probe)

    def needs_probe(self, route: str) -> bool | None:
        """Would the next call of ``route`` be a probe (nothing learned, or its window has ended)? None when the route
        is unlimited: no probe is due while it stays so."""
        mode, reset = self.connection.hmget(keys.rate_limit(route), "mode", "reset")
        if mode is None:
            return True
        if mode != b"limited":
            return None
        seconds, micros = self.connection.time()
        return int(seconds) * 1000 + int(micros) // 1000 >= int(reset or 0)

    def learned(self, route: str, grant: Grant | None, heard: Heard | None) -> None:
        """Record what an answer said (if anything), and end the probe the call was."""
        try:
            if heard is not None:
                mode = "limited" if heard.limited else "unlimited"
                memory = LIMITED_MEMORY_MS if heard.limited else UNLIMITED_MEMORY_MS
                self._learn(
                    keys=[keys.rate_limit(route), keys.rate_limit_routes()],
                    args=[route, mode, heard.limit, heard.remaining, heard.reset_in_ms, SAME_WINDOW_MS, memory],
                )
        finally:
            if grant is not None and grant.probe is not None:
                self.leases.release(grant.probe)

    def block(self, route: str, heard: Heard | None) -> float:
        """Rocket.Chat answered 429: no process calls ``route`` before its reset. Returns the seconds blocked."""
        delay_ms = heard.reset_in_ms if heard is not None and heard.limited else 2_000
        self._block(keys=[keys.budget_block(route)], args=[delay_ms])
        return delay_ms / 1000.0

    def known(self) -> dict[str, dict[str, Any]]:
        """Route -> what was learned of it (mode, limit, remaining, seconds to reset), for doctor and metrics."""
        routes = sorted(r.decode() for r in self.connection.smembers(keys.rate_limit_routes()))
        if not routes:
            return {}
        pipe = self.connection.pipeline(transaction=False)
        for route in routes:
            pipe.hgetall(keys.rate_limit(route))
        seconds, micros = self.connection.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        result: dict[str, dict[str, Any]] = {}
        for route, raw in zip(routes, pipe.execute(), strict=True):
            state = {k.decode(): v.decode() for k, v in raw.items()}
            if not state:
                continue
            entry: dict[str, Any] = {"mode": state.get("mode", "unknown")}
            if entry["mode"] == "limited":
                entry["limit"] = int(state.get("limit", 0))
                entry["remaining"] = int(state.get("remaining", 0))
                entry["reset_in"] = max(0.0, (int(state.get("reset", 0)) - now_ms) / 1000.0)
            result[route] = entry
        return result
