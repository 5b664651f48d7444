"""Injected failures: a status and/or a delay for requests under a path prefix.

They model what sits in front of Rocket.Chat (a proxy answering 503, a slow upstream), so they
apply before authentication, rate limiting and the endpoint itself.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Fault:
    path_prefix: str
    status: int | None
    remaining: int | None  # requests still to affect; None means no limit
    until: float | None  # monotonic deadline; None means until cleared
    delay: float

    def active(self, now: float) -> bool:
        return (self.remaining is None or self.remaining > 0) and (self.until is None or now < self.until)


class FaultTable:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def inject(
        self,
        path_prefix: str,
        status: int | None = 503,
        count: int | None = None,
        seconds: float | None = None,
        delay: float = 0.0,
    ) -> Fault:
        if status is None and delay <= 0:
            raise ValueError("a fault needs a status, a delay, or both")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1 (or None for no limit)")
        until = None if seconds is None else self._monotonic() + seconds
        fault = Fault(path_prefix, status, count, until, delay)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, path: str) -> Fault | None:
        """The newest active fault matching `path`, counting this request against it."""
        with self._lock:
            now = self._monotonic()
            self._faults = [fault for fault in self._faults if fault.active(now)]
            for fault in reversed(self._faults):
                if path.startswith(fault.path_prefix):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
