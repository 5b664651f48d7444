"""Floods (issue 12): every bound on Redis state answers as documented, and no chat waits behind other traffic.

The bounds, reached on purpose over real HTTP against a real Redis: a lane of the event log at its bound answers
503 and records nothing for the refused event (so Rocket.Chat's retry is accepted, not answered "duplicate"); the
routing lane has a bound of its own, so a flood of messages never refuses a queued chat; the routing queue at
``WAITING_MAX_CHATS`` refuses a chat loudly, and the reconciler adds it from Rocket.Chat once there is room.

The flood, end to end (``pytest.mark.slow``): the web process and two workers as real processes, the Rocket.Chat
double over HTTP, 100,000 distinct agent-message webhooks posted on loopback by a process of their own
(``bench.loopback``, so that the double in this process answers the routing's calls at its usual pace) while the
workers are paused long enough for the other lane to reach its bound, then chats opened in the double while that
lane is full and later in the flood. Each chat is routed within 2 s of its queued webhook being answered (the
issue's figure), Redis memory stays within the bounds' budget, and every event the flood posted is applied once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio

from bench.flood import Bodies
from bench.loopback import FloodProcess
from bridge.app import create_app
from bridge.eventlog import EventLog
from bridge.events import parse_event
from bridge.intake import Intake
from bridge.metrics import Metrics
from bridge.reconcile import recover_queued
from bridge.sandbox.state import QUEUED
from bridge.spool import Spool
from bridge.waiting import WaitingChat
from tests.conftest import WEBHOOK_TOKEN
from tests.rig import Rig, bridge_rig
from tests.support import ServerThread, load_fixture, report, wait_for
from tests.team import SALES, SUPPORT, seed_team
from workers import context
from workers.jobs import apply_log
from workers.worker import build_worker

HEADERS = {"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
AGENT_MESSAGE = load_fixture("Message__from_agent")


def message_body(n: int) -> dict:
    """A distinct agent message: room ``flood-<n>``, message ``flood-msg-<n>`` (ids in Rocket.Chat's alphabet)."""
    room = f"flood-{n:08d}"
    message = {**AGENT_MESSAGE["messages"][0], "_id": f"flood-msg-{n:08d}", "rid": room}
    return {**AGENT_MESSAGE, "_id": room, "messages": [message]}


def queued_body(room: str, department: str = SALES) -> dict:
    return {**load_fixture("LivechatSessionQueued__basic"), "_id": room, "departmentId": department}


def post(server: ServerThread, payload: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/webhooks/livechat", json=payload, headers=HEADERS, timeout=10)


def counted(redis_client, type_: str, status: str) -> float:
    totals = Metrics(redis_client).totals()
    return totals.get(("omnibridge_webhooks", (("status", status), ("type", type_))), 0.0)


# -- the event log's bounds, over HTTP ---------------------------------------------------------------------------


@pytest.fixture
def bounded(settings):
    """Three lines per lane; agent messages leave a mark when applied (the no-answer clock is on), so applying
    them can be observed."""
    return settings.replace(event_log_routing_max_lines=3, event_log_other_max_lines=3, no_answer_seconds=3600)


def test_past_its_lanes_bound_a_webhook_is_answered_503_and_its_retry_is_accepted_once_there_is_room(
    bounded, redis_client
):
    with ServerThread(create_app(bounded)) as bridge:
        answers = [post(bridge, message_body(n)) for n in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 503]
        assert [a.json()["outcome"] for a in answers[:3]] == ["accepted"] * 3
        refused = answers[3].json()
        assert refused["ok"] is False and "other lane" in refused["error"] and "retry later" in refused["error"]
        event = parse_event(message_body(3))
        assert redis_client.exists(f"ob:seen:{event.identity}") == 0, "nothing recorded for the refused event"
        assert len(redis_client.keys("ob:seen:*")) == 3
        assert redis_client.llen("ob:events:other") == 3
        assert post(bridge, message_body(3)).status_code == 503, "Rocket.Chat's retry, still no room"
        assert post(bridge, message_body(0)).json()["outcome"] == "duplicate", "a redelivery is still a duplicate"

        context.install(bounded, redis_client)
        assert build_worker(bounded, redis_client).work(burst=True)  # the worker applies the lane: room again
        retried = post(bridge, message_body(3))
        assert retried.status_code == 200 and retried.json()["outcome"] == "accepted", retried.json()
        assert build_worker(bounded, redis_client).work(burst=True)
        wait_for(lambda: counted(redis_client, "Message", "503") == 2, timeout=5)
    applied = sorted(key.decode() for key in redis_client.keys("ob:replied:*"))
    assert applied == [f"ob:replied:flood-{n:08d}" for n in range(4)], "every accepted event applied, once"
    assert redis_client.llen("ob:events:other") == 0


def test_a_flood_of_messages_at_its_bound_never_refuses_a_queued_chat(bounded, redis_client):
    with ServerThread(create_app(bounded)) as bridge:
        assert [post(bridge, message_body(n)).status_code for n in range(5)] == [200, 200, 200, 503, 503]
        answers = [post(bridge, queued_body(f"chat-{n}")) for n in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 503], "the routing lane's own bound, and only it"
    assert [json.loads(line)["room_id"] for line in redis_client.lrange("ob:events", 0, -1)] == [
        "chat-0",
        "chat-1",
        "chat-2",
    ]


def test_a_spooled_event_met_by_a_full_lane_stays_in_its_spool_file_until_there_is_room(bounded, redis_client):
    spool = Spool(bounded.spool_dir, bounded.spool_max_bytes)
    for n in range(5):  # accepted while Redis was unreachable
        spool.append(parse_event(message_body(n)).to_dict())
    spool.close()

    async def replay() -> int:
        client = redis.asyncio.Redis.from_url(bounded.redis_url)
        intake = Intake(EventLog(bounded, client), Spool(bounded.spool_dir, bounded.spool_max_bytes))
        try:
            return await intake.replay()
        finally:
            intake.spool.close()
            await client.aclose()

    assert asyncio.run(replay()) == 3, "three fit in the lane"
    assert len(list(Path(bounded.spool_dir).glob("*.jsonl"))) == 1, "the file stays: two of its events wait"
    context.install(bounded, redis_client)
    assert build_worker(bounded, redis_client).work(burst=True)
    assert asyncio.run(replay()) == 2, "the rest, once there is room (the first three are duplicates now)"
    assert list(Path(bounded.spool_dir).glob("*.jsonl")) == []
    assert build_worker(bounded, redis_client).work(burst=True)
    assert len(redis_client.keys("ob:replied:flood-*")) == 5


# -- the routing queue's bound ----------------------------------------------------------------------------------


def test_past_the_waiting_bound_a_chat_is_refused_loudly_and_the_reconciler_adds_it_once_there_is_room(
    rc_settings, rc_state, redis_client, caplog
):
    seed_team(rc_state)
    settings = rc_settings.replace(waiting_max_chats=3)
    ctx = context.install(settings, redis_client)
    for n in range(3):  # three chats Rocket.Chat does not have (a flood of made-up queued events)
        assert ctx.router.enqueue(parse_event(queued_body(f"made-up-{n}"))) == "added"
    room, _ = rc_state.open_chat(department=SALES)
    real = parse_event(queued_body(room["_id"]))
    with caplog.at_level(logging.ERROR, logger="bridge.router"):
        assert ctx.router.enqueue(real) == "full"
        assert ctx.router.enqueue(parse_event(queued_body("made-up-4"))) == "full"
    assert ctx.router.waiting.count() == 3 and ctx.router.waiting.get(room["_id"]) is None
    [line] = [r.getMessage() for r in caplog.records if "WAITING_MAX_CHATS=3" in r.getMessage()]
    assert "(1 refused)" in line, "logged at once, then at most once per 10 s"
    ctx.metrics.flush()
    assert Metrics(redis_client).totals()[("omnibridge_waiting_refused", ())] == 2

    assert ctx.router.enqueue(parse_event(queued_body("made-up-0"))) == "already waiting", "no bound on what waits"
    ctx.router.drain()  # Rocket.Chat has no inquiry for the made-up chats: they leave the queue
    assert ctx.router.waiting.count() == 0
    outcome = recover_queued(ctx.rocketchat(), ctx.router)
    assert "1 recovered; routed 1" in outcome, outcome
    assert rc_state.rooms[room["_id"]].get("servedBy"), "the real chat refused at the bound was routed"


def test_the_bound_counts_every_department(settings, redis_client):
    ctx = context.install(settings.replace(waiting_max_chats=2), redis_client)
    assert ctx.router.enqueue(parse_event(queued_body("a", SALES))) == "added"
    assert ctx.router.enqueue(parse_event(queued_body("b", SUPPORT))) == "added"
    assert ctx.router.enqueue(parse_event(queued_body("c", "other-department"))) == "full"
    ctx.router.waiting.remove("a")
    assert ctx.router.enqueue(parse_event(queued_body("c", "other-department"))) == "added"


def test_a_queued_event_applied_at_the_bound_is_refused_and_the_log_goes_on(settings, redis_client):
    ctx = context.install(settings.replace(waiting_max_chats=10), redis_client)
    for n in range(10):
        assert ctx.router.waiting.add(WaitingChat(room_id=f"w-{n}", department_id=SALES, queued_at=time.time()))
    redis_client.rpush("ob:events", *(json.dumps(parse_event(queued_body(r)).to_dict()) for r in ("late", "later")))
    assert apply_log(ctx, "job-1").startswith("2 event(s) applied")
    assert ctx.router.waiting.get("late") is None and ctx.router.waiting.count() == 10
    assert redis_client.llen("ob:events") == 0


# -- the flood, end to end ---------------------------------------------------------------------------------------

FLOOD = 100_000
LANE_BOUND = 10_000  # both lanes: small enough that pausing the workers reaches it within seconds
ROUTED_WITHIN = 2.0  # the figure: from the queued webhook's answer to inquiries.take
# Redis's cost per item, measured by `python -m bench.flood` (README, *Bounds*): a line of either lane with
# Rocket.Chat's 17-character ids is 170-245 bytes; a dedupe mark 133; an agent's reply mark (no-answer clock on) 121.
LINE_BYTES = 400  # a line with ids up to the 64 characters an id may have
MARK_BYTES = 140
REPLIED_BYTES = 130
SLACK_BYTES = 16 << 20  # RQ's jobs and results, clients' buffers, scripts, the routing state of a few chats


class RedisWatch(threading.Thread):
    """Samples ``used_memory`` and each lane's length every 50 ms: their peaks."""

    def __init__(self, rig: Rig) -> None:
        super().__init__(name="redis-watch", daemon=True)
        self.client = rig.redis_client
        self.stopping = threading.Event()
        self.peak_memory = 0
        self.peak_lines = {"ob:events": 0, "ob:events:other": 0}

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            pipe = self.client.pipeline(transaction=False)
            pipe.info("memory")
            pipe.llen("ob:events")
            pipe.llen("ob:events:other")
            memory, routing, other = pipe.execute()
            self.peak_memory = max(self.peak_memory, int(memory["used_memory"]))
            self.peak_lines["ob:events"] = max(self.peak_lines["ob:events"], routing)
            self.peak_lines["ob:events:other"] = max(self.peak_lines["ob:events:other"], other)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


@pytest.fixture
def rig(redis_server, redis_url, redis_client, tmp_path) -> Iterator[Rig]:
    env = {
        "EVENT_LOG_ROUTING_MAX_LINES": str(LANE_BOUND),
        "EVENT_LOG_OTHER_MAX_LINES": str(LANE_BOUND),
        "NO_ANSWER_SECONDS": "3600",  # an applied agent message leaves a mark: what was applied can be counted
        "LOG_LEVEL": "WARNING",  # a line per webhook would be 100,000 lines
    }
    with bridge_rig(redis_server, redis_url, redis_client, tmp_path, env=env, close_after=1.0) as started:
        yield started


def queued_answered_at(rig: Rig, rid: str) -> float | None:
    """Epoch seconds at which the web process answered the chat's queued webhook 200."""
    assert rig.poster is not None
    for attempt in rig.poster.deliveries():
        if attempt.rid == rid and attempt.event_type == QUEUED and attempt.status == 200:
            return attempt.at.timestamp()
    return None


def epoch_of(monotonic: float) -> float:
    return time.time() - (time.monotonic() - monotonic)


@pytest.mark.slow
def test_a_chat_opened_during_a_flood_of_100000_events_is_routed_within_2_s(rig: Rig):
    client = rig.redis_client
    # A chat routed first, as in any running deployment: the first routing also builds the load book, fetches the
    # agent directory and learns the routes' rate limits, a cold start the flood is not about.
    warm_up = rig.open_chat(SALES)
    assert rig.wait_served([warm_up], timeout=30), f"the warm-up chat was not routed\n{rig.output()}"
    wait_for(lambda: not rig.is_open(warm_up), timeout=30)  # closed by the agents (the rig's closer)
    baseline = int(client.info("memory")["used_memory"])
    watch = RedisWatch(rig)
    body = Bodies(duplicates=0.0, edits=0.0)  # agent messages of rooms flood-00000000, ...: all distinct
    assert json.loads(body(7)) == message_body(7)
    flood = FloodProcess(rig.processes.port, WEBHOOK_TOKEN, body, FLOOD, attempts=100, retry_delay=0.5)
    workers = [p.pid for name, p in rig.processes.processes.items() if name.startswith("worker-")]
    chats: list[str] = []
    try:
        watch.start()
        flood.start()
        wait_for(lambda: flood.answered() >= 5_000, timeout=60)
        for pid in workers:  # workers too slow for the flood, on purpose: the other lane reaches its bound
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: flood.refused() >= 1_000, timeout=30)
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        at_bound = client.llen("ob:events:other")
        chats.append(rig.open_chat(SALES))  # while the other lane holds its bound's worth of lines
        assert rig.wait_served(chats, timeout=30), f"not routed during the flood\n{rig.output()}"
        wait_for(lambda: flood.answered() >= FLOOD * 3 // 4, timeout=120)
        chats.append(rig.open_chat(SUPPORT))
        assert rig.wait_served(chats, timeout=30), f"not routed during the flood\n{rig.output()}"
        progress = flood.join(timeout=180)
        wait_for(lambda: client.llen("ob:events") + client.llen("ob:events:other") == 0, timeout=60)
        wait_for(lambda: not client.keys("ob:events*batch*"), timeout=30)
    finally:
        if watch.is_alive():
            watch.stop()
        flood.stop()

    waits = {}
    for rid in chats:
        answered = queued_answered_at(rig, rid)
        assert answered is not None, f"the queued webhook of {rid} was never answered 200"
        waits[rid] = epoch_of(rig.served_at(rid)) - answered
    applied = sum(1 for _ in client.scan_iter("ob:replied:flood-*", count=10_000))
    lines = sum(watch.peak_lines.values())
    budget = 2 * LANE_BOUND * LINE_BYTES + progress.accepted * (MARK_BYTES + REPLIED_BYTES) + SLACK_BYTES
    grown = watch.peak_memory - baseline
    report(
        f"\nflood: {FLOOD:,} distinct agent messages in {progress.seconds:.1f} s ({FLOOD / progress.seconds:,.0f}/s), "
        f"{progress.refused:,} answers 503 at the other lane's bound ({at_bound:,} lines when the first chat opened), "
        f"{progress.accepted:,} accepted, {applied:,} applied; chats routed "
        + ", ".join(f"{w:.2f} s" for w in waits.values())
        + f" after their queued webhook's answer; peak lines routing {watch.peak_lines['ob:events']:,}, other "
        f"{watch.peak_lines['ob:events:other']:,}; Redis used_memory +{grown / 1e6:.1f} MB at peak "
        f"(budget {budget / 1e6:.1f} MB)"
    )
    assert progress.gave_up == 0 and progress.errors == 0, progress
    assert progress.refused > 0, "the other lane's bound was reached"
    assert progress.accepted == FLOOD and progress.duplicates == 0, "every refused event accepted on a retry"
    assert applied == FLOOD, "every accepted event applied"
    assert all(w <= ROUTED_WITHIN for w in waits.values()), f"routed after {waits} s"
    assert watch.peak_lines["ob:events:other"] <= LANE_BOUND and lines <= 2 * LANE_BOUND, watch.peak_lines
    assert grown <= budget, f"Redis grew {grown:,} bytes, over the bounds' budget of {budget:,}"
