"""Fault injection with real processes: ``omnibridge web``, two ``omnibridge worker`` subprocesses, the session's
Redis and the Rocket.Chat double, whose webhooks reach the web process the way Rocket.Chat's ``sendRequest`` posts
them (``WebhookPoster``: 5 attempts, retried on 5xx and connection errors).

Each test breaks one thing: Rocket.Chat answering 503 for a minute, answering slower than the bridge's timeout, a
worker killed mid-job, Redis restarted (it keeps nothing on disk: a restart wipes it) or down longer than
Rocket.Chat's retry window, the web process restarted, webhooks lost. Each ends with the same referee: the double's
own state says every chat was served exactly once and no agent ever had more open chats than their capacity.
The module prints one summary table at the end.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from rq import Worker

from bridge.embedded import EmbeddedRedis
from bridge.sandbox.state import QUEUED, SandboxState
from bridge.sandbox.webhooks import WebhookPoster
from tests.conftest import WEBHOOK_TOKEN
from tests.processes import BridgeProcesses
from tests.rig import Referee
from tests.support import report, wait_for
from tests.team import SALES, SUPPORT, seed_team

pytestmark = [pytest.mark.slow, pytest.mark.faults]

API_TOKEN = "faults-api-token-3b9e"
LIVECHAT = "/api/v1/livechat"
OMNICHANNEL = "/api/v1/omnichannel"
TAKE = "/api/v1/livechat/inquiries.take"
INQUIRIES_LIST = "/api/v1/livechat/inquiries.list"
# Capacity of the agents able to work (tests/team.py); fay has no maximum, so DEFAULT_MAX_CHATS (3) holds.
CAPACITY = {"ana": 2, "bo": 3, "fay": 3}
MIXED = [SALES, SUPPORT]


# -- the rig: processes, double, poster -----------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    faults: int
    chats: int
    routed: int
    lost: int
    double: int
    over: int
    seconds: float


@dataclass
class Rig:
    state: SandboxState
    team: dict[str, str]
    referee: Referee
    processes: BridgeProcesses
    redis_server: EmbeddedRedis
    redis_client: redis.Redis
    ledger: list[Row]
    started: float = field(default_factory=time.monotonic)
    rooms: dict[str, str] = field(default_factory=dict)  # room id -> inquiry id, every chat of the test
    posters: list[WebhookPoster] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    @property
    def poster(self) -> WebhookPoster:
        return self.posters[-1]

    def attach_poster(self, timeout: float = 2.0, retry_delay: float = 1.0, attempts: int = 5) -> WebhookPoster:
        """A new poster (the previous one, if any, stops listening but finishes its deliveries)."""
        if self.posters:
            self.posters[-1].detach()
        url = f"{self.processes.url}/webhooks/livechat"
        poster = WebhookPoster(
            self.state, url, WEBHOOK_TOKEN, timeout=timeout, retry_delay=retry_delay, attempts=attempts
        )
        self.posters.append(poster.attach())
        return poster

    def fault(self, description: str, action: Callable[[], object] | None = None) -> Any:
        self.faults.append(description)
        return action() if action is not None else None

    def open_chats(
        self, departments: list[str], gap: float = 0.2, during: dict[int, Callable[[], object]] | None = None
    ) -> list[str]:
        """Visitors start chats ``gap`` seconds apart; ``during[i]`` runs just before the i-th chat."""
        opened = []
        for index, department in enumerate(departments):
            if during and index in during:
                during[index]()
            room, inquiry = self.state.open_chat(department=department)
            self.rooms[room["_id"]] = inquiry["_id"]
            opened.append(room["_id"])
            time.sleep(gap)
        return opened

    def is_open(self, rid: str) -> bool:
        with self.state.lock:
            return bool(self.state.rooms[rid].get("open"))

    def serve_all(self, rooms: list[str], timeout: float, close_after: float | None = 1.0) -> bool:
        """Wait until every room is served; agents close each chat ``close_after`` seconds after taking it.

        Returns False when ``timeout`` ran out (the verdict, with details, is ``verify``'s).
        """
        deadline = time.monotonic() + timeout
        while True:
            served = self.referee.served()
            if all(rid in served for rid in rooms):
                return True
            if time.monotonic() > deadline:
                return False
            if close_after is not None:
                now = time.monotonic()
                for rid, at in served.items():
                    if now - at >= close_after and self.is_open(rid):
                        self.state.close_room(rid)
            time.sleep(0.05)

    def takes(self) -> list[tuple[str, str, int]]:
        """Every ``inquiries.take`` the bridge made: (inquiry id, agent id, status)."""
        return [
            (r.body["inquiryId"], r.body.get("userId"), r.status)
            for r in self.state.requests()
            if r.method == "POST" and r.path == TAKE and isinstance(r.body, dict)
        ]

    def decisions(self, rid: str) -> list[dict[str, Any]]:
        try:
            response = httpx.get(
                f"{self.processes.url}/decisions/{rid}", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=3
            )
        except httpx.TransportError as error:
            return [{"error": repr(error)}]
        return response.json().get("decisions", []) if response.status_code == 200 else []

    def verify(self, scenario: str) -> Row:
        """Every chat served exactly once, nobody over capacity: recorded in the module's table, then asserted."""
        served = self.referee.served()
        ok_takes = Counter(inquiry for inquiry, _, status in self.takes() if status == 200)
        lost = [rid for rid in self.rooms if rid not in served]
        double = [rid for rid, inquiry in self.rooms.items() if self.referee.routings(rid) > 1 or ok_takes[inquiry] > 1]
        over = list(self.referee.violations)
        row = Row(
            scenario,
            len(self.faults),
            len(self.rooms),
            len(self.rooms) - len(lost),
            len(lost),
            len(double),
            len(over),
            time.monotonic() - self.started,
        )
        self.ledger.append(row)
        loads = " ".join(f"{name} {self.referee.max_open.get(name, 0)}/{cap}" for name, cap in CAPACITY.items())
        print(
            f"\n{scenario}: {row.chats} chats, {row.routed} served, {row.lost} lost, {row.double} routed twice, "
            f"max load {loads}, faults: {'; '.join(self.faults)}, {row.seconds:.1f} s"
        )
        details = {rid: self.decisions(rid) for rid in lost + double}
        assert not lost, f"chats never served: {lost}\ndecisions: {details}\n{self.processes.output()}"
        assert not double, f"chats routed more than once: {double}\ndecisions: {details}\n{self.processes.output()}"
        assert not over, f"agents over capacity: {over}\n{self.processes.output()}"
        assert set(self.referee.max_open) <= set(CAPACITY), f"an ineligible agent was given a chat: {loads}"
        return row


@pytest.fixture(scope="module")
def ledger() -> Iterator[list[Row]]:
    rows: list[Row] = []
    yield rows
    header = f"{'scenario':<44} {'faults':>6} {'chats':>5} {'routed':>6} {'lost':>4} {'twice':>5} {'over':>4} {'s':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.scenario:<44} {r.faults:>6} {r.chats:>5} {r.routed:>6} {r.lost:>4} {r.double:>5} {r.over:>4} "
            f"{r.seconds:>6.1f}"
        )
    total = Row(
        "total",
        *(
            sum(getattr(r, name) for r in rows)
            for name in ("faults", "chats", "routed", "lost", "double", "over", "seconds")
        ),
    )
    lines.append("-" * len(header))
    lines.append(
        f"{total.scenario:<44} {total.faults:>6} {total.chats:>5} {total.routed:>6} {total.lost:>4} "
        f"{total.double:>5} {total.over:>4} {total.seconds:>6.1f}"
    )
    report("\nfault injection summary (lost, twice and over must be 0)\n" + "\n".join(lines))


