"""Identifiers from input are checked at the edge (README, *`POST /webhooks/livechat`: status policy*, the bad-input
table): Rocket.Chat's ids are accepted, absurd ones are refused with 400 naming the field and nothing recorded, and
every Redis key built from accepted ids stays short. Real HTTP, real Redis, the Rocket.Chat double."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from bridge.app import create_app
from bridge.errors import InvalidEvent
from bridge.events import parse_event
from bridge.identifiers import MAX_ID_LENGTH, is_rocketchat_id
from bridge.sandbox import payloads
from bridge.sandbox.livechat import forward_room, take_inquiry
from bridge.sandbox.state import SandboxState
from bridge.settings import Secret
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, fixture_names, load_fixture, recorded_keys
from tests.team import SALES, SUPPORT, seed_team
from workers.worker import build_worker

API_TOKEN = "identifiers-api-token-5c1"
QUEUE_TOKEN = "identifiers-queue-token-77e"
WEBHOOK = {"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}

# The id fields each event type reads (bridge/events.py), as dotted paths of the payload.
READ_IDS: dict[str, tuple[str, ...]] = {
    "LivechatSessionStart": ("_id", "departmentId"),
    "LivechatSessionQueued": ("_id", "departmentId", "visitor._id"),
    "LivechatSessionTaken": ("_id", "servedBy._id", "departmentId"),
    "LivechatSessionForwarded": ("_id", "servedBy._id", "departmentId", "oldServedBy._id", "oldDepartmentId"),
    "LivechatSession": ("_id", "servedBy._id", "departmentId"),
    "LivechatEdit": ("_id",),
    "Message": ("_id", "messages.0._id", "messages.0.agentId"),
    "LeadCapture": ("_id",),
    "LivechatOfflineMessage": (),
}
HOSTILE = {
    "65 characters": "a" * (MAX_ID_LENGTH + 1),
    "10 KB": "r" * 10_240,
    "a newline": "room\n",
    "a control character": "ro\x00om",
    "a space": "ro om",
    "a colon": "chat:x",
    "a slash": "voice/x",
    "unicode": "r\u00f6\u00f6m",
    "an emoji": "\U0001f600",
    "a bidi override": "room\u202e",
}
VALID = ["Dk2LmQ7pXr9sVb4nE", "rocket.cat", "voice-call-1", "external-dept", "a" * MAX_ID_LENGTH, "x"]


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = [int(step) if step.isdigit() else step for step in path.split(".")]
    for step in parents:
        doc = doc[step]
    doc[last] = value


def has_path(doc: Any, path: str) -> bool:
    for step in path.split("."):
        if isinstance(doc, list) and step.isdigit() and int(step) < len(doc):
            doc = doc[int(step)]
        elif isinstance(doc, dict) and step in doc:
            doc = doc[step]
        else:
            return False
    return True


def cases() -> list[tuple[str, str]]:
    """(fixture, id field) for every id field a fixture carries and its type reads."""
    return [
        (name, path)
        for name in fixture_names()
        for path in READ_IDS[load_fixture(name)["type"]]
        if has_path(load_fixture(name), path)
    ]


@pytest.fixture
def web(settings):
    configured = settings.replace(
        api_token=Secret(API_TOKEN), external_queue_token=Secret(QUEUE_TOKEN), directory_ttl_seconds=600.0
    )
    with ServerThread(create_app(configured)) as server:
        yield server


def test_every_fixture_and_every_id_rocketchat_sends_is_accepted():
    for name in fixture_names():
        parse_event(load_fixture(name))  # raises InvalidEvent otherwise


def test_the_ids_the_sandbox_generates_are_accepted():
    """The double makes ids as Rocket.Chat does (Meteor's Random.id); its payloads pass through the edge."""
    state = SandboxState("7.13.9", seed=11)
    team = seed_team(state)
    bodies: list[dict[str, Any]] = []
    state.listeners.append(
        lambda event_type, room: bodies.append(
            payloads.room_event(
                event_type,
                room,
                state.visitors[room["v"]["_id"]],
                state.users.get((room.get("servedBy") or {}).get("_id", "")),
                state.messages.get(room["_id"], []),
            )
        )
    )
    for department in (SALES, SUPPORT, None):
        room, inquiry = state.open_chat(department)
        take_inquiry(state, inquiry["_id"], team["bo"])
        forward_room(state, room["_id"], user_id=team["fay"], department_id=None)
        state.close_room(room["_id"])
    assert {body["type"] for body in bodies} >= {
        "LivechatSessionQueued",
        "LivechatSessionTaken",
        "LivechatSessionForwarded",
        "LivechatSession",
    }
    for body in bodies:
        event = json.loads(json.dumps(body, default=str))
        parse_event(event)
        assert is_rocketchat_id(event["_id"]) and len(event["_id"]) == 17


@pytest.mark.parametrize(("fixture", "path"), cases())
@pytest.mark.parametrize("hostile", sorted(HOSTILE))
def test_a_hostile_id_in_a_webhook_is_400_naming_the_field(fixture, path, hostile):
    payload = load_fixture(fixture)
    set_path(payload, path, HOSTILE[hostile])
    with pytest.raises(InvalidEvent) as refused:
        parse_event(payload)
    assert refused.value.field == path
    assert path in str(refused.value) and "Rocket.Chat id" in str(refused.value)


@pytest.mark.parametrize(("fixture", "path"), cases())
def test_valid_ids_pass_in_every_id_field(fixture, path):
    for value in VALID:
        payload = load_fixture(fixture)
        set_path(payload, path, value)
        parse_event(payload)


def test_a_10_kb_room_id_is_refused_over_http_and_nothing_is_recorded(web, redis_client):
    payload = load_fixture("LivechatSessionQueued__basic")
    payload["_id"] = "r" * 10_240
    response = httpx.post(f"{web.url}/webhooks/livechat", json=payload, headers=WEBHOOK)
    assert response.status_code == 400
    assert response.json()["field"] == "_id"
    assert f"1-{MAX_ID_LENGTH} characters" in response.json()["error"]
    assert recorded_keys(redis_client) == []


@pytest.mark.parametrize("field", ["departmentId", "ignoreAgentId"])
@pytest.mark.parametrize("hostile", sorted(HOSTILE))
def test_the_external_service_refuses_a_hostile_id_naming_it(web, redis_client, field, hostile):
    response = httpx.get(
        f"{web.url}/external-queue",
        params={field: HOSTILE[hostile]},
        headers={"X-RocketChat-Secret-Token": QUEUE_TOKEN},
    )
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert recorded_keys(redis_client) == []


@pytest.mark.parametrize(
    ("field", "value"), [("departmentId", "d" * 65), ("requestId", "r" * 65), ("requestId", "a.b")]
)
def test_voice_refuses_a_hostile_id_naming_it(web, redis_client, field, value):
    response = httpx.post(f"{web.url}/voice/route", json={"extension": "2001", field: value}, headers=BEARER)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert recorded_keys(redis_client) == []


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/decisions/" + "r" * 65, "roomId"),
        ("/decisions/r%C3%B6%C3%B6m", "roomId"),
        ("/decisions/chat%3Ax", "roomId"),
        ("/decisions/voice%2Fx", "roomId"),  # one segment: the room "voice/x", never voice request x
        ("/decisions/voice/x/y", "roomId"),
        ("/decisions/%FF", "roomId"),
        ("/decisions/voice/" + "v" * 65, "requestId"),
        ("/decisions/voice/a.b", "requestId"),
        ("/decisions/external/" + "d" * 65, "departmentId"),
        ("/decisions/external/d%0A", "departmentId"),
    ],
)
def test_decision_lookups_refuse_a_hostile_id_naming_it(web, path, field):
    response = httpx.get(f"{web.url}{path}", headers=BEARER)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


