"""Re-routing chats whose agent does not answer: forwarded with room.forward, then to a fallback department."""

import time

import httpx
import pytest

from bridge.app import create_app
from bridge.decisions import DecisionLog
from bridge.noanswer import reroute_unanswered
from bridge.sandbox import payloads
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread
from tests.team import SALES, SUPPORT, seed_team
from workers import context
from workers.worker import build_worker

LATER = 10_000.0  # seconds ahead: every deadline has passed


@pytest.fixture
def team(rc_state):
    team = seed_team(rc_state)
    team["hal"] = rc_state.add_agent("hal", max_chats=2, departments=[SALES])["_id"]
    return team


@pytest.fixture
def noanswer_settings(rc_settings):
    return rc_settings.replace(no_answer_seconds=60, no_answer_max_attempts=2, no_answer_fallback_department=SUPPORT)


@pytest.fixture
def web(noanswer_settings):
    with ServerThread(create_app(noanswer_settings)) as server:
        yield server


def deliver(web, payload):
    response = httpx.post(
        f"{web.url}/webhooks/livechat", json=payload, headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
    )
    assert response.status_code == 200, response.text


def route_one(web, rc_state, noanswer_settings, redis_client):
    room, _ = rc_state.open_chat(department=SALES)
    visitor = rc_state.visitors[room["v"]["_id"]]
    deliver(
        web, payloads.room_event("LivechatSessionQueued", room, visitor, messages=rc_state.messages_of(room["_id"]))
    )
    build_worker(noanswer_settings, redis_client).work(burst=True)
    return room["_id"]


def serving(rc_state, room_id):
    return (rc_state.rooms[room_id].get("servedBy") or {}).get("_id")


def test_an_unanswered_chat_goes_to_the_next_agent_then_the_fallback_department(
    web, rc_state, team, noanswer_settings, redis_client
):
    room_id = route_one(web, rc_state, noanswer_settings, redis_client)
    first = serving(rc_state, room_id)
    ctx = context.install(noanswer_settings, redis_client)
    assert reroute_unanswered(ctx.router, ctx.answers, now=time.time()) == "no unanswered chats"

    assert reroute_unanswered(ctx.router, ctx.answers, now=time.time() + LATER) == "1 unanswered chats handled"
    second = serving(rc_state, room_id)
    assert second not in (None, first)
    reroute_unanswered(ctx.router, ctx.answers, now=time.time() + 2 * LATER)
    third = serving(rc_state, room_id)
    assert third not in (None, first, second)
    reroute_unanswered(ctx.router, ctx.answers, now=time.time() + 3 * LATER)
    assert rc_state.rooms[room_id].get("departmentId") == SUPPORT

    forwards = [r.body for r in rc_state.requests() if r.path.endswith("room.forward")]
    assert forwards == [
        {"roomId": room_id, "userId": second},
        {"roomId": room_id, "userId": third},
        {"roomId": room_id, "departmentId": SUPPORT},
    ]
    hops = [d["outcome"] for d in DecisionLog(redis_client, 60).for_room(room_id)]
    assert hops == ["routed", "forwarded", "forwarded", "forwarded to department"]
    assert ctx.answers.get(room_id) is None


def test_an_agent_who_answers_keeps_the_chat(web, rc_state, team, noanswer_settings, redis_client):
    room_id = route_one(web, rc_state, noanswer_settings, redis_client)
    agent_id = serving(rc_state, room_id)
    room = rc_state.rooms[room_id]
    agent = rc_state.users[agent_id]
    message = {
        "_id": "AgentMessage00001",
        "rid": room_id,
        "msg": "Hi, how can I help?",
        "ts": room["ts"],
        "u": {"_id": agent_id, "username": agent["username"]},
    }
    deliver(web, payloads.message_event(room, rc_state.visitors[room["v"]["_id"]], agent, message))
    build_worker(noanswer_settings, redis_client).work(burst=True)
    ctx = context.install(noanswer_settings, redis_client)
    assert reroute_unanswered(ctx.router, ctx.answers, now=time.time() + LATER) == "no unanswered chats"
    assert serving(rc_state, room_id) == agent_id


def test_an_answer_processed_before_the_taken_event_starts_no_clock(noanswer_settings, redis_client):
    ctx = context.install(noanswer_settings, redis_client)
    ctx.answers.replied("room-1", "ana")
    assert not ctx.answers.start("room-1", "ana", SALES)
    assert ctx.answers.start("room-1", "bo", SALES), "another agent must still answer"


def test_a_batch_of_answers_stops_the_clocks_of_the_agents_who_wrote(noanswer_settings, redis_client):
    ctx = context.install(noanswer_settings, redis_client)
    assert ctx.answers.start("room-1", "ana", SALES) and ctx.answers.start("room-2", "bo", SALES)
    ctx.answers.replied_many([("room-1", "bo"), ("room-1", "ana"), ("room-2", "cy"), ("room-3", "dee")])
    assert ctx.answers.get("room-1") is None, "ana, who was awaited, wrote"
    assert ctx.answers.get("room-2")["agent_id"] == "bo", "someone else wrote: bo's clock runs on"
    assert ctx.answers.due(now=time.time() + LATER) == ["room-2"]
    assert [redis_client.get(f"ob:replied:room-{n}") for n in (1, 2, 3)] == [b"ana", b"cy", b"dee"]


def test_off_by_default(rc_settings, redis_client):
    ctx = context.install(rc_settings, redis_client)
    assert not ctx.answers.enabled
    assert not ctx.answers.start("room-1", "ana", SALES)


def test_a_forward_interrupted_before_its_record_is_not_repeated(web, rc_state, team, noanswer_settings, redis_client):
    room_id = route_one(web, rc_state, noanswer_settings, redis_client)
    ctx = context.install(noanswer_settings, redis_client)
    first = serving(rc_state, room_id)
    other = next(i for n, i in team.items() if n in ("ana", "bo", "hal") and i != first)
    ctx.load.reserve_move(room_id, [(other, 5)])  # the forward's reservation happened, then the worker died
    reroute_unanswered(ctx.router, ctx.answers, now=time.time() + LATER)
    assert [r for r in rc_state.requests() if r.path.endswith("room.forward")] == []
    assert ctx.answers.get(room_id)["agent_id"] == other
