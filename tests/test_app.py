"""The webhook endpoint over real HTTP against a real Redis: every row of the status policy."""

import asyncio
import json
import logging

import httpx
import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from bridge.app import UNKNOWN_TYPES_LOGGED, create_app
from bridge.eventlog import PROCESS_EVENTS
from bridge.events import parse_event
from bridge.jobqueue import EVENT_JOBS, job_for
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, fixture_names, load_fixture, logged_events, recorded_keys

HEADERS = {"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}


@pytest.fixture
def bridge(settings):
    with ServerThread(create_app(settings)) as server:
        yield server


@pytest.fixture
def queue(redis_client, settings):
    return Queue(settings.queue_name, connection=redis_client, serializer=JSONSerializer)


def post(bridge, body, headers=HEADERS, **kwargs):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{bridge.url}/webhooks/livechat", content=content, headers=headers, **kwargs)


@pytest.mark.parametrize("name", fixture_names())
def test_every_fixture_is_answered_200_and_logged_for_the_documented_job(bridge, queue, redis_client, name):
    payload = load_fixture(name)
    response = post(bridge, payload)
    assert response.status_code == 200
    event = parse_event(payload)
    body = response.json()
    if job_for(event) is None:
        assert body == {"ok": True, "outcome": "ignored", "event": payload["type"]}
        assert queue.count == 0
        assert logged_events(redis_client) == []
    else:
        assert body == {"ok": True, "outcome": "accepted", "event": payload["type"], "id": f"ev-{event.identity}"}
        assert logged_events(redis_client) == [event.to_dict()]
        [job_id] = queue.job_ids
        assert queue.fetch_job(job_id).func_name == PROCESS_EVENTS


def test_job_table_covers_every_type_rocketchat_sends():
    assert set(EVENT_JOBS) == {name.split("__")[0] for name in fixture_names()}


def test_the_response_body_is_small_because_rocketchat_stores_it_on_the_room(bridge):
    response = post(bridge, load_fixture("LivechatSessionQueued__basic"))
    assert len(response.content) < 200


def test_a_redelivery_is_answered_200_and_logged_once(bridge, queue, redis_client):
    payload = load_fixture("LivechatSessionTaken__basic")
    first, second = post(bridge, payload), post(bridge, payload)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["outcome"] == "accepted"
    assert second.json()["outcome"] == "duplicate"
    assert second.json()["id"] == first.json()["id"]
    assert len(logged_events(redis_client)) == 1
    assert queue.count == 1


def test_twenty_concurrent_copies_are_logged_once(bridge, queue, redis_client):
    payload = json.dumps(load_fixture("LivechatSessionQueued__basic")).encode()

    async def deliver_all():
        async with httpx.AsyncClient(base_url=bridge.url, headers=HEADERS) as client:
            return await asyncio.gather(*[client.post("/webhooks/livechat", content=payload) for _ in range(20)])

    responses = asyncio.run(deliver_all())
    assert [r.status_code for r in responses] == [200] * 20
    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert outcomes == ["accepted"] + ["duplicate"] * 19
    assert len(logged_events(redis_client)) == 1
    assert queue.count == 1


def test_many_concurrent_distinct_events_are_all_logged_with_one_pending_job(bridge, queue, redis_client):
    base = load_fixture("LivechatSessionQueued__basic")
    bodies = [json.dumps({**base, "_id": f"room-{n}"}).encode() for n in range(60)]

    async def deliver_all():
        async with httpx.AsyncClient(base_url=bridge.url, headers=HEADERS) as client:
            return await asyncio.gather(*[client.post("/webhooks/livechat", content=body) for body in bodies])

    responses = asyncio.run(deliver_all())
    assert {r.json()["outcome"] for r in responses} == {"accepted"}
    assert sorted(line["room_id"] for line in logged_events(redis_client)) == sorted(f"room-{n}" for n in range(60))
    assert queue.count == 1, "events that arrive while a job is pending ride on it"


def test_a_new_occurrence_of_the_same_room_is_logged_again(bridge, queue, redis_client):
    taken = load_fixture("LivechatSessionTaken__basic")
    again = json.loads(json.dumps(taken))
    again["servedBy"]["ts"] = "2026-11-24T12:00:00.000Z"
    assert post(bridge, taken).json()["outcome"] == "accepted"
    assert post(bridge, again).json()["outcome"] == "accepted"
    assert len(logged_events(redis_client)) == 2


@pytest.mark.parametrize("headers", [{}, {"X-RocketChat-Livechat-Token": "wrong"}, {"X-RocketChat-Livechat-Token": ""}])
def test_a_missing_or_wrong_token_is_403_and_records_nothing(bridge, queue, redis_client, headers):
    response = post(bridge, load_fixture("LivechatSessionQueued__basic"), headers=headers)
    assert response.status_code == 403
    assert "X-RocketChat-Livechat-Token" in response.json()["error"]
    assert recorded_keys(redis_client) == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "'type' is required"),
        (b'{"type": "LivechatSessionQueued", "visitor": {"_id": "v"}}', "'_id' is required"),
        (b'{"type": "LivechatSessionTaken", "_id": "room"}', "'servedBy' is required"),
        (b'{"type": 5, "_id": "room"}', "'type' must be a string"),
        (b'{"type": "", "_id": "room"}', "'type' must not be empty"),
        (b'{"type": "\\ud800", "_id": "room"}', "'type' is not valid Unicode"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_input_is_400_naming_the_problem(bridge, redis_client, body, says):
    response = post(bridge, body)
    assert response.status_code == 400
    assert says in response.json()["error"]
    assert recorded_keys(redis_client) == []


@pytest.mark.parametrize(
    "body",
    [
        {"type": "LivechatSessionClosed", "_id": "room"},  # not a type Rocket.Chat sends (the close is LivechatSession)
        {"type": "LivechatSessionOnHold"},  # a newer server's event: its fields are not read
        {"type": "Message ", "_id": 5, "messages": "not even a list"},
    ],
)
def test_an_unknown_type_is_answered_200_ignored_and_stores_nothing(bridge, queue, redis_client, body):
    response = post(bridge, body)
    assert response.status_code == 200, "Rocket.Chat counts only 200 as delivered; older servers retry the rest"
    assert response.json() == {"ok": True, "outcome": "ignored", "event": body["type"]}
    assert recorded_keys(redis_client) == []
    assert queue.count == 0


def test_an_unknown_type_is_echoed_capped_and_escaped(bridge, redis_client):
    hostile = "\x1b[2J\u202eEvil\r\n" + "A" * 100_000
    response = post(bridge, {"type": hostile, "_id": "room"})
    assert response.status_code == 200
    shown = response.json()["event"]
    assert shown.startswith("\\x1b[2J\\u202eEvil\\r\\nAAA") and shown.endswith("A...")
    assert len(shown) == 64 + len("...") and shown.isprintable()
    assert len(response.content) < 200, "Rocket.Chat stores the body on the room"
    assert recorded_keys(redis_client) == []


def test_an_unknown_type_is_logged_once_per_type_and_only_so_many_types(bridge, caplog):
    caplog.set_level(logging.WARNING, logger="bridge.web")

    def unknown_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "bridge.web" and "unknown type" in r.getMessage()]

    for _ in range(3):
        assert post(bridge, {"type": "LivechatSessionOnHold\n"}).status_code == 200
    assert unknown_lines() == [
        "webhook of unknown type 'LivechatSessionOnHold\\n' ignored: answered 200, not stored (logged once per type)"
    ]
    for n in range(UNKNOWN_TYPES_LOGGED + 5):
        assert post(bridge, {"type": f"Future{n}"}).status_code == 200
    lines = unknown_lines()
    assert len(lines) == UNKNOWN_TYPES_LOGGED + 1, "one line per type up to the limit, then one saying so"
    assert "further unknown types not logged individually" in lines[-1]
    assert post(bridge, {"type": "YetAnother"}).status_code == 200
    assert len(unknown_lines()) == UNKNOWN_TYPES_LOGGED + 1


