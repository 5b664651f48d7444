"""A cache in Redis for Rocket.Chat answers, shared by every web and worker process.

- **TTL**: an entry younger than ``ttl`` is served as it is.
- **Single-flight**: when an entry must be refreshed, one process (the holder of the lease ``refresh:<name>``,
  renewed while Rocket.Chat answers and freed within seconds if the holder dies) calls Rocket.Chat; the others do
  not call too. They serve the entry they have if it is within its stale bound, else (nothing usable cached yet)
  they get ``FetchInProgress`` at once, so a job never waits for another process: it keeps its work and comes back
  a moment later. A caller that would rather wait (a command line tool) passes ``wait_max``.
- **Refresh ahead**: the first reader past ``REFRESH_AHEAD`` of the TTL refreshes it while the entry is still
  fresh, so readers rarely wait.
- **Stale if error**: while Rocket.Chat fails, the last good entry is served for up to ``stale_max`` seconds past
  its TTL, marked stale (logged and counted). After a failed refresh, others do not retry it for
  ``FAILURE_PAUSE`` seconds, so an outage is not hammered by every waiting job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from bridge import keys
from bridge.errors import FetchInProgress, RocketChatError, RocketChatUnavailable
from bridge.lease import Leases

log = logging.getLogger("bridge.cache")

REFRESH_AHEAD = 0.75
FAILURE_PAUSE = 2.0
POLL_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class Cached:
    value: Any
    age: float
    outcome: str  # "hit" | "refreshed" | "stale"

    @property
    def stale(self) -> bool:
        return self.outcome == "stale"


class SharedCache:
    def __init__(
        self,
        connection: redis.Redis,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_outcome: Callable[[str, str], None] | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.connection = connection
        self.leases = leases or Leases(connection)
        self.clock = clock
        self.sleep = sleep
        self.on_outcome = on_outcome or (lambda name, outcome: None)

    def get(self, name: str, fetch: Callable[[], Any], ttl: float, stale_max: float, wait_max: float = 0.0) -> Cached:
        entry = self._read(name)
        age = self.clock() - entry["at"] if entry else None
        if entry is not None and age is not None and age < ttl:
            if age >= ttl * REFRESH_AHEAD and not self._failed_recently(name):
                refreshed = self._refresh(name, fetch, ttl, stale_max, entry, quiet=True)
                if refreshed is not None:
                    return self._result(name, refreshed, refreshed.outcome)
            return self._result(name, Cached(entry["value"], age, "hit"), "hit")

        deadline = self.clock() + wait_max
        last_error: RocketChatError | None = None
        while True:
            if self._failed_recently(name):
                return self._stale_or_raise(name, entry, ttl, stale_max, last_error)
            try:
                refreshed = self._refresh(name, fetch, ttl, stale_max, entry, quiet=False)
            except RocketChatError as error:
                last_error = error
                return self._stale_or_raise(name, entry, ttl, stale_max, error)
            if refreshed is not None:
                return self._result(name, refreshed, refreshed.outcome)
            # Another process is refreshing it: its entry, or ours while it is within bounds, or come back later.
            newer = self._read(name)
            if newer is not None and (entry is None or newer["at"] > entry["at"]):
                return self._result(name, Cached(newer["value"], self.clock() - newer["at"], "hit"), "hit")
            if entry is not None and self.clock() - entry["at"] < ttl + stale_max:
                return self._result(name, Cached(entry["value"], self.clock() - entry["at"], "hit"), "hit")
            if self.clock() >= deadline:
                raise FetchInProgress(f"{name} is being fetched from Rocket.Chat by another process", route=name)
            self.sleep(POLL_SECONDS)

    def peek(self, name: str) -> Cached | None:
        """The entry as it is, whatever its age, without calling Rocket.Chat (for request paths)."""
        entry = self._read(name)
        return Cached(entry["value"], self.clock() - entry["at"], "hit") if entry else None

    def invalidate(self, name: str) -> None:
        self.connection.delete(keys.cached(name))

    def put(self, name: str, value: Any, ttl: float, stale_max: float = 0.0) -> None:
        entry = {"at": self.clock(), "value": value}
        self.connection.set(keys.cached(name), json.dumps(entry), px=max(1, int((ttl + stale_max) * 1000)))

    def _refresh(
        self,
        name: str,
        fetch: Callable[[], Any],
        ttl: float,
        stale_max: float,
        seen: dict[str, Any] | None,
        quiet: bool,
    ) -> Cached | None:
        """Fetch and store under the single-flight lease; None when another process holds it."""
        lease = self.leases.acquire(f"refresh:{name}")
        if lease is None:
            return None
        try:
            # Someone may have refreshed between our read and our lock: then there is nothing to fetch.
            current = self._read(name)
            if current is not None and (seen is None or current["at"] > seen["at"]):
                return Cached(current["value"], self.clock() - current["at"], "hit")
            value = fetch()
            self.put(name, value, ttl, stale_max)  # before the lease goes, so whoever takes it next sees the entry
            return Cached(value, 0.0, "refreshed")
        except RocketChatError as error:
            # The value (when it failed) is what readers compare; the expiry only cleans the key up later.
            self.connection.set(keys.cache_failed(name), repr(self.clock()), px=int(FAILURE_PAUSE * 1000) * 10)
            if quiet:
                log.warning("refresh ahead of %s failed, serving the current entry: %s", name, error)
                return None
            raise
        finally:
            self.leases.release(lease)

    def _stale_or_raise(
        self, name: str, entry: dict[str, Any] | None, ttl: float, stale_max: float, error: RocketChatError | None
    ) -> Cached:
        if entry is not None:
            age = self.clock() - entry["at"]
            if age < ttl + stale_max:
                log.warning(
                    "serving %s stale (%.0f s old) while Rocket.Chat fails: %s",
                    name,
                    age,
                    error or "a refresh failed moments ago",
                )
                return self._result(name, Cached(entry["value"], age, "stale"), "stale")
        if error is not None:
            raise error
        raise RocketChatUnavailable(f"no usable {name} entry: Rocket.Chat refreshes are failing", route=name)

    def _failed_recently(self, name: str) -> bool:
        failed_at = self.connection.get(keys.cache_failed(name))
        return failed_at is not None and self.clock() - float(failed_at) < FAILURE_PAUSE

    def _read(self, name: str) -> dict[str, Any] | None:
        raw = self.connection.get(keys.cached(name))
        if raw is None:
            return None
        entry = json.loads(raw)
        return entry if isinstance(entry, dict) and "at" in entry else None

    def _result(self, name: str, cached: Cached, outcome: str) -> Cached:
        self.on_outcome(name, outcome)
        return cached
