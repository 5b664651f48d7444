"""Routing in-process: the web app, a SimpleWorker in burst mode, Redis and the Rocket.Chat double."""

import httpx
import pytest

from bridge.app import create_app
from bridge.decisions import DecisionLog
from bridge.load import LoadBook
from bridge.sandbox import payloads
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread
from tests.team import SALES, seed_team
from workers.worker import build_worker


@pytest.fixture
def team(rc_state):
    return seed_team(rc_state)


@pytest.fixture
def bridge(rc_settings):
    with ServerThread(create_app(rc_settings)) as server:
        yield server


def queued_webhook(rc_state, room):
    visitor = rc_state.visitors[room["v"]["_id"]]
    return payloads.room_event("LivechatSessionQueued", room, visitor, messages=rc_state.messages_of(room["_id"]))


def deliver(bridge, payload):
    response = httpx.post(
        f"{bridge.url}/webhooks/livechat", json=payload, headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_queued_chat_is_taken_for_the_least_loaded_agent(rc_settings, rc_state, team, bridge, redis_client):
    room, inquiry = rc_state.open_chat(department=SALES)
    deliver(bridge, queued_webhook(rc_state, room))
    build_worker(rc_settings, redis_client).work(burst=True)
    served = rc_state.rooms[room["_id"]]["servedBy"]["_id"]
    assert served in (team["ana"], team["bo"])
    take = [r for r in rc_state.requests() if r.path == "/api/v1/livechat/inquiries.take"]
    assert [(r.body, r.status) for r in take] == [({"inquiryId": inquiry["_id"], "userId": served}, 200)]
    decision = DecisionLog(redis_client, 60).for_room(room["_id"])[-1]
    assert decision["outcome"] == "routed" and decision["agent_id"] == served
    reasons = {c["username"]: c["excluded"] for c in decision["candidates"]}
    assert reasons["eve"] == "not available for livechat"
    assert reasons["dee"] == "offline"
    assert reasons["fay"] == "not in the department"
    assert LoadBook(redis_client).counts() == {served: 1}


def route(rc_settings, redis_client):
    build_worker(rc_settings, redis_client).work(burst=True)


def served_by(rc_state, room):
    return (rc_state.rooms[room["_id"]].get("servedBy") or {}).get("_id")


def test_chats_wait_while_everyone_is_full_and_are_served_when_one_closes(
    rc_settings, rc_state, team, bridge, redis_client
):
    rooms = []
    for _ in range(6):  # sales capacity: ana 2 + bo 3 = 5
        room, _ = rc_state.open_chat(department=SALES)
        deliver(bridge, queued_webhook(rc_state, room))
        rooms.append(room)
    route(rc_settings, redis_client)
    waiting = [r for r in rooms if served_by(rc_state, r) is None]
    assert len(waiting) == 1
    decision = DecisionLog(redis_client, 60).for_room(waiting[0]["_id"])[-1]
    assert decision["outcome"] == "waiting"
    assert {c["username"]: c["excluded"] for c in decision["candidates"]}["ana"] == "at capacity (2/2)"

    closed = rc_state.close_room(rooms[0]["_id"])
    deliver(bridge, payloads.room_event("LivechatSession", closed, rc_state.visitors[closed["v"]["_id"]]))
    route(rc_settings, redis_client)
    assert served_by(rc_state, waiting[0]) == closed["servedBy"]["_id"]
    loads = LoadBook(redis_client).counts()
    assert loads == {team["ana"]: 2, team["bo"]: 3}


def test_agents_rocketchat_calls_offline_are_skipped_and_the_chat_waits(
    rc_settings, rc_state, team, bridge, redis_client
):
    from bridge.directory import AgentDirectory
    from bridge.rocketchat import RocketChat

    rc = RocketChat(rc_settings)
    AgentDirectory(rc_settings, redis_client, lambda: rc).agents()  # cached while ana and bo are online
    rc.close()
    rc_state.set_presence("ana", status="offline")
    rc_state.set_presence("bo", status="offline")
    room, _ = rc_state.open_chat(department=SALES)
    deliver(bridge, queued_webhook(rc_state, room))
    route(rc_settings, redis_client)
    takes = [(r.body["userId"], r.status) for r in rc_state.requests() if r.path.endswith("inquiries.take")]
    assert sorted(takes) == sorted([(team["ana"], 400), (team["bo"], 400)])
    assert served_by(rc_state, room) is None
    assert LoadBook(redis_client).counts() == {}
    decision = DecisionLog(redis_client, 60).for_room(room["_id"])[-1]
    assert decision["outcome"] == "waiting"
    assert [a["result"] for a in decision["attempts"]] == ["offline", "offline"]


def test_an_inquiry_taken_by_someone_else_is_served_not_failed(rc_settings, rc_state, team, bridge, redis_client):
    room, _ = rc_state.open_chat(department=SALES)
    payload = queued_webhook(rc_state, room)
    rc_state.assign(room["_id"], "eve")  # a manager took it by hand before the bridge ran
    deliver(bridge, payload)
    route(rc_settings, redis_client)
    decision = DecisionLog(redis_client, 60).for_room(room["_id"])[-1]
    assert decision["outcome"] == "served"
    assert rc_state.calls("POST", "/api/v1/livechat/inquiries.take") == 0


def test_a_closed_chat_leaves_the_queue(rc_settings, rc_state, team, bridge, redis_client):
    for name in ("ana", "bo"):
        rc_state.set_presence(name, status="offline")
    room, _ = rc_state.open_chat(department=SALES)
    deliver(bridge, queued_webhook(rc_state, room))
    route(rc_settings, redis_client)
    closed = rc_state.close_room(room["_id"], closer="visitor")
    deliver(bridge, payloads.room_event("LivechatSession", closed, rc_state.visitors[closed["v"]["_id"]]))
    route(rc_settings, redis_client)
    from bridge.waiting import WaitingQueue

    assert WaitingQueue(redis_client).count() == 0


def test_rocketchat_down_keeps_the_chat_waiting_until_it_returns(rc_settings, rc_state, team, bridge, redis_client):
    room, _ = rc_state.open_chat(department=SALES)
    rc_state.inject("/api/v1/livechat/inquiries.take", status=503)
    deliver(bridge, queued_webhook(rc_state, room))
    worker = build_worker(rc_settings.replace(rocketchat_retries=0), redis_client)
    worker.work(burst=True, max_jobs=1)
    assert served_by(rc_state, room) is None
    # No answer is not a "no": the take may have happened, so the slot stays reserved for the same agent.
    held = LoadBook(redis_client).counts()
    assert len(held) == 1 and next(iter(held.values())) == 1
    assert redis_client.zscore("ob:wake", "routing"), "routing asked to be woken"
    rc_state.clear_faults()
    from workers.context import current

    assert current().router.drain().startswith("routed 1")
    assert served_by(rc_state, room) == next(iter(held))
    assert LoadBook(redis_client).counts() == held


def test_a_take_applied_by_rocketchat_after_our_timeout_is_counted_once(
    rc_settings, rc_state, team, bridge, redis_client
):
    room, _ = rc_state.open_chat(department=SALES)
    rc_state.inject("/api/v1/livechat/inquiries.take", status=None, delay=1.5, count=1)  # applied, answered late
    deliver(bridge, queued_webhook(rc_state, room))
    worker = build_worker(rc_settings.replace(rocketchat_retries=0, rocketchat_timeout=1.0), redis_client)
    worker.work(burst=True, max_jobs=1)
    from tests.support import wait_for

    wait_for(lambda: served_by(rc_state, room), timeout=5)
    agent = served_by(rc_state, room)
    from workers.context import current

    # The retry: Rocket.Chat says error-inquiry-taken; the bridge keeps counting the room on that agent.
    current().router.drain()
    assert LoadBook(redis_client).counts() == {agent: 1}
    assert DecisionLog(redis_client, 60).for_room(room["_id"])[-1]["outcome"] == "served"


def test_a_served_chat_is_forwarded_to_the_next_agent(rc_settings, rc_state, team, redis_client):
    from bridge.forwarding import reroute
    from workers import context

    room, _ = rc_state.open_chat(department=SALES)
    rc_state.assign(room["_id"], "ana")
    LoadBook(redis_client).assign(room["_id"], team["ana"])
    ctx = context.install(rc_settings, redis_client)
    claim = ctx.router.leases.acquire(f"room:{room['_id']}")
    outcome = reroute(ctx.router, room["_id"], SALES, (), "the agent did not answer", claim)
    assert (outcome.outcome, outcome.agent_id) == ("forwarded", team["bo"])
    assert served_by(rc_state, room) == team["bo"]
    forward = [r for r in rc_state.requests() if r.path.endswith("room.forward")]
    assert [(r.body, r.status) for r in forward] == [({"roomId": room["_id"], "userId": team["bo"]}, 200)]
    assert LoadBook(redis_client).counts() == {team["bo"]: 1}
    decision = DecisionLog(redis_client, 60).for_room(room["_id"])[-1]
    assert (decision["kind"], decision["outcome"], decision["previous_agent_id"]) == (
        "reroute",
        "forwarded",
        team["ana"],
    )


def test_forwarding_skips_an_offline_agent_and_moves_the_count_back_on_failure(
    rc_settings, rc_state, team, redis_client
):
    from bridge.forwarding import reroute
    from bridge.rocketchat import RocketChat
    from workers import context

    rc = RocketChat(rc_settings)
    from bridge.directory import AgentDirectory

    AgentDirectory(rc_settings, redis_client, lambda: rc).agents()
    rc.close()
    rc_state.set_presence("bo", status="offline")  # the cached directory still says online
    room, _ = rc_state.open_chat(department=SALES)
    rc_state.assign(room["_id"], "ana")
    LoadBook(redis_client).assign(room["_id"], team["ana"])
    router = context.install(rc_settings, redis_client).router
    outcome = reroute(router, room["_id"], SALES, (), "test", router.leases.acquire(f"room:{room['_id']}"))
    assert outcome.outcome == "not forwarded"
    assert served_by(rc_state, room) == team["ana"]
    assert LoadBook(redis_client).counts() == {team["ana"]: 1}
    decision = DecisionLog(redis_client, 60).for_room(room["_id"])[-1]
    assert decision["attempts"] == [{"agent_id": team["bo"], "result": "offline"}]


def test_status_shows_agents_load_waiting_chats_and_decisions(
    rc_settings, rc_state, team, bridge, redis_client, capsys
):
    from bridge.cli import main

    for _ in range(6):  # one more than sales can take
        room, _ = rc_state.open_chat(department=SALES)
        deliver(bridge, queued_webhook(rc_state, room))
    route(rc_settings, redis_client)
    assert main(["status", "--once"], env={"REDIS_URL": rc_settings.redis_url}) == 0
    screen = capsys.readouterr().out
    assert "ana " in screen and "2/2" in screen and "3/3" in screen
    assert "offline" in screen and "not available for livechat" in screen
    assert "chats waiting: 1" in screen
    assert screen.count(" routed ") == 5 and " waiting " in screen


def test_takes_in_parallel_fill_capacity_exactly_and_in_queue_order(rc_settings, rc_state, team, redis_client):
    settings = rc_settings.replace(routing_concurrency=8)
    with ServerThread(create_app(settings)) as bridge:
        rooms = []
        for _ in range(12):  # sales capacity: ana 2 + bo 3 = 5
            room, _ = rc_state.open_chat(department=SALES)
            deliver(bridge, queued_webhook(rc_state, room))
            rooms.append(room)
    route(settings, redis_client)
    served = [served_by(rc_state, room) for room in rooms]
    assert served[:5].count(team["ana"]) == 2 and served[:5].count(team["bo"]) == 3, "the first five, by arrival"
    assert served[5:] == [None] * 7
    assert LoadBook(redis_client).counts() == {team["ana"]: 2, team["bo"]: 3}
    takes = [r for r in rc_state.requests() if r.path == "/api/v1/livechat/inquiries.take"]
    assert [r.status for r in takes] == [200] * 5


def test_the_inquiries_of_a_batch_are_looked_up_with_one_list_call(rc_settings, rc_state, team, bridge, redis_client):
    rooms = [rc_state.open_chat(department=SALES)[0] for _ in range(3)]
    for room in rooms:
        deliver(bridge, queued_webhook(rc_state, room))
    route(rc_settings, redis_client)
    assert all(served_by(rc_state, room) for room in rooms)
    assert rc_state.calls("GET", "/api/v1/livechat/inquiries.list") == 1
    assert rc_state.calls("GET", "/api/v1/livechat/inquiries.getOne") == 0
    assert rc_state.calls("POST", "/api/v1/livechat/inquiries.take") == 3


def test_without_view_livechat_manager_queued_for_user_is_used_and_remembered(
    rc_settings, rc_state, team, bridge, redis_client
):
    rc_state.revoke("livechat-manager", "view-livechat-manager")
    for _ in range(2):
        room, _ = rc_state.open_chat(department=SALES)
        deliver(bridge, queued_webhook(rc_state, room))
        route(rc_settings, redis_client)
        assert served_by(rc_state, room)
    assert rc_state.calls("GET", "/api/v1/livechat/inquiries.list") == 1, rc_state.log_lines()
    assert rc_state.calls("GET", "/api/v1/livechat/inquiries.queuedForUser") == 2


def test_a_take_with_no_call_left_in_the_limit_is_not_sent_and_the_chat_keeps_its_place(
    rc_settings, rc_state, team, bridge, redis_client
):
    from bridge.ratelimits import Heard, RateLimits
    from bridge.waiting import WaitingQueue

    limits = RateLimits(redis_client)
    take = "POST /api/v1/livechat/inquiries.take"
    limits.learned(take, limits.acquire(take), Heard(True, limit=10, remaining=0, reset_in_ms=30_000))
    room, _ = rc_state.open_chat(department=SALES)
    deliver(bridge, queued_webhook(rc_state, room))
    started = __import__("time").time()
    route(rc_settings, redis_client)
    assert rc_state.calls("POST", "/api/v1/livechat/inquiries.take") == 0
    assert WaitingQueue(redis_client).get(room["_id"]) is not None
    assert LoadBook(redis_client).counts() == {}, "the reservation was given back"
    wake = redis_client.zscore("ob:wake", "routing")
    assert wake is not None and 25 < wake - started <= 31, "routing wakes when the window ends"


def test_a_room_whose_earlier_take_may_still_be_on_its_way_is_left_alone(
    rc_settings, rc_state, team, bridge, redis_client
):
    room, _ = rc_state.open_chat(department=SALES)
    redis_client.set(f"ob:in-flight:{room['_id']}", team["ana"], ex=30)  # a holder whose lease lapsed mid-take
    deliver(bridge, queued_webhook(rc_state, room))
    route(rc_settings, redis_client)
    assert rc_state.calls("POST", "/api/v1/livechat/inquiries.take") == 0
    redis_client.delete(f"ob:in-flight:{room['_id']}")  # the call is over
    from workers.context import current

    current().router.drain()
    assert served_by(rc_state, room)


def test_a_room_claimed_elsewhere_is_skipped_without_waiting(rc_settings, rc_state, team, bridge, redis_client):
    from bridge.lease import Leases

    room, _ = rc_state.open_chat(department=SALES)
    other = Leases(redis_client).acquire(f"room:{room['_id']}")  # another worker is routing it
    deliver(bridge, queued_webhook(rc_state, room))
    route(rc_settings, redis_client)
    assert served_by(rc_state, room) is None
    assert redis_client.exists(f"ob:recheck:{room['_id']}"), "the holder is asked to look again"
    Leases(redis_client).release(other)
