"""Leases: exclusion that cannot lapse under a live holder, and that a dead holder frees within seconds.

Every lock and claim of the bridge is a lease: the Redis key ``ob:lease:<name>`` set with NX to
``"<fence>|<host>|<pid>|<random>"`` and a short TTL (``LEASE_SECONDS``). While the holder works, a keeper thread
of its process renews every lease the process holds, every third of the TTL, with a script that extends the key
only if it still holds this holder's value. So:

- a call slower than any TTL (Rocket.Chat answering after 30 s) keeps its lease: the keeper renews it meanwhile;
- a holder that dies (SIGKILL, a lost dyno) stops renewing, and its lease expires within ``LEASE_SECONDS``;
- a holder whose lease lapsed anyway (a process frozen longer than the TTL, Redis unreachable for the keeper) is
  told so: ``Lease.lost`` is set by the keeper, and ``Leases.fenced_set`` refuses to record an effect for a lease
  that is no longer the holder's. The fence, a number from one counter that grows with every lease granted, lets a
  reader order two holders of the same name (the later one has the larger fence).

Nobody waits for a lease: ``acquire`` answers at once, None when another holder has it, and the caller moves on
(the work keeps its place in Redis and is picked up by the next job or tick).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from bridge import keys

log = logging.getLogger("bridge.lease")

LEASE_SECONDS = 5.0
RENEW_SECONDS = LEASE_SECONDS / 3

# KEYS: lease. ARGV: token, ttl ms. Extends the lease only while it is still this holder's.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lease, fence counter. ARGV: holder, ttl ms. Returns the token, or false when the lease is held.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2]) .. '|' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""

# KEYS: lease, target. ARGV: token, value, ttl ms of the target. Writes the target only under the lease.
_FENCED_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""


def holder_identity() -> str:
    """``<host>|<pid>|<random>``: who holds a lease, readable by an operator (and by tests, which kill by pid)."""
    return f"{socket.gethostname()}|{os.getpid()}|{uuid.uuid4().hex[:12]}"


@dataclass(eq=False)
class Lease:
    name: str
    key: str
    token: str
    lost: threading.Event = field(default_factory=threading.Event)

    @property
    def fence(self) -> int:
        return int(self.token.split("|", 1)[0])


class Leases:
    def __init__(self, connection: redis.Redis, ttl: float = LEASE_SECONDS) -> None:
        self.connection = connection
        self.ttl_ms = int(ttl * 1000)
        self._acquire = connection.register_script(_ACQUIRE)
        self._release = connection.register_script(_RELEASE)
        self._renew = connection.register_script(_RENEW)
        self._fenced_set = connection.register_script(_FENCED_SET)

    def acquire(self, name: str) -> Lease | None:
        """The lease ``name`` for this process, renewed until released; None at once if someone else holds it."""
        token = self._acquire(keys=[keys.lease(name), keys.lease_fence()], args=[holder_identity(), self.ttl_ms])
        if not token:
            return None
        lease = Lease(name, keys.lease(name), token.decode() if isinstance(token, bytes) else str(token))
        _keeper().hold(self, lease)
        return lease

    def release(self, lease: Lease) -> None:
        """Give the lease up (a no-op if it lapsed). A Redis error is logged: the lease then expires by itself."""
        _keeper().drop(lease)
        try:
            self._release(keys=[lease.key], args=[lease.token])
        except (redis.RedisError, OSError) as error:
            log.warning("lease %s not released (Redis %s); it expires by itself", lease.name, type(error).__name__)

    @contextlib.contextmanager
    def holding(self, name: str) -> Iterator[Lease | None]:
        """``with leases.holding(name) as lease:``, lease None when someone else holds it."""
        lease = self.acquire(name)
        try:
            yield lease
        finally:
            if lease is not None:
                self.release(lease)

    def renew(self, lease: Lease) -> bool:
        return bool(self._renew(keys=[lease.key], args=[lease.token, self.ttl_ms]))

    def still_held(self, lease: Lease) -> bool:
        value = self.connection.get(lease.key)
        return value is not None and value.decode() == lease.token

    def fenced_set(self, lease: Lease, key: str, value: str, ttl_seconds: float) -> bool:
        """Write ``key`` only while ``lease`` is still this holder's, in one step; False (nothing written) if not."""
        written = self._fenced_set(keys=[lease.key, key], args=[lease.token, value, max(1, int(ttl_seconds * 1000))])
        if not written:
            lease.lost.set()
        return bool(written)

    def holder(self, name: str) -> str | None:
        value = self.connection.get(keys.lease(name))
        return value.decode() if value is not None else None


class _Keeper(threading.Thread):
    """One thread per process renews every lease the process holds."""

    def __init__(self) -> None:
        super().__init__(name="omnibridge-leases", daemon=True)
        self.lock = threading.Lock()
        self.held: dict[int, tuple[Leases, Lease]] = {}
        self.wake = threading.Event()

    def hold(self, leases: Leases, lease: Lease) -> None:
        with self.lock:
            self.held[id(lease)] = (leases, lease)
        self.wake.set()  # a shorter TTL than any held so far shortens the next wait

    def drop(self, lease: Lease) -> None:
        with self.lock:
            self.held.pop(id(lease), None)

    def run(self) -> None:
        while True:
            with self.lock:
                current = list(self.held.values())
            # A third of the shortest TTL held (tests use short ones), so two renewals can fail before it lapses.
            self.wake.wait(min([RENEW_SECONDS] + [leases.ttl_ms / 3000 for leases, _ in current]))
            self.wake.clear()
            with self.lock:
                current = list(self.held.values())
            for leases, lease in current:
                try:
                    self.renew(leases, lease)
                except Exception:  # noqa: BLE001 - the keeper must outlive anything one renewal meets
                    continue

    def renew(self, leases: Leases, lease: Lease) -> None:
        try:
            renewed = leases.renew(lease)
        except (redis.RedisError, OSError) as error:
            log.debug("lease %s not renewed (Redis %s); trying again", lease.name, type(error).__name__)
            return
        if renewed:
            return
        with self.lock:
            still_held = self.held.pop(id(lease), None) is not None
        if still_held:  # not released meanwhile: it lapsed under us
            lease.lost.set()
            log.warning("lease %s lapsed before its holder was done", lease.name)


_KEEPER: _Keeper | None = None
_KEEPER_PID = 0
_KEEPER_LOCK = threading.Lock()


def _keeper() -> _Keeper:
    """The process's keeper, started on first use (and again in a forked child, which has no threads)."""
    global _KEEPER, _KEEPER_PID
    with _KEEPER_LOCK:
        if _KEEPER is None or _KEEPER_PID != os.getpid() or not _KEEPER.is_alive():
            _KEEPER, _KEEPER_PID = _Keeper(), os.getpid()
            _KEEPER.start()
        return _KEEPER
