"""Namespaces that cannot collide (issue 12): decision records are keyed by kind and id, so no input can write into
another kind's record. The room ``voice-x`` is not the voice request ``x``; the room ``external-d`` is not the
External Service record of department ``d``. Real HTTP, real Redis, RQ workers and the Rocket.Chat double."""

from __future__ import annotations

import itertools

import httpx
import pytest

from bridge import keys
from bridge.app import create_app
from bridge.decisions import KINDS, DecisionLog, key_id
from bridge.directory import AgentDirectory
from bridge.rocketchat import RocketChat
from bridge.settings import Secret
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, load_fixture
from tests.team import SALES, seed_team
from workers.worker import build_worker

API_TOKEN = "namespaces-api-token-2b8"
QUEUE_TOKEN = "namespaces-queue-token-c41"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}

IDS = ["x", "voice-x", "external-x", "chat-x", "voice:x", "chat:x", "x:voice", "-", "", "~", "a" * 64, "a" * 65]


def test_decision_keys_differ_for_every_kind_and_id():
    named = {(kind, record_id): keys.decisions(kind, key_id(record_id)) for kind in KINDS for record_id in IDS}
    assert len(set(named.values())) == len(named)
    for (kind, _), key in named.items():
        assert key.startswith(f"ob:decisions:{kind}:")
        assert key.count(":") == 3, key
        assert len(key) <= len("ob:decisions:external:") + 64


def test_a_record_of_one_kind_never_touches_another(redis_client):
    log = DecisionLog(redis_client, 600)
    for kind, record_id in itertools.product(KINDS, IDS):
        log.record(kind, record_id, {"kind": kind, "outcome": f"{kind} {record_id}"})
    for kind, record_id in itertools.product(KINDS, IDS):
        assert [d["outcome"] for d in log.read(kind, record_id)] == [f"{kind} {record_id}"]


def test_an_unknown_kind_is_refused(redis_client):
    with pytest.raises(ValueError, match="unknown decision record kind"):
        DecisionLog(redis_client, 600).record("voice-", "x", {"outcome": "routed"})


@pytest.fixture
def bridge(rc_settings, rc_state, redis_client):
    team = seed_team(rc_state)
    configured = rc_settings.replace(
        api_token=Secret(API_TOKEN), external_queue_token=Secret(QUEUE_TOKEN), directory_ttl_seconds=600.0
    )
    rc = RocketChat(configured)
    AgentDirectory(configured, redis_client, lambda: rc).agents()
    rc.close()
    with ServerThread(create_app(configured)) as server:
        server.settings = configured
        server.team = team
        yield server


def decisions(bridge, path: str) -> tuple[int, list[dict]]:
    response = httpx.get(f"{bridge.url}{path}", headers=BEARER)
    return response.status_code, response.json().get("decisions", [])


def queue_room(bridge, room_id: str) -> None:
    payload = load_fixture("LivechatSessionQueued__basic")
    payload["_id"] = room_id
    payload["departmentId"] = SALES  # agents can take it: each room gets a decision (the double has no inquiry: gone)
    response = httpx.post(
        f"{bridge.url}/webhooks/livechat", json=payload, headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
    )
    assert response.status_code == 200 and response.json()["outcome"] == "accepted", response.text


def test_room_voice_x_does_not_touch_voice_request_x(bridge, redis_client, rc_state):
    rc_state.add_agent("ivy", status="offline", extension="2001", departments=[SALES])
    answer = httpx.post(
        f"{bridge.url}/voice/route", json={"extension": "2001", "departmentId": SALES, "requestId": "x"}, headers=BEARER
    )
    assert answer.status_code == 202
    assert answer.json()["decision"] == "/decisions/voice/x"
    build_worker(bridge.settings, redis_client).work(burst=True)
    status, voice_before = decisions(bridge, "/decisions/voice/x")
    assert status == 200 and [d["outcome"] for d in voice_before] == ["assigned"]
    assert decisions(bridge, "/decisions/voice-x")[0] == 404, "the old address names a chat now"

    queue_room(bridge, "voice-x")  # a chat whose room id spells the old voice record's name
    build_worker(bridge.settings, redis_client).work(burst=True)

    assert decisions(bridge, "/decisions/voice/x") == (200, voice_before)
    status, chat = decisions(bridge, "/decisions/voice-x")
    assert status == 200 and chat and {d["record_kind"] for d in chat} == {"chat"}
    assert {d["room_id"] for d in chat} == {"voice-x"}


def test_room_external_d_does_not_touch_the_external_record_of_d(bridge, redis_client):
    headers = {"X-RocketChat-Secret-Token": QUEUE_TOKEN}
    assert httpx.get(f"{bridge.url}/external-queue", params={"departmentId": SALES}, headers=headers).json()
    assert httpx.get(f"{bridge.url}/external-queue", headers=headers).status_code == 200
    status, external_before = decisions(bridge, f"/decisions/external/{SALES}")
    assert status == 200 and [d["outcome"] for d in external_before] == ["answered"]
    assert decisions(bridge, "/decisions/external/-")[0] == 200, "a query without a department has its record"

    for room_id in (f"external-{SALES}", "external--", SALES):
        queue_room(bridge, room_id)
    build_worker(bridge.settings, redis_client).work(burst=True)

    assert decisions(bridge, f"/decisions/external/{SALES}") == (200, external_before)
    assert [d["record_kind"] for d in decisions(bridge, "/decisions/external/-")[1]] == ["external"]
    for room_id in (f"external-{SALES}", "external--", SALES):
        status, chat = decisions(bridge, f"/decisions/{room_id}")
        assert status == 200 and {d["record_kind"] for d in chat} == {"chat"}, room_id


def test_an_external_query_for_department_voice_x_stays_in_its_own_kind(bridge, redis_client):
    headers = {"X-RocketChat-Secret-Token": QUEUE_TOKEN}
    for department in ("voice-x", "x"):
        assert (
            httpx.get(f"{bridge.url}/external-queue", params={"departmentId": department}, headers=headers).json() == {}
        )
    assert decisions(bridge, "/decisions/voice/x")[0] == 404
    assert decisions(bridge, "/decisions/x")[0] == 404
    assert decisions(bridge, "/decisions/voice-x")[0] == 404
    assert {d["record_kind"] for d in decisions(bridge, "/decisions/external/voice-x")[1]} == {"external"}
