"""A reusable end-to-end rig: the Rocket.Chat double over HTTP, the bridge as real processes, and a referee.

``bridge_rig(...)`` (a context manager) builds a fresh double (``SandboxState`` with its rate limiter on unless told
otherwise), seeds the team, adds the bridge's service account with the roles asked for, serves the double over
HTTP, starts ``omnibridge web`` and ``omnibridge worker`` subprocesses (``tests.processes.BridgeProcesses``) with
only the settings a deployment must give (Redis, Rocket.Chat, the account, the webhook and API tokens, a private
spool directory, ``LOG_LEVEL=INFO``) plus what the test adds, and posts the double's webhooks to the web process
the way Rocket.Chat does (``WebhookPoster``). Agents close each chat some seconds after they got it (``Closer``),
so capacity frees up.

The ``Referee`` listens on the double: every take and forward per room, and at each take the agent's open chats
against the capacity in the agent's own user document (``livechat.maxNumberSimultaneousChat``: a number, a numeric
string or absent, then the bridge's ``DEFAULT_MAX_CHATS``; ``0`` is no limit). The request log gives the rest:
``inquiries.take`` answered 200 per inquiry, ``room.forward`` per room, 429 answers, calls per route.

Leases (``ob:lease:<name>``, value ``"<fence>|<host>|<pid>|<random>"``) are read with ``Rig.lease``, which maps the
holder's pid to the process name ``BridgeProcesses`` knows it by.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bridge.embedded import EmbeddedRedis
from bridge.sandbox.requestlog import LoggedRequest
from bridge.sandbox.server import SandboxServer
from bridge.sandbox.state import CLOSED, FORWARDED, QUEUED, TAKEN, SandboxState
from bridge.sandbox.webhooks import WebhookPoster
from tests.conftest import WEBHOOK_TOKEN
from tests.processes import BridgeProcesses
from tests.team import SALES, SERVICE_ROLES, SUPPORT, add_service_account, seed_team

API_TOKEN = "liveness-api-token-7c41"
DEFAULT_MAX_CHATS = 3  # the bridge's default for an agent whose maxNumberSimultaneousChat is not set

TAKE = "/api/v1/livechat/inquiries.take"
GET_ONE = "/api/v1/livechat/inquiries.getOne"
FORWARD = "/api/v1/livechat/room.forward"
ROOMS = "/api/v1/livechat/rooms"
INQUIRIES_LIST = "/api/v1/livechat/inquiries.list"
AGENTS_AVAILABLE = "/api/v1/omnichannel/agents/available"
EXTENSION = "/api/v1/omnichannel/agent/extension"
MIXED = (SALES, SUPPORT)


# -- capacity as Rocket.Chat stores it ------------------------------------------------------------------------


def capacity_of(state: SandboxState, agent_id: str, default: int = DEFAULT_MAX_CHATS) -> int | None:
    """The agent's capacity from their user document; None means no limit (``0``)."""
    with state.lock:
        user = state.users.get(agent_id) or {}
        raw = (user.get("livechat") or {}).get("maxNumberSimultaneousChat")
    capacity = default
    if isinstance(raw, bool):
        raw = None
    if isinstance(raw, int | float):
        capacity = int(raw)
    elif isinstance(raw, str) and raw.strip():
        try:
            capacity = int(float(raw.strip()))
        except ValueError:
            capacity = default
    return None if capacity == 0 else capacity


# -- the referee ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Take:
    """One TAKEN event (a take, or the take half of a forward): who got the room and their load then."""

    room_id: str
    agent: str
    at: float  # time.monotonic()
    open_now: int
    capacity: int | None


