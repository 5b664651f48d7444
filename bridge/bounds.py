"""Saying loudly, but not once per request, that a bound on Redis state refused something.

A bound is reached in a flood, when refusals come by the thousand per second: one log line each would turn a
Redis bound into a disk flood. ``Refusals`` logs the first refusal of each kind at once, at ERROR, then at most one
line per ``LOG_EVERY_SECONDS`` with how many were refused since; ``/metrics`` counts every one (README, *Bounds*).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

LOG_EVERY_SECONDS = 10.0


class Refusals:
    def __init__(
        self, logger: logging.Logger, every: float = LOG_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    def note(self, kind: str, what: str, **extra: object) -> bool:
        """Count one refusal of ``kind``; log ``what`` with the count if none was logged for ``every`` seconds.
        Returns whether a line was logged."""
        now = self.clock()
        with self._lock:
            self._counts[kind] += 1
            last = self._logged_at.get(kind)
            if last is not None and now - last < self.every:
                return False
            count = self._counts.pop(kind)
            self._logged_at[kind] = now
        since = "" if last is None else f" in the last {now - last:.0f} s"
        self.logger.error("%s (%d refused%s)", what, count, since, extra=extra)
        return True