@pytest.fixture
def rig(
    request, rc_state, rc_server, service_account, redis_server, redis_url, redis_client, tmp_path: Path, ledger
) -> Iterator[Rig]:
    team = seed_team(rc_state)
    referee = Referee(rc_state)
    rc_state.listeners.append(referee)
    env = {
        "REDIS_URL": redis_url,
        "ROCKETCHAT_URL": rc_server.url,
        "ROCKETCHAT_USER_ID": service_account.user_id,
        "ROCKETCHAT_AUTH_TOKEN": service_account.token,
        "ROCKETCHAT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "BRIDGE_API_TOKEN": API_TOKEN,
        "TICK_SECONDS": "1",
        "INQUIRY_RECONCILE_SECONDS": "2",
        "DIRECTORY_TTL_SECONDS": "1",
        "LOAD_RECONCILE_SECONDS": "10",
        "ROCKETCHAT_TIMEOUT_SECONDS": "1",
        "ROCKETCHAT_RETRIES": "1",
        "SPOOL_DIR": str(tmp_path / "spool"),  # shared by every web process of the test
        "LOG_LEVEL": "INFO",
        **getattr(request, "param", {}),  # a test's own settings (indirect parametrization)
    }
    processes = BridgeProcesses(env, tmp_path, workers=2)
    rig = Rig(rc_state, team, referee, processes, redis_server, redis_client, ledger)
    try:
        processes.start()
        rig.attach_poster()
        rig.started = time.monotonic()
        yield rig
    finally:
        rc_state.clear_faults()
        for poster in rig.posters:
            poster.close(timeout=5, flush=False)
        if redis_server.process is None:
            redis_server.start()
        crashed = processes.crashed()
        statuses = processes.stop()
        rc_state.listeners.remove(referee)
    assert not crashed, f"bridge processes died during the test: {crashed}\n{processes.output()}"
    # Workers finish their job and exit 0; uvicorn shuts down gracefully, then re-raises SIGTERM.
    unclean = {
        name: code
        for name, code in statuses.items()
        if name not in processes.killed and code not in ((0, -signal.SIGTERM) if name.startswith("web") else (0,))
    }
    assert not unclean, f"processes did not stop cleanly: {unclean}\n{processes.output()}"