class Referee:
    """A listener on the double: every take and forward per room, each agent's open chats at each take."""

    def __init__(self, state: SandboxState, default_max_chats: int = DEFAULT_MAX_CHATS) -> None:
        self.state = state
        self.default_max_chats = default_max_chats
        self.lock = threading.Lock()
        self.queued_at: dict[str, float] = {}
        self.takes: dict[str, list[Take]] = defaultdict(list)
        self.forwards: Counter[str] = Counter()
        self.served_at: dict[str, float] = {}  # the first take
        self.closed: set[str] = set()
        self.max_open: dict[str, int] = defaultdict(int)
        self.capacities: dict[str, int | None] = {}
        self.violations: list[str] = []

    def _name(self, agent_id: str) -> str:
        with self.state.lock:
            user = self.state.users.get(agent_id)
            return str(user["username"]) if user else agent_id

    def __call__(self, event_type: str, room: dict[str, Any]) -> None:
        rid = room["_id"]
        now = time.monotonic()
        if event_type == QUEUED:
            with self.lock:
                self.queued_at.setdefault(rid, now)
            return
        if event_type == CLOSED:
            with self.lock:
                self.closed.add(rid)
            return
        if event_type == FORWARDED:
            with self.lock:
                self.forwards[rid] += 1
            return
        if event_type != TAKEN or not room.get("servedBy"):
            return
        agent_id = room["servedBy"]["_id"]
        open_now = len(self.state.open_chats_of(agent_id))
        capacity = capacity_of(self.state, agent_id, self.default_max_chats)
        name = self._name(agent_id)
        with self.lock:
            self.takes[rid].append(Take(rid, name, now, open_now, capacity))
            self.served_at.setdefault(rid, now)
            self.capacities[name] = capacity
            self.max_open[name] = max(self.max_open[name], open_now)
            if capacity is not None and open_now > capacity:
                self.violations.append(f"{name} got {rid} with {open_now} open chats (capacity {capacity})")

    def served(self) -> dict[str, float]:
        with self.lock:
            return dict(self.served_at)

    def routings(self, rid: str) -> int:
        """How many times the room was given to an agent by a take (the take half of each forward excluded)."""
        with self.lock:
            return len(self.takes.get(rid, [])) - self.forwards[rid]

    def loads(self) -> str:
        with self.lock:
            return " ".join(
                f"{name} {self.max_open[name]}/{'-' if self.capacities.get(name) is None else self.capacities[name]}"
                for name in sorted(self.max_open)
            )


# -- the request log --------------------------------------------------------------------------------------------


def posts(state: SandboxState, path: str) -> list[LoggedRequest]:
    return [r for r in state.requests() if r.method == "POST" and r.path == path and isinstance(r.body, dict)]


def takes_by_inquiry(state: SandboxState, status: int | None = 200) -> Counter[str]:
    """``POST inquiries.take`` per inquiry id, answered ``status`` (None: any status)."""
    return Counter(r.body.get("inquiryId") for r in posts(state, TAKE) if status is None or r.status == status)


def forwards_by_room(state: SandboxState, status: int | None = None) -> Counter[str]:
    """``POST room.forward`` per room id, answered ``status`` (None: any status)."""
    return Counter(r.body.get("roomId") for r in posts(state, FORWARD) if status is None or r.status == status)


def too_many(state: SandboxState) -> list[LoggedRequest]:
    return [r for r in state.requests() if r.status == 429]


def by_route(requests: Iterable[LoggedRequest]) -> Counter[str]:
    return Counter(f"{r.method} {r.path}" for r in requests)


def breakdown(requests: Iterable[LoggedRequest], per: float = 1.0) -> str:
    counts = by_route(requests)
    return ", ".join(f"{route} {n / per:.2f}" for route, n in counts.most_common())


# -- the double's rate limiter, watched -------------------------------------------------------------------------


@dataclass(frozen=True)
class LimiterHit:
    route: str  # "POST /api/v1/livechat/inquiries.take"
    at: float  # time.monotonic()
    calls: int  # this call's rank in its window (over the limit when refused)
    limit: int
    allowed: bool


class LimiterWatch:
    """Wraps the double's rate limiter (on this state object only) to record each call's rank in its window."""

    def __init__(self, state: SandboxState) -> None:
        self.hits: list[LimiterHit] = []
        self._lock = threading.Lock()
        limiter = state.limiter
        original = limiter.hit

        def hit(key: tuple[str, str, str], limit: int, window_ms: int):  # type: ignore[no-untyped-def]
            verdict = original(key, limit, window_ms)
            calls = limit - verdict.remaining if verdict.allowed else limit + 1
            with self._lock:
                self.hits.append(LimiterHit(f"{key[1]} {key[0]}", time.monotonic(), calls, limit, verdict.allowed))
            return verdict

        limiter.hit = hit  # type: ignore[method-assign]

    def windows(self, route: str) -> list[list[LimiterHit]]:
        """The route's calls grouped by the limiter's windows (a window starts with its first call)."""
        with self._lock:
            hits = [h for h in self.hits if h.route == route]
        windows: list[list[LimiterHit]] = []
        for h in hits:
            if h.calls == 1 or not windows:
                windows.append([])
            windows[-1].append(h)
        return windows


