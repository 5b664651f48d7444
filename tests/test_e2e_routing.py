"""Routing end to end with real processes: ``omnibridge web`` and two ``omnibridge worker`` subprocesses, the
session's Redis, and the Rocket.Chat double, whose webhooks (queued, taken, forwarded, closed) reach the web
process the way Rocket.Chat's ``sendRequest`` posts them.

The double's own state is the referee: who serves each room (``servedBy``), how many open chats each agent has
when a room is taken (a listener on the double), and the request log of what the bridge asked.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from bridge.directory import AgentDirectory
from bridge.load import LoadBook
from bridge.rocketchat import RocketChat
from bridge.sandbox.state import FORWARDED, TAKEN, SandboxState
from bridge.sandbox.webhooks import WebhookPoster
from bridge.settings import Settings
from bridge.waiting import WaitingQueue
from tests.conftest import WEBHOOK_TOKEN
from tests.processes import BridgeProcesses
from tests.support import wait_for
from tests.team import SALES, SUPPORT, seed_team

API_TOKEN = "e2e-api-token-7c41"
QUEUE_TOKEN = "e2e-external-queue-token-52d"
TAKE = "/api/v1/livechat/inquiries.take"
GET_ONE = "/api/v1/livechat/inquiries.getOne"
AVAILABLE = "/api/v1/omnichannel/agents/available"
TICK_SECONDS = 1
DIRECTORY_TTL_SECONDS = 1
# Capacity of the agents able to work (tests/team.py); fay has no maximum, so DEFAULT_MAX_CHATS (3) holds.
CAPACITY = {"ana": 2, "bo": 3, "fay": 3}
SERVES = {SALES: {"ana", "bo"}, SUPPORT: {"bo", "fay"}}
NEVER = {"cy", "dee", "eve"}  # away, offline, not available for livechat


class Watch:
    """A listener on the double: every take and forward, and each agent's open chats at that moment."""

    def __init__(self, state: SandboxState, names: dict[str, str]) -> None:
        self.state = state
        self.names = names  # agent id -> username
        self.lock = threading.Lock()
        self.taken: dict[str, list[str]] = defaultdict(list)  # room id -> usernames, one per take
        self.taken_at: dict[str, float] = {}
        self.forwarded: list[str] = []
        self.max_open: dict[str, int] = defaultdict(int)

    def __call__(self, event_type: str, room: dict[str, Any]) -> None:
        if event_type not in (TAKEN, FORWARDED):
            return
        agent_id = room["servedBy"]["_id"]
        open_now = len(self.state.open_chats_of(agent_id))
        name = self.names.get(agent_id, agent_id)
        with self.lock:
            if event_type == TAKEN:
                self.taken[room["_id"]].append(name)
                self.taken_at.setdefault(room["_id"], time.monotonic())
            else:
                self.forwarded.append(room["_id"])
            self.max_open[name] = max(self.max_open[name], open_now)

    def served_by(self, rid: str) -> str | None:
        with self.lock:
            names = self.taken.get(rid)
            return names[0] if names else None

    def served_rooms(self) -> dict[str, float]:
        with self.lock:
            return dict(self.taken_at)