def delivered_queued(poster: WebhookPoster, rooms: list[str]) -> dict[str, str]:
    """The outcome of each room's ``LivechatSessionQueued`` webhook."""
    return {o.rid: o.outcome for o in poster.outcomes() if o.event_type == QUEUED and o.rid in rooms}


# -- the scenarios ------------------------------------------------------------------------------------------------


def test_rocketchat_answers_503_for_a_minute_then_recovers(rig: Rig):
    outage = 60.0
    rig.fault(f"503 on {LIVECHAT} for {outage:.0f} s", lambda: rig.state.inject(LIVECHAT, 503, seconds=outage))
    rig.fault(f"503 on {OMNICHANNEL} for {outage:.0f} s", lambda: rig.state.inject(OMNICHANNEL, 503, seconds=outage))
    rooms = rig.open_chats(MIXED * 5, gap=0.5)
    assert rig.poster.drain(15)
    assert set(delivered_queued(rig.poster, rooms).values()) == {"delivered"}, "the web process must answer 200"
    rig.serve_all(rooms, timeout=outage + 45, close_after=1.0)
    refused = sum(1 for r in rig.state.requests() if r.status == 503 and r.path.startswith((LIVECHAT, OMNICHANNEL)))
    assert refused > 0, "the bridge never met the outage"
    rig.verify("1 Rocket.Chat 503 for 60 s")


def test_rocketchat_slower_than_the_client_timeout_takes_once(rig: Rig):
    # Client timeout 1 s: every take times out on our side, and Rocket.Chat applies it 2 s after it arrived.
    rig.fault("inquiries.take answered after 2 s for 10 s", lambda: rig.state.inject(TAKE, None, seconds=10, delay=2.0))
    rooms = rig.open_chats(MIXED * 6, gap=0.3)  # 12 chats for 8 slots: agents are full while takes time out
    rig.serve_all(rooms, timeout=45, close_after=3.0)
    late = [t for t in rig.takes() if t[2] == 400]
    print(f"\ntakes: {len(rig.takes())}, answered error-inquiry-taken (or other 400): {len(late)}")
    rig.verify("2 take slower than client timeout")