# -- agents closing their chats ---------------------------------------------------------------------------------


class Closer(threading.Thread):
    """Agents close each chat ``after`` seconds after they got it (None: they keep them open)."""

    def __init__(self, state: SandboxState, referee: Referee, after: float | None) -> None:
        super().__init__(name="liveness-closer", daemon=True)
        self.state = state
        self.referee = referee
        self.after = after
        self.stopping = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            after = self.after
            if after is None:
                continue
            now = time.monotonic()
            for rid, at in self.referee.served().items():
                if now - at < after or rid in self.referee.closed:
                    continue
                try:
                    with self.state.lock:
                        still_open = bool(self.state.rooms[rid].get("open"))
                    if still_open:
                        self.state.close_room(rid)
                except (KeyError, ValueError):
                    pass  # closed meanwhile (a visitor, another close)
                except Exception as error:  # never let the thread die: it would stall every later close
                    self.errors.append(repr(error))

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


# -- the rig ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    name: str
    fence: str
    host: str
    pid: int
    token: str
    ttl_ms: int


@dataclass
class Rig:
    state: SandboxState
    server: SandboxServer
    team: dict[str, str]
    referee: Referee
    closer: Closer
    processes: BridgeProcesses
    redis_server: EmbeddedRedis
    redis_client: redis.Redis
    limiter: LimiterWatch
    poster: WebhookPoster | None = None
    rooms: dict[str, str] = field(default_factory=dict)  # room id -> inquiry id, every chat of the test
    opened_at: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # -- chats

    def open_chats(self, count: int, departments: Iterable[str | None] = MIXED, gap: float = 0.0) -> list[str]:
        """``count`` visitors start chats ``gap`` seconds apart, cycling through ``departments``."""
        cycle = list(departments)
        opened = []
        for index in range(count):
            if index and gap:
                time.sleep(gap)
            opened.append(self.open_chat(cycle[index % len(cycle)]))
        return opened

    def open_chat(self, department: str | None = SALES) -> str:
        room, inquiry = self.state.open_chat(department=department)
        self.rooms[room["_id"]] = inquiry["_id"]
        self.opened_at[room["_id"]] = time.monotonic()
        return room["_id"]

    def is_open(self, rid: str) -> bool:
        with self.state.lock:
            return bool(self.state.rooms[rid].get("open"))

    def unserved(self, rooms: Iterable[str] | None = None) -> list[str]:
        served = self.referee.served()
        return [rid for rid in (self.rooms if rooms is None else rooms) if rid not in served]

    def wait_served(
        self, rooms: Iterable[str], timeout: float, every: Callable[[], object] | None = None, interval: float = 0.05
    ) -> bool:
        """Wait until every room is served (False when ``timeout`` ran out); ``every`` runs at each poll."""
        rooms = list(rooms)
        deadline = time.monotonic() + timeout
        while True:
            if every is not None:
                every()
            if not self.unserved(rooms):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)

    def served_at(self, rid: str) -> float | None:
        return self.referee.served().get(rid)

    def last_served(self, rooms: Iterable[str]) -> float:
        served = self.referee.served()
        return max(served[rid] for rid in rooms if rid in served)

    # -- leases and Redis

    def lease(self, name: str) -> Lease | None:
        key = f"ob:lease:{name}"
        try:
            pipe = self.redis_client.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            raw, ttl = pipe.execute()
        except (redis.RedisError, OSError):
            return None
        if raw is None:
            return None
        parts = raw.decode(errors="replace").split("|")
        if len(parts) < 4 or not parts[2].isdigit():
            raise AssertionError(f"ob:lease:{name} holds {raw!r}, not '<fence>|<host>|<pid>|<random>'")
        return Lease(name, parts[0], parts[1], int(parts[2]), "|".join(parts[3:]), int(ttl))

    def leases(self) -> dict[str, Lease]:
        found = {}
        with contextlib.suppress(redis.RedisError, OSError):
            for key in self.redis_client.scan_iter("ob:lease:*", count=500):
                name = key.decode()[len("ob:lease:") :]
                if (lease := self.lease(name)) is not None:
                    found[name] = lease
        return found

    def process_of(self, pid: int) -> str | None:
        return next((name for name, p in self.processes.processes.items() if p.pid == pid), None)

    def inherited_connections(self, name: str) -> list[str]:
        """The process's Redis connections that a child it forked holds open too (so they outlive a SIGKILL of the
        process), by the command each is running now (``blmove``: a blocking dequeue). Linux ``/proc`` only."""
        mine = _sockets(self.processes.processes[name].pid)
        shared: set[str] = set()
        for child in self.processes.children(name):
            shared |= mine & _sockets(child)
        ports = _local_ports(shared)
        try:
            clients = self.redis_client.client_list()
        except (redis.RedisError, OSError):
            return [f"{len(shared)} socket(s)"]
        return sorted(str(c.get("cmd")) for c in clients if str(c.get("addr", "")).rpartition(":")[2] in ports)

    def tick_last(self) -> float | None:
        try:
            raw = self.redis_client.get("ob:tick-last")
        except (redis.RedisError, OSError):
            return None
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None

    # -- the bridge's API

    def voice_route(self, extension: str, department: str | None, request_id: str) -> httpx.Response:
        body: dict[str, Any] = {"extension": extension, "requestId": request_id}
        if department is not None:
            body["departmentId"] = department
        return httpx.post(
            f"{self.processes.url}/voice/route",
            json=body,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=5,
        )

    def decisions(self, rid: str) -> list[dict[str, Any]]:
        try:
            response = httpx.get(
                f"{self.processes.url}/decisions/{rid}", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=3
            )
        except httpx.TransportError as error:
            return [{"error": repr(error)}]
        return response.json().get("decisions", []) if response.status_code == 200 else []

    # -- the verdict

    def double_routed(self, rooms: Iterable[str] | None = None) -> list[str]:
        ok_takes = takes_by_inquiry(self.state, status=200)
        return [
            rid
            for rid in (self.rooms if rooms is None else rooms)
            if self.referee.routings(rid) > 1 or ok_takes[self.rooms[rid]] > 1
        ]

    def verify(self, label: str, rooms: Iterable[str] | None = None, excused: Iterable[str] = ()) -> None:
        """Every chat served (but the ``excused``), none taken twice (referee and request log), nobody over
        capacity."""
        rooms = list(self.rooms if rooms is None else rooms)
        lost = [rid for rid in self.unserved(rooms) if rid not in set(excused)]
        double = self.double_routed(rooms)
        over = list(self.referee.violations)
        print(
            f"\n{label}: {len(rooms)} chats, {len(rooms) - len(lost)} served, {len(lost)} never served, "
            f"{len(double)} taken twice, {len(over)} over capacity; max open/capacity: {self.referee.loads()}"
        )
        details = {rid: self.decisions(rid) for rid in (lost + double)[:5]}
        assert not lost, f"{label}: chats never served: {lost}\ndecisions: {details}\n{self.output()}"
        assert not double, f"{label}: chats taken more than once: {double}\ndecisions: {details}\n{self.output()}"
        assert not over, f"{label}: agents over capacity: {over}\n{self.output()}"

    def output(self) -> str:
        return f"{self.processes.output()}\n--- Redis ---\n{self.redis_state()}"

    def redis_state(self) -> str:
        """What a stalled bridge left in Redis: the queue, the event log, leases, waiting chats, due markers."""
        try:
            client = self.redis_client
            lines = [
                f"rq:queue:bridge {client.llen('rq:queue:bridge')} job(s); ob:events {client.llen('ob:events')} "
                f"line(s), ob:events:other {client.llen('ob:events:other')} line(s); "
                f"ob:events:pending {client.get('ob:events:pending')!r}",
                f"leases: { {name: (lease.pid, lease.ttl_ms) for name, lease in self.leases().items()} }",
            ]
            for key in sorted(client.scan_iter("ob:waiting:*", count=500)):
                lines.append(f"{key.decode()}: {[m.decode() for m in client.zrange(key, 0, 20)]}")
            due = ("ob:load-known", "ob:recover-due", "ob:reconcile-due", "ob:tick-last", "ob:tick-due")
            lines.append(" ".join(f"{key}={client.get(key)!r}" for key in due))
            lines.append(f"ob:wake {client.zrange('ob:wake', 0, -1, withscores=True)}")
            sequence = client.get("ob:events:job-seq")
            if sequence is not None:
                job = f"events-{int(sequence)}"
                fields = client.hmget(f"rq:job:{job}", "status", "worker_name", "started_at", "enqueued_at")
                lines.append(f"latest event job {job}: status, worker, started, enqueued = {fields}")
            lines.append(f"RQ started registry: {client.zrange('rq:wip:bridge', 0, -1, withscores=True)}")
            lines.append(f"RQ intermediate queue: {client.lrange('rq:queue:bridge:intermediate', 0, -1)}")
            lines.append(
                f"Redis clients: {[(c.get('name'), c.get('cmd'), c.get('age')) for c in client.client_list()]}"
            )
            return "\n".join(lines)
        except (redis.RedisError, OSError) as error:
            return f"Redis unreadable: {error!r}"