def test_an_unknown_type_is_answered_200_while_redis_is_down(bridge, redis_server):
    redis_server.stop()
    response = post(bridge, {"type": "LivechatSessionOnHold", "_id": "room"})
    assert response.status_code == 200, "like the types the bridge ignores on purpose, it needs no Redis"
    assert response.json() == {"ok": True, "outcome": "ignored", "event": "LivechatSessionOnHold"}


def test_a_declared_oversized_body_is_413_before_it_is_read(bridge, settings):
    response = httpx.post(
        f"{bridge.url}/webhooks/livechat",
        content=b"{" + b" " * (settings.max_body_bytes + 10) + b"}",
        headers=HEADERS,
    )
    assert response.status_code == 413
    assert str(settings.max_body_bytes) in response.json()["error"]


def test_a_streamed_oversized_body_is_413(bridge, settings):
    def chunks():
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    response = httpx.post(f"{bridge.url}/webhooks/livechat", content=chunks(), headers=HEADERS)
    assert response.status_code == 413


def test_a_body_at_the_cap_is_accepted(bridge, settings):
    payload = json.dumps(load_fixture("LivechatSessionQueued__basic")).encode()
    padded = payload + b" " * (settings.max_body_bytes - len(payload))
    assert post(bridge, padded).status_code == 200


def test_redis_unreachable_and_no_spool_room_is_503_and_a_retry_after_it_returns_is_accepted(
    settings, queue, redis_server, redis_client
):
    payload = load_fixture("LivechatSessionQueued__basic")
    with ServerThread(create_app(settings.replace(spool_max_bytes=0))) as bridge:
        redis_server.stop()
        response = post(bridge, payload)
        assert response.status_code == 503
        assert "Redis" in response.json()["error"]
        ignored = post(bridge, load_fixture("LivechatOfflineMessage__basic"))
        assert ignored.status_code == 200, "ignored events need no Redis"
        redis_server.start()
        retried = post(bridge, payload)
    assert retried.status_code == 200
    assert retried.json()["outcome"] == "accepted"
    assert len(logged_events(redis_client)) == 1
    assert queue.count == 1


def test_healthz_and_readyz(bridge, redis_server):
    assert httpx.get(f"{bridge.url}/healthz").status_code == 200
    assert httpx.get(f"{bridge.url}/readyz").json() == {"ok": True, "redis": "ok"}
    redis_server.stop()
    assert httpx.get(f"{bridge.url}/readyz").status_code == 503
    assert httpx.get(f"{bridge.url}/healthz").status_code == 200


def test_insecure_dev_mode_accepts_webhooks_without_a_token(settings, queue):
    insecure = settings.replace(webhook_token="", insecure_dev=True)
    with ServerThread(create_app(insecure)) as server:
        response = post(server, load_fixture("LivechatSessionQueued__basic"), headers={})
    assert response.status_code == 200
    assert queue.count == 1


def test_a_redis_that_lost_the_job_template_gets_it_again(bridge, queue, redis_client):
    post(bridge, load_fixture("LivechatSessionTaken__basic"))
    redis_client.flushall()  # a restart without persistence
    response = post(bridge, load_fixture("LivechatSessionQueued__basic"))
    assert response.json()["outcome"] == "accepted"
    [job_id] = queue.job_ids
    assert queue.fetch_job(job_id).func_name == PROCESS_EVENTS
    assert [line["type"] for line in logged_events(redis_client)] == ["LivechatSessionQueued"]