@dataclass
class Bridge:
    url: str
    state: SandboxState
    team: dict[str, str]  # username -> id
    watch: Watch
    poster: WebhookPoster
    env: dict[str, str]
    names: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.names = {agent_id: name for name, agent_id in self.team.items()}

    def open_chat(self, department: str) -> tuple[str, str]:
        room, inquiry = self.state.open_chat(department=department)
        return room["_id"], inquiry["_id"]

    def room(self, rid: str) -> dict[str, Any]:
        with self.state.lock:
            return dict(self.state.rooms[rid])

    def is_open(self, rid: str) -> bool:
        return bool(self.room(rid).get("open"))

    def decisions(self, rid: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/decisions/{rid}", headers={"Authorization": f"Bearer {API_TOKEN}"})
        if response.status_code == 404:
            return []
        assert response.status_code == 200, response.text
        return response.json()["decisions"]

    def takes(self) -> list[tuple[str, str, int]]:
        """Every ``inquiries.take`` the bridge made: (inquiry id, agent username, status)."""
        return [
            (r.body["inquiryId"], self.names.get(r.body.get("userId"), r.body.get("userId")), r.status)
            for r in self.state.requests()
            if r.method == "POST" and r.path == TAKE
        ]


@pytest.fixture
def bridge(rc_state, rc_server, service_account, redis_url, redis_client, tmp_path) -> Iterator[Bridge]:
    team = seed_team(rc_state)
    watch = Watch(rc_state, {agent_id: name for name, agent_id in team.items()})
    rc_state.listeners.append(watch)
    env = {
        "REDIS_URL": redis_url,
        "ROCKETCHAT_URL": rc_server.url,
        "ROCKETCHAT_USER_ID": service_account.user_id,
        "ROCKETCHAT_AUTH_TOKEN": service_account.token,
        "ROCKETCHAT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "BRIDGE_API_TOKEN": API_TOKEN,
        "ROCKETCHAT_EXTERNAL_QUEUE_TOKEN": QUEUE_TOKEN,
        "TICK_SECONDS": str(TICK_SECONDS),
        "DIRECTORY_TTL_SECONDS": str(DIRECTORY_TTL_SECONDS),
        "LOAD_RECONCILE_SECONDS": "10",  # the first tick checks the load while the first chats are routed
        "LOG_LEVEL": "WARNING",
    }
    processes = BridgeProcesses(env, tmp_path, workers=2)
    poster: WebhookPoster | None = None
    try:
        processes.start()
        poster = WebhookPoster(
            rc_state, f"{processes.url}/webhooks/livechat", WEBHOOK_TOKEN, timeout=5.0, retry_delay=0.5
        ).attach()
        yield Bridge(processes.url, rc_state, team, watch, poster, env)
        assert poster.drain(10), "webhooks still pending at the end of the test"
        refused = [o for o in poster.outcomes() if o.outcome != "delivered"]
        assert not refused, f"webhooks the bridge did not answer 200: {refused}"
    finally:
        if poster is not None:
            poster.close(timeout=5)
        crashed = processes.exited()
        statuses = processes.stop()
        rc_state.listeners.remove(watch)
    assert not crashed, f"bridge processes died during the test: {crashed}\n{processes.output()}"
    # Workers finish their job and exit 0; uvicorn (0.29 on) shuts down gracefully, then re-raises SIGTERM.
    web = statuses.pop("web")
    assert statuses == {"worker-1": 0, "worker-2": 0} and web in (0, -signal.SIGTERM), processes.output()


def wait_served(bridge: Bridge, rids: list[str], timeout: float = 15.0) -> None:
    wait_for(lambda: all(bridge.watch.served_by(rid) for rid in rids), timeout=timeout)


def summary(test: str, chats: int, served: int, watch: Watch, started: float) -> None:
    loads = " ".join(f"{name} {watch.max_open.get(name, 0)}/{cap}" for name, cap in CAPACITY.items())
    print(f"\n{test}: {chats} chats, {served} served, max load {loads}, {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_dozens_of_chats_are_served_once_within_capacity_presence_and_department(bridge, redis_client):
    started = time.monotonic()
    rng = random.Random(30)
    departments = [SALES] * 15 + [SUPPORT] * 15
    rng.shuffle(departments)
    chats: dict[str, tuple[str, str]] = {}  # room id -> (department, inquiry id)
    hold: dict[str, float] = {}  # room id -> how long its agent keeps it open once served
    next_open = time.monotonic()
    deadline = time.monotonic() + 40
    while departments or any(bridge.is_open(rid) for rid in chats):
        served = sum(1 for rid in chats if bridge.watch.served_by(rid))
        assert time.monotonic() < deadline, f"not all chats served and closed: {served}/{len(chats)} served"
        now = time.monotonic()
        if departments and now >= next_open:
            department = departments.pop()
            rid, inquiry_id = bridge.open_chat(department)
            chats[rid] = (department, inquiry_id)
            hold[rid] = rng.uniform(0.3, 0.9)
            next_open = now + 0.05
        for rid, served_at in bridge.watch.served_rooms().items():
            if now - served_at >= hold[rid] and bridge.is_open(rid):
                bridge.state.close_room(rid)
        time.sleep(0.01)

    taken = {rid: list(bridge.watch.taken[rid]) for rid in chats}
    assert all(len(names) == 1 for names in taken.values()), f"rooms taken more than once or never: {taken}"
    assert bridge.watch.forwarded == []
    for rid, (department, _) in chats.items():
        assert bridge.room(rid)["servedBy"]["username"] == taken[rid][0]
        assert taken[rid][0] in SERVES[department], f"{department} chat {rid} went to {taken[rid][0]}"
    takes = bridge.takes()
    assert Counter(inquiry for inquiry, _, status in takes if status == 200) == {
        inquiry_id: 1 for _, inquiry_id in chats.values()
    }
    assert not {name for _, name, _ in takes} & NEVER, "an away, offline or not-available agent was tried"
    assert set(bridge.watch.max_open) <= set(CAPACITY)
    for name, most in bridge.watch.max_open.items():
        assert most <= CAPACITY[name], f"{name} had {most} open chats, capacity {CAPACITY[name]}"
    # Every close reached the bridge: its load book is empty again and nothing waits.
    load, waiting = LoadBook(redis_client), WaitingQueue(redis_client)
    wait_for(lambda: load.counts() == {} and waiting.count() == 0, timeout=10)
    waited = [rid for rid in chats if any(d["outcome"] == "waiting" for d in bridge.decisions(rid))]
    assert waited, "no chat ever waited: the test did not fill the agents"
    summary(f"30 chats ({len(waited)} waited)", len(chats), len(taken), bridge.watch, started)


@pytest.mark.slow
def test_chats_wait_while_everyone_is_full_and_are_served_when_a_chat_closes(bridge):
    started = time.monotonic()
    sales = [bridge.open_chat(SALES)[0] for _ in range(5)]  # exactly ana's 2 + bo's 3
    wait_served(bridge, sales)
    support = [bridge.open_chat(SUPPORT)[0] for _ in range(3)]  # only fay has room left: her 3
    wait_served(bridge, support)
    assert Counter(bridge.watch.served_by(rid) for rid in sales) == {"ana": 2, "bo": 3}
    assert {bridge.watch.served_by(rid) for rid in support} == {"fay"}

    waiting_sales, _ = bridge.open_chat(SALES)
    waiting_support, _ = bridge.open_chat(SUPPORT)

    def last_outcome(rid: str) -> str | None:
        found = bridge.decisions(rid)
        return found[-1]["outcome"] if found else None

    wait_for(lambda: last_outcome(waiting_sales) == last_outcome(waiting_support) == "waiting", timeout=10)
    time.sleep(2.5 * TICK_SECONDS)  # two ticks pass: still nobody can take them
    for rid in (waiting_sales, waiting_support):
        assert "servedBy" not in bridge.room(rid)
        assert last_outcome(rid) == "waiting"
    reasons = {c["username"]: c["excluded"] for c in bridge.decisions(waiting_sales)[-1]["candidates"]}
    assert reasons["ana"] == "at capacity (2/2)" and reasons["bo"] == "at capacity (3/3)"

    # fay serves only support: her free slot goes to the waiting support chat, the sales chat keeps waiting.
    bridge.state.close_room(next(rid for rid in support if bridge.watch.served_by(rid) == "fay"))
    wait_served(bridge, [waiting_support], timeout=10)
    assert bridge.watch.served_by(waiting_support) == "fay"
    assert "servedBy" not in bridge.room(waiting_sales)

    bridge.state.close_room(next(rid for rid in sales if bridge.watch.served_by(rid) == "ana"))
    wait_served(bridge, [waiting_sales], timeout=10)
    assert bridge.watch.served_by(waiting_sales) == "ana"
    outcomes = [d["outcome"] for d in bridge.decisions(waiting_sales)]
    assert outcomes[0] == "waiting" and outcomes[-1] == "routed"
    for name, most in bridge.watch.max_open.items():
        assert most <= CAPACITY[name], f"{name} had {most} open chats, capacity {CAPACITY[name]}"
    summary("full then freed", 10, len(bridge.watch.taken), bridge.watch, started)


@pytest.mark.slow
def test_request_log_shows_get_one_then_take_and_a_cached_agent_list(bridge):
    started = time.monotonic()
    time.sleep(DIRECTORY_TTL_SECONDS)  # the list the first tick cached expires
    window_start = time.monotonic()
    rid, inquiry_id = bridge.open_chat(SALES)
    wait_served(bridge, [rid])
    entries = bridge.state.requests()
    lines = [
        (entry.line, index)
        for index, entry in enumerate(entries)
        if (entry.path == GET_ONE and entry.query.get("roomId") == rid)
        or (entry.path == TAKE and (entry.body or {}).get("inquiryId") == inquiry_id)
    ]
    found = [line for line, _ in lines]
    if found == [f"POST {TAKE} > 200"]:
        # The reconciler's tick listed the queued inquiry (with its id) before the webhook's job ran: no getOne.
        assert any(e.path == "/api/v1/livechat/inquiries.list" for e in entries[: lines[0][1]])
    else:
        assert found == [f"GET {GET_ONE} > 200", f"POST {TAKE} > 200"]
    take = entries[lines[-1][1]]
    assert take.body == {"inquiryId": inquiry_id, "userId": bridge.team[bridge.watch.served_by(rid) or ""]}

    # Seven more fill every slot (8 in all): sales first (ana and bo), then support (only fay has room left).
    # The agent list is cached for DIRECTORY_TTL_SECONDS, refreshed by one process at a time (single-flight)
    # and at the earliest at 75 % of the TTL: within T seconds at most floor(T / 0.75) + 1 fetches, however
    # many chats are routed.
    more = [bridge.open_chat(SALES)[0] for _ in range(4)]
    wait_served(bridge, more)
    more += [bridge.open_chat(SUPPORT)[0] for _ in range(3)]
    wait_served(bridge, more)
    window = time.monotonic() - window_start
    fetches = sum(
        1
        for entry in bridge.state.requests()
        if entry.path == AVAILABLE and window_start <= entry.at <= window_start + window
    )
    bound = math.floor(window / (0.75 * DIRECTORY_TTL_SECONDS)) + 1
    print(f"\nagents/available: {fetches} call(s) for 8 chats in {window:.2f} s (bound {bound})")
    assert fetches <= bound
    assert fetches < 8, "the agent list was fetched once per chat"
    summary("request log", 8, len(bridge.watch.taken), bridge.watch, started)


@pytest.mark.slow
def test_an_agent_gone_offline_before_the_directory_knows_is_skipped(bridge, redis_client):
    started = time.monotonic()
    settings = Settings.from_env(bridge.env)
    rc = RocketChat(settings)
    try:
        # Freshly cached, the list says ana is online; for the next 0.75 * TTL nobody refetches it.
        listing = AgentDirectory(settings, redis_client, lambda: rc).agents()
    finally:
        rc.close()
    assert {a.username: a.status for a in listing.agents}["ana"] == "online"
    bridge.state.set_presence("ana", status="offline")
    # ana and bo are both free and never assigned: least loaded ranks ana first (ties go by username).
    rid, inquiry_id = bridge.open_chat(SALES)
    wait_served(bridge, [rid], timeout=10)
    assert bridge.watch.served_by(rid) == "bo"
    assert [(name, status) for inquiry, name, status in bridge.takes() if inquiry == inquiry_id] == [
        ("ana", 400),
        ("bo", 200),
    ]
    decision = bridge.decisions(rid)[-1]
    assert decision["outcome"] == "routed" and decision["agent_username"] == "bo"
    assert decision["attempts"] == [
        {"agent_id": bridge.team["ana"], "result": "offline"},
        {"agent_id": bridge.team["bo"], "result": "taken"},
    ]

    # Later chats go to bo too, whether the directory has caught up (ana excluded as offline) or not yet.
    later = [bridge.open_chat(SALES)[0] for _ in range(2)]
    wait_served(bridge, later, timeout=10)
    assert {bridge.watch.served_by(r) for r in later} == {"bo"}
    assert all(name != "ana" for names in bridge.watch.taken.values() for name in names)
    assert all(status != 200 for _, name, status in bridge.takes() if name == "ana")
    assert bridge.watch.max_open["bo"] <= CAPACITY["bo"]
    summary("agent offline", 3, len(bridge.watch.taken), bridge.watch, started)


@pytest.mark.slow
def test_external_service_and_voice_through_the_real_processes(bridge, redis_client):
    """Rocket.Chat's 10 parallel External Service calls count once; a voice extension moves to a free agent."""
    started = time.monotonic()
    headers = {"X-RocketChat-Secret-Token": QUEUE_TOKEN}
    # The first ask finds no cached directory: it answers {} and asks a worker to refresh it.
    wait_for(
        lambda: httpx.get(f"{bridge.url}/external-queue", params={"departmentId": SUPPORT}, headers=headers).json(),
        timeout=15,
        interval=0.2,
    )
    redis_client.delete(*redis_client.keys("ob:external:*"), *redis_client.keys("ob:pending:*"))

    def ask() -> dict[str, Any]:
        return httpx.get(f"{bridge.url}/external-queue", params={"departmentId": SALES}, headers=headers).json()

    threads, answers = [], []
    for _ in range(10):
        threads.append(threading.Thread(target=lambda: answers.append(ask())))
        threads[-1].start()
    for thread in threads:
        thread.join()
    assert len({(a["_id"], a["username"]) for a in answers}) == 1
    chosen = answers[0]["username"]
    assert chosen in SERVES[SALES]
    assert LoadBook(redis_client).counts() == {bridge.team[chosen]: 1}, "ten requests, one reservation"

    bridge.state.add_agent("ivy", status="offline", extension="3005", departments=[SUPPORT])
    response = httpx.post(
        f"{bridge.url}/voice/route",
        json={"extension": "3005", "departmentId": SUPPORT, "requestId": "call-42"},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert response.status_code == 202
    wait_for(lambda: bridge.decisions("voice/call-42"), timeout=15)
    decision = bridge.decisions("voice/call-42")[-1]
    assert (decision["outcome"], decision["previous_holder"]) == ("assigned", "ivy")
    assert decision["agent_username"] in SERVES[SUPPORT]
    with bridge.state.lock:
        holders = [u["username"] for u in bridge.state.users.values() if u.get("extension") == "3005"]
    assert holders == [decision["agent_username"]]
    print(
        f"\nexternal + voice: {chosen} answered 10 times, extension to {holders[0]}, {time.monotonic() - started:.1f} s"
    )