def _sockets(pid: int) -> set[str]:
    found = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:"):
                    found.add(target)
    return found


def _local_ports(inodes: set[str]) -> set[str]:
    """Local TCP ports of sockets given as ``socket:[inode]``."""
    wanted = {inode[len("socket:[") : -1] for inode in inodes}
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in wanted:
                    ports.add(str(int(fields[1].rpartition(":")[2], 16)))
    return ports


def base_env(
    redis_url: str, rocketchat_url: str, user_id: str, token: str, spool_dir: Path, extra: Mapping[str, str]
) -> dict[str, str]:
    """Only what a deployment must set; every other bridge setting keeps its default unless ``extra`` sets it."""
    return {
        "REDIS_URL": redis_url,
        "ROCKETCHAT_URL": rocketchat_url,
        "ROCKETCHAT_USER_ID": user_id,
        "ROCKETCHAT_AUTH_TOKEN": token,
        "ROCKETCHAT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "BRIDGE_API_TOKEN": API_TOKEN,
        "SPOOL_DIR": str(spool_dir),
        "LOG_LEVEL": "INFO",
        **extra,
    }


@contextlib.contextmanager
def bridge_rig(
    redis_server: EmbeddedRedis,
    redis_url: str,
    redis_client: redis.Redis,
    log_dir: Path,
    *,
    agents: int = 6,
    roles: tuple[str, ...] = SERVICE_ROLES,
    sandbox: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    workers: int = 2,
    close_after: float | None = 1.0,
    poster_timeout: float = 2.0,
    poster_retry_delay: float = 1.0,
) -> Iterator[Rig]:
    """A fresh double (rate limiter on), ``agents`` agents, the account with ``roles``, the bridge's processes."""
    state = SandboxState("7.13.9", seed=7, **dict(sandbox or {}))
    limiter = LimiterWatch(state)
    team = seed_team(state, agents=agents)
    account = add_service_account(state, roles=roles)
    referee = Referee(state)
    state.listeners.append(referee)
    closer = Closer(state, referee, close_after)
    with SandboxServer(state) as server:
        spool = log_dir / "spool"
        processes = BridgeProcesses(
            base_env(redis_url, server.url, account.user_id, account.token, spool, env or {}), log_dir, workers=workers
        )
        rig = Rig(state, server, team, referee, closer, processes, redis_server, redis_client, limiter)
        crashed: dict[str, int] = {}
        statuses: dict[str, int] = {}
        try:
            processes.start()
            rig.poster = WebhookPoster(
                state,
                f"{processes.url}/webhooks/livechat",
                WEBHOOK_TOKEN,
                timeout=poster_timeout,
                retry_delay=poster_retry_delay,
            ).attach()
            closer.start()
            yield rig
        finally:
            closer.stop()
            state.clear_faults()
            if rig.poster is not None:
                rig.poster.close(timeout=5, flush=False)
            if redis_server.process is None:
                redis_server.start()
            crashed = processes.crashed()
            statuses = processes.stop()
            state.listeners.remove(referee)
    assert not closer.errors, f"the agents' closer failed: {closer.errors[:3]}"
    assert not crashed, f"bridge processes died during the test: {crashed}\n{processes.output()}"
    unclean = {
        name: code
        for name, code in statuses.items()
        if name not in processes.killed and code not in ((0, -signal.SIGTERM) if name.startswith("web") else (0,))
    }
    assert not unclean, f"processes did not stop cleanly: {unclean}\n{processes.output()}"
