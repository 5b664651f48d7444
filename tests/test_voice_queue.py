"""Voice requests wait on their own queue, capped per API token and in total (README, *Endpoints* and the bad-input
table), and never delay chats. Real HTTP, real Redis, RQ workers and the Rocket.Chat double."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from bridge import keys
from bridge.app import create_app
from bridge.errors import ConfigError
from bridge.jobqueue import make_queue, make_voice_queue, queue_names
from bridge.settings import Secret, Settings
from bridge.voicequeue import VoiceSlots, token_digest
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, load_fixture
from tests.team import SALES, seed_team
from workers.worker import build_worker

API_TOKEN = "voice-queue-api-token-e19"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


def voice_settings(settings: Settings, **changes: object) -> Settings:
    return settings.replace(api_token=Secret(API_TOKEN), **changes)


def post_many(url: str, count: int, prefix: str = "call") -> list[httpx.Response]:
    """``count`` voice requests at once, each its own ``requestId``."""

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=BEARER, timeout=30) as client:
            return await asyncio.gather(
                *[
                    client.post("/voice/route", json={"extension": "2001", "requestId": f"{prefix}-{n}"})
                    for n in range(count)
                ]
            )

    return asyncio.run(flood())


def test_voice_jobs_wait_on_their_own_queue(settings, redis_client):
    configured = voice_settings(settings)
    with ServerThread(create_app(configured)) as server:
        response = httpx.post(
            f"{server.url}/voice/route", json={"extension": "2001", "requestId": "c1"}, headers=BEARER
        )
    assert response.status_code == 202
    assert response.json() == {"ok": True, "id": "c1", "decision": "/decisions/voice/c1"}
    assert queue_names(configured) == ["bridge", "bridge-voice"]
    assert make_voice_queue(configured, redis_client).job_ids == ["voice-c1"]
    assert make_queue(configured, redis_client).job_ids == []


def test_a_flood_past_the_per_token_cap_is_429_and_records_nothing(settings, redis_client):
    configured = voice_settings(settings, voice_queue_max_per_token=20, voice_queue_max=1000)
    with ServerThread(create_app(configured)) as server:
        answers = post_many(server.url, 60)
        statuses = [r.status_code for r in answers]
        assert statuses.count(202) == 20 and statuses.count(429) == 40, statuses
        refused = next(r for r in answers if r.status_code == 429)
        body = refused.json()
        assert body["ok"] is False and body["cap"] == "VOICE_QUEUE_MAX_PER_TOKEN" and body["queued"] == 20
        assert "VOICE_QUEUE_MAX_PER_TOKEN is 20" in body["error"]
        assert refused.headers["Retry-After"] == "5"
        accepted = {r.json()["id"] for r in answers if r.status_code == 202}
        assert set(make_voice_queue(configured, redis_client).job_ids) == {f"voice-{i}" for i in accepted}
        assert len(redis_client.keys("rq:job:voice-*")) == 20, "no job for a refused request"
        assert redis_client.keys("ob:decisions*") == []
        assert API_TOKEN.encode() not in b"".join(redis_client.keys("*")), "the token is never stored"
        assert redis_client.zcard(keys.voice_queued_by(token_digest(API_TOKEN))) == 20

        # A request already queued is answered 202 again, counted once; at the cap too.
        again = httpx.post(
            f"{server.url}/voice/route", json={"extension": "2001", "requestId": accepted.pop()}, headers=BEARER
        )
        assert again.status_code == 202
        assert VoiceSlots.from_settings(redis_client, configured).queued() == 20


def test_the_total_cap_holds_and_slots_come_back_when_jobs_start(rc_settings, redis_client, rc_state):
    seed_team(rc_state)
    configured = voice_settings(rc_settings, voice_queue_max=5, voice_queue_max_per_token=100)
    with ServerThread(create_app(configured)) as server:
        statuses = [r.status_code for r in post_many(server.url, 8)]
        assert statuses.count(202) == 5 and statuses.count(429) == 3
        over = httpx.post(f"{server.url}/voice/route", json={"extension": "2001"}, headers=BEARER)
        assert over.status_code == 429 and over.json()["cap"] == "VOICE_QUEUE_MAX"
        build_worker(configured, redis_client).work(burst=True)  # the voice jobs start: their slots are free
        assert VoiceSlots.from_settings(redis_client, configured).queued() == 0
        statuses = [r.status_code for r in post_many(server.url, 8, prefix="later")]
        assert statuses.count(202) == 5 and statuses.count(429) == 3


def test_a_chat_routed_while_voice_jobs_wait_is_not_delayed(rc_settings, redis_client, rc_state):
    """Voice jobs queued first, a chat's webhook after them: a burst worker runs the chat's job first."""
    team = seed_team(rc_state)
    rc_state.add_agent("ivy", status="offline", extension="2001", departments=[SALES])
    configured = voice_settings(rc_settings)
    room, _ = rc_state.open_chat(SALES)
    payload = load_fixture("LivechatSessionQueued__basic")
    payload |= {"_id": room["_id"], "departmentId": SALES}
    payload["visitor"]["_id"] = room["v"]["_id"]
    with ServerThread(create_app(configured)) as server:
        assert {r.status_code for r in post_many(server.url, 30)} == {202}
        chat = httpx.post(
            f"{server.url}/webhooks/livechat", json=payload, headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
        )
        assert chat.status_code == 200 and chat.json()["outcome"] == "accepted"
        build_worker(configured, redis_client).work(burst=True)
    voice = Job.fetch_many([f"voice-call-{n}" for n in range(30)], redis_client, serializer=JSONSerializer)
    assert all(job is not None and job.get_status() == "finished" for job in voice)
    calls = rc_state.requests()
    take = next(i for i, r in enumerate(calls) if r.path == "/api/v1/livechat/inquiries.take" and r.status == 200)
    first_voice = next(i for i, r in enumerate(calls) if r.query.get("includeExtension") == "2001")
    assert take < first_voice, "the chat was taken before the first voice job called Rocket.Chat"
    assert rc_state.rooms[room["_id"]]["servedBy"]["_id"] in (team["ana"], team["bo"])


def test_the_settings_and_their_bounds():
    assert (Settings.from_env({}).voice_queue_max, Settings.from_env({}).voice_queue_max_per_token) == (1000, 100)
    configured = Settings.from_env({"VOICE_QUEUE_MAX": "50", "VOICE_QUEUE_MAX_PER_TOKEN": "7"})
    assert (configured.voice_queue_max, configured.voice_queue_max_per_token) == (50, 7)
    for name in ("VOICE_QUEUE_MAX", "VOICE_QUEUE_MAX_PER_TOKEN"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: "0"})