@pytest.mark.parametrize("rig", [{"LOAD_RECONCILE_SECONDS": "300"}], ids=["default-load-reconcile"], indirect=True)
def test_a_take_that_timed_out_but_succeeded_keeps_counting(rig: Rig):
    rig.state.set_presence("bo", statusLivechat="not-available")  # sales chats can go to ana only (capacity 2)
    time.sleep(1.5)  # the cached agent list (DIRECTORY_TTL_SECONDS=1) catches up
    # First attempt: applied by Rocket.Chat after 1.5 s (the bridge gave up at 1 s); the retry waits 3 s and
    # times out too, so the bridge gives up after the taken webhook (sent at 1.5 s) was applied.
    rig.fault("take: 2nd attempt answered after 3 s", lambda: rig.state.inject(TAKE, None, seconds=6, delay=3.0))
    rig.fault("take: 1st attempt applied after 1.5 s", lambda: rig.state.inject(TAKE, None, count=1, delay=1.5))
    first = rig.open_chats([SALES], gap=0)
    rig.serve_all(first, timeout=15, close_after=None)
    wait_for(lambda: any(d.get("outcome") == "served" for d in rig.decisions(first[0])), timeout=20, interval=0.2)
    rig.state.clear_faults()
    more = rig.open_chats([SALES, SALES], gap=0.2)  # ana has one chat: room for exactly one more
    rig.serve_all(more, timeout=4, close_after=None)  # ana keeps her chats a little longer
    rig.serve_all(first + more, timeout=20, close_after=1.0)
    rig.verify("2b take timed out but succeeded")


def test_a_worker_killed_mid_job_delays_but_loses_nothing(rig: Rig, redis_client):
    # The take in flight when the worker dies never reaches Rocket.Chat's routing (a proxy answers 503 after
    # 0.8 s, under the 1 s client timeout): the dead worker leaves a reservation, a routing claim and a started job.
    slow = rig.state.inject(TAKE, 503, count=1, delay=0.8)
    rig.faults.append("inquiries.take: 503 after 0.8 s, once")
    first = rig.open_chats([SALES], gap=0)

    def busy_worker() -> str | None:
        if slow.remaining:
            return None  # the take has not reached Rocket.Chat yet
        for worker in Worker.all(connection=redis_client):
            if worker.get_current_job_id():
                return next(n for n in rig.processes.processes if rig.processes.worker_name(n) == worker.name)
        return None

    victim = wait_for(busy_worker, timeout=15, interval=0.01)
    assert isinstance(victim, str)
    rig.fault(f"SIGKILL {victim} while its take is in flight", lambda: rig.processes.kill(victim))
    rig.fault("replacement worker started", rig.processes.add_worker)
    rooms = first + rig.open_chats(MIXED * 5, gap=0.3)
    rig.serve_all(rooms, timeout=75, close_after=1.0)
    print(f"\n{first[0]} (whose take was cut) served {rig.referee.served().get(first[0], 0) - rig.started:.1f} s in")
    rig.verify(f"3 SIGKILL {victim} mid-take")


def test_a_worker_lost_with_its_scheduler_keeps_the_tick(rig: Rig, redis_client):
    def scheduler_host() -> str | None:
        return next((n for n in rig.processes.processes if n.startswith("worker-") and rig.processes.children(n)), None)

    def listed() -> int:  # recover_queued's calls: one every INQUIRY_RECONCILE_SECONDS while the tick runs
        return sum(1 for r in rig.state.requests() if r.path == INQUIRIES_LIST)

    host = wait_for(scheduler_host, timeout=10, interval=0.1)
    assert isinstance(host, str)
    wait_for(lambda: listed() >= 2, timeout=15, interval=0.1)  # the tick chain runs
    rig.fault(f"SIGKILL {host} and its scheduler", lambda: rig.processes.kill(host, children=True))
    killed_at = listed()
    replacement = rig.fault("replacement worker started", rig.processes.add_worker)
    wait_for(
        lambda: rig.processes.worker_name(replacement) in {w.name for w in Worker.all(connection=redis_client)},
        timeout=15,
        interval=0.1,
    )
    heard = rig.open_chats([SALES], gap=0)
    rig.serve_all(heard, timeout=10, close_after=None)  # the webhook path still works
    rig.fault("webhooks lost (poster detached)", rig.poster.detach)
    unheard = rig.open_chats([SUPPORT], gap=0)  # only the tick's recover_queued can find it
    rig.serve_all(unheard, timeout=15, close_after=None)
    print(f"\nrecover_queued runs (inquiries.list) after the kill: {listed() - killed_at}")
    rig.verify(f"3b {host} lost with its scheduler")


