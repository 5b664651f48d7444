"""Routing in-process: the web app, a SimpleWorker in burst mode, Redis and the Rocket.Chat double."""

import httpx
import pytest

from bridge.app import create_app
from bridge.decisions import DecisionLog
from bridge.load import LoadBook
from bridge.sandbox import payloads
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread
from tests.team import SALES, SUPPORT, seed_team
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
    response = httpx.post(f"{bridge.url}/webhooks/livechat", json=payload,
                          headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN})
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
