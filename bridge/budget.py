"""A deployment-wide budget of Rocket.Chat calls per route, shared through Redis.

Rocket.Chat limits non-bot accounts to ``API_Enable_Rate_Limiter_Limit_Calls_Default`` (10) calls per
``..._Time_Default`` (60 s) per route and method (reference 5.2). However many web and worker processes run, the
bridge stays under its budget (8 per minute by default): every call first takes a slot in a sliding window kept in
Redis, timed by Redis's own clock so that processes on different hosts agree. When Rocket.Chat answers 429
anyway (another client on the same account or IP), the route is blocked for everyone until ``X-RateLimit-Reset``.
An account with the ``bot`` role bypasses Rocket.Chat's limit; set ``ROCKETCHAT_CALLS_PER_MINUTE=0`` then.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import redis

from bridge import keys
from bridge.errors import BudgetExhausted

WINDOW_MS = 60_000

# KEYS: window zset, block key. ARGV: window ms, limit, member. Returns 0 (granted) or ms to wait.
_TAKE_SLOT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then return blocked end
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now_ms)
"""

# KEYS: block key. ARGV: reset epoch ms. Blocks until Rocket.Chat's reset time, by Redis's clock.
_BLOCK_UNTIL = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ms = tonumber(ARGV[1]) - now_ms
if ms > 0 then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return ms
"""


class CallBudget:
    def __init__(
        self,
        connection: redis.Redis,
        calls_per_minute: int,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.connection = connection
        self.limit = calls_per_minute
        self.sleep = sleep
        self._take = connection.register_script(_TAKE_SLOT)
        self._block = connection.register_script(_BLOCK_UNTIL)

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def try_take(self, route: str) -> float:
        """Take a slot for one call: 0.0 when granted, else the seconds until one may free up."""
        if not self.enabled:
            return 0.0
        wait_ms = self._take(
            keys=[keys.budget_window(route), keys.budget_block(route)],
            args=[WINDOW_MS, self.limit, uuid.uuid4().hex],
        )
        return int(wait_ms) / 1000.0

    def take(self, route: str, max_wait: float) -> float:
        """Wait for a slot, at most ``max_wait`` seconds in all; returns the seconds waited."""
        waited = 0.0
        while True:
            wait = self.try_take(route)
            if wait == 0.0:
                return waited
            if waited + wait > max_wait:
                raise BudgetExhausted(
                    f"the call budget for {route} ({self.limit} per minute) has no slot for {wait:.1f} s; "
                    "the job will be retried later",
                    route=route,
                )
            self.sleep(wait)
            waited += wait

    def block_until(self, route: str, reset_epoch_ms: int) -> float:
        """Rocket.Chat said 429: no process calls ``route`` again before its reset time. Returns seconds blocked."""
        if not self.enabled:
            return 0.0
        return max(0, int(self._block(keys=[keys.budget_block(route)], args=[reset_epoch_ms]))) / 1000.0