def test_redis_restarted_under_load(rig: Rig):
    def restart() -> None:
        rig.redis_server.stop()
        time.sleep(1.5)
        rig.redis_server.start()

    full = rig.open_chats(MIXED * 4, gap=0.1)  # 8 chats for 8 slots, kept open: every agent is full
    rig.serve_all(full, timeout=20, close_after=None)
    # Four more: the first two wait in the routing queue when Redis (and everything in it) goes away, the other
    # two arrive after the restart while every agent is still full.
    during = {2: lambda: rig.fault("Redis restarted (wiped), 1.5 s down", restart)}
    more = rig.open_chats(MIXED * 2, gap=0.3, during=during)
    rig.serve_all(more, timeout=4, close_after=None)  # agents keep their chats a little longer: nobody has room
    rig.serve_all(full + more, timeout=25, close_after=1.0)
    rig.verify("4a Redis restarted under load")


def test_redis_down_longer_than_rocketchats_retry_window(rig: Rig, tmp_path: Path):
    # Rocket.Chat's real retry shape, scaled down: 5 attempts, 1 s timeout, 1 s apart (a ~5 s window).
    poster = rig.attach_poster(timeout=1.0, retry_delay=1.0, attempts=5)
    before = rig.open_chats(MIXED, gap=0.2)
    rig.serve_all(before, timeout=15, close_after=None)
    rig.fault("Redis down 8 s (wiped)", rig.redis_server.stop)
    down_at = time.monotonic()
    during = rig.open_chats(MIXED * 3, gap=0.5)
    wait_for(lambda: poster.drain(0) or time.monotonic() - down_at > 7.5, timeout=10)
    outcomes = delivered_queued(poster, during)
    first_try = {a.rid for a in poster.deliveries() if a.event_type == QUEUED and a.attempt == 1 and a.status == 200}
    time.sleep(max(0.0, 8.0 - (time.monotonic() - down_at)))
    rig.redis_server.start()
    assert outcomes == {rid: "delivered" for rid in during}, (
        f"webhooks not answered 200 while Redis was down: {outcomes}"
    )
    assert first_try >= set(during), "the web process must answer 200 at once, from the spool"
    with rig.state.lock:
        spooled = [rid for rid in during if '"spooled":true' in rig.state.rooms[rid].get("crmData", "")]
    assert spooled == during, "crmData should say the event was spooled"
    rig.serve_all(before + during, timeout=20, close_after=1.0)
    # The spool is replayed once a second: a webhook spooled in the last moment of the outage may still be there.
    spooled = lambda: sorted(path.name for path in (tmp_path / "spool").glob("*.jsonl"))  # noqa: E731
    try:
        wait_for(lambda: not spooled(), timeout=5, interval=0.1)
    except AssertionError:
        pass  # asserted below, with the names
    left = spooled()
    print(f"\nspool files never replayed: {left}")
    rig.verify("4b Redis down 8 s > webhook retry window")
    assert not left, f"spool files never replayed: {left}"


def test_web_process_restarted_under_load(rig: Rig):
    restarted: list[str] = []

    def restart() -> None:
        restarted.append(rig.processes.restart_web())

    thread = threading.Thread(target=lambda: rig.fault("web restarted (SIGTERM, same port)", restart))
    rooms = rig.open_chats(MIXED * 5, gap=0.3, during={3: thread.start})
    thread.join(30)
    assert restarted, "the new web process did not start"
    rig.serve_all(rooms, timeout=30, close_after=1.0)
    assert rig.poster.drain(10)
    outcomes = delivered_queued(rig.poster, rooms)
    assert set(outcomes.values()) == {"delivered"}, f"webhooks the bridge never answered 200: {outcomes}"
    retried = {a.rid for a in rig.poster.deliveries() if a.attempt > 1}
    print(f"\nwebhooks delivered only after a retry (web down): {len(retried)}")
    rig.verify("5 web restarted under load")


def test_lost_webhooks_are_recovered_by_the_reconciler(rig: Rig):
    rig.fault("webhooks lost (poster detached)", rig.poster.detach)
    unheard = rig.open_chats(MIXED * 2, gap=0.1)
    rig.serve_all(unheard, timeout=20, close_after=None)  # closes would be lost too: keep them open
    listed = sum(1 for r in rig.state.requests() if r.path == INQUIRIES_LIST)
    rig.attach_poster()
    for rid in unheard:
        if rig.is_open(rid):
            rig.state.close_room(rid)
    heard = rig.open_chats(MIXED * 3, gap=0.2)
    rig.serve_all(heard, timeout=20, close_after=1.0)
    print(f"\ninquiries.list calls while the webhooks were lost: {listed}")
    rig.verify("6 webhooks lost, reconciler only")