def test_keys_built_from_the_longest_accepted_ids_stay_short(rc_settings, redis_client, rc_state):
    """Every place input flows into a Redis key: post each routed event type with 64-character ids, apply the log
    with a worker, and look at every key the bridge wrote (RQ's and ours)."""
    team = seed_team(rc_state)
    longest = "L" * MAX_ID_LENGTH
    configured = rc_settings.replace(api_token=Secret(API_TOKEN), external_queue_token=Secret(QUEUE_TOKEN))
    bodies = []
    for name, changes in [
        ("LivechatSessionQueued__basic", {"_id": longest, "departmentId": longest, "visitor._id": longest}),
        ("LivechatSessionTaken__basic", {"_id": longest, "servedBy._id": team["bo"], "departmentId": longest}),
        ("LivechatSessionForwarded__to_agent", {"_id": longest + "2", "servedBy._id": longest}),
        ("LivechatSession__closed_by_agent", {"_id": longest, "servedBy._id": longest}),
        ("Message__from_agent", {"_id": longest, "messages.0._id": longest, "messages.0.agentId": longest}),
    ]:
        payload = load_fixture(name)
        for path, value in changes.items():
            set_path(payload, path, value[:MAX_ID_LENGTH])
        bodies.append(payload)
    with ServerThread(create_app(configured)) as server:
        for payload in bodies:
            response = httpx.post(f"{server.url}/webhooks/livechat", json=payload, headers=WEBHOOK)
            assert response.status_code == 200, response.text
        headers = {"X-RocketChat-Secret-Token": QUEUE_TOKEN}
        params = {"departmentId": longest, "ignoreAgentId": longest}
        assert httpx.get(f"{server.url}/external-queue", params=params, headers=headers).status_code == 200
        voice = {"extension": "2" * 32, "departmentId": longest, "requestId": "R" * MAX_ID_LENGTH}
        assert httpx.post(f"{server.url}/voice/route", json=voice, headers=BEARER).status_code == 202
        build_worker(configured, redis_client).work(burst=True)
    written = recorded_keys(redis_client)
    assert any(longest.encode() in key for key in written), "the long ids did reach keys"
    longest_key = max(written, key=len)
    assert len(longest_key) <= MAX_ID_LENGTH + 40, longest_key
