"""Rocket.Chat's REST rate limiter: a fixed window of N calls per route + method + client IP.

Rocket.Chat increments the counter, then checks it (`enforceRateLimit` in ApiClass.ts), so the
N-th call in a window is still allowed with `X-RateLimit-Remaining: 0` and call N+1 is refused.
"""

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

RateKey = tuple[str, str, str]  # (route pattern, method, client IP)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_epoch_ms: int
    wait_seconds: int

    def headers(self) -> dict[str, str]:
        # X-RateLimit-Reset is an absolute epoch in milliseconds; there is no Retry-After.
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_epoch_ms),
        }


@dataclass
class _Window:
    started: float
    calls: int = 0


class RateLimiter:
    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._windows: dict[RateKey, _Window] = {}
        self._lock = threading.Lock()

    def hit(self, key: RateKey, limit: int, window_ms: int) -> Verdict:
        window_s = window_ms / 1000
        with self._lock:
            now = self._monotonic()
            window = self._windows.get(key)
            if window is None or now >= window.started + window_s:
                window = self._windows[key] = _Window(started=now)
            window.calls += 1
            calls = window.calls
            time_to_reset_ms = max(int((window.started + window_s - now) * 1000), 0)
        return Verdict(
            allowed=calls <= limit,
            limit=limit,
            remaining=max(limit - calls, 0),
            reset_epoch_ms=int(self._wall_clock() * 1000) + time_to_reset_ms,
            wait_seconds=math.ceil(time_to_reset_ms / 1000),
        )

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()
