"""External Service, voice routing and decisions over real HTTP, with Redis and the Rocket.Chat double."""

import asyncio

import httpx
import pytest

from bridge.app import create_app
from bridge.directory import AgentDirectory
from bridge.jobqueue import REFRESH_DIRECTORY, make_queue
from bridge.load import LoadBook
from bridge.rocketchat import RocketChat
from bridge.settings import Secret
from tests.support import ServerThread
from tests.team import SALES, SUPPORT, seed_team
from workers.worker import build_worker

API_TOKEN = "bridge-api-token-31f"
QUEUE_TOKEN = "external-queue-token-9ab"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def team(rc_state):
    return seed_team(rc_state)


@pytest.fixture
def api_settings(rc_settings):
    return rc_settings.replace(api_token=Secret(API_TOKEN), external_queue_token=Secret(QUEUE_TOKEN))


@pytest.fixture
def web(api_settings):
    with ServerThread(create_app(api_settings)) as server:
        yield server


@pytest.fixture
def warm_directory(api_settings, redis_client, team):
    rc = RocketChat(api_settings)
    AgentDirectory(api_settings, redis_client, lambda: rc).agents()
    rc.close()


def ask(web, **params):
    return httpx.get(f"{web.url}/external-queue", params=params, headers={"X-RocketChat-Secret-Token": QUEUE_TOKEN})


def test_ten_parallel_external_requests_share_one_answer_and_one_reservation(
    web, warm_directory, redis_client, rc_state
):
    async def ten():
        async with httpx.AsyncClient(base_url=web.url, headers={"X-RocketChat-Secret-Token": QUEUE_TOKEN}) as client:
            return await asyncio.gather(
                *[client.get("/external-queue", params={"departmentId": SALES}) for _ in range(10)]
            )

    calls_before = len(rc_state.requests())
    answers = asyncio.run(ten())
    assert {r.status_code for r in answers} == {200}
    bodies = {(r.json()["_id"], r.json()["username"]) for r in answers}
    assert len(bodies) == 1
    ((agent_id, username),) = bodies
    assert username in ("ana", "bo")
    assert LoadBook(redis_client).counts() == {agent_id: 1}
    assert len(rc_state.requests()) == calls_before, "Rocket.Chat is never called in the request path"


def test_external_answers_respect_ignore_agent_and_capacity(web, warm_directory, team, redis_client):
    first = ask(web, departmentId=SUPPORT, ignoreAgentId=team["bo"]).json()
    assert first["username"] == "fay"
    book = LoadBook(redis_client)
    for n in range(3):
        book.assign(f"r{n}", team["fay"])
    redis_client.delete(*redis_client.keys("ob:external:*"))
    assert ask(web, departmentId=SUPPORT, ignoreAgentId=team["bo"]).json() == {}


def test_external_without_a_cached_directory_answers_empty_and_asks_for_a_refresh(web, api_settings, redis_client):
    assert ask(web).json() == {}
    queue = make_queue(api_settings, redis_client)
    assert [queue.fetch_job(j).func_name for j in queue.job_ids] == [REFRESH_DIRECTORY]


@pytest.mark.parametrize("headers", [{}, {"X-RocketChat-Secret-Token": "wrong"}])
def test_external_needs_the_secret_token(web, headers):
    response = httpx.get(f"{web.url}/external-queue", headers=headers)
    assert response.status_code == 403


def test_external_is_off_without_a_token(rc_settings):
    with ServerThread(create_app(rc_settings)) as server:
        response = httpx.get(f"{server.url}/external-queue")
    assert response.status_code == 404
    assert "ROCKETCHAT_EXTERNAL_QUEUE_TOKEN" in response.json()["error"]


def test_voice_route_moves_the_extension_to_an_available_agent(web, api_settings, redis_client, rc_state, team):
    holder = rc_state.add_agent("ivy", status="offline", extension="2001", departments=[SALES])
    response = httpx.post(f"{web.url}/voice/route", json={"extension": "2001", "departmentId": SALES}, headers=BEARER)
    assert response.status_code == 202
    decision_url = response.json()["decision"]
    build_worker(api_settings, redis_client).work(burst=True)
    decision = httpx.get(f"{web.url}{decision_url}", headers=BEARER).json()["decisions"][-1]
    assert decision["outcome"] == "assigned"
    assert decision["agent_username"] in ("ana", "bo")
    assert decision["previous_holder"] == "ivy"
    assert rc_state.users[team[decision["agent_username"]]]["extension"] == "2001"
    assert "extension" not in rc_state.users[holder["_id"]]
    assert rc_state.log_lines()[-2:] == [
        "DELETE /api/v1/omnichannel/agent/extension/ivy > 200",
        "POST /api/v1/omnichannel/agent/extension > 200",
    ]


def test_voice_on_8x_fails_clearly(web, api_settings, redis_client, rc_state, team):
    rc_state.version = "8.8.1"
    response = httpx.post(f"{web.url}/voice/route", json={"extension": "2001", "requestId": "call-1"}, headers=BEARER)
    assert response.json()["id"] == "call-1"
    build_worker(api_settings, redis_client).work(burst=True)
    decision = httpx.get(f"{web.url}/decisions/voice/call-1", headers=BEARER).json()["decisions"][-1]
    assert decision["outcome"] == "failed" and "8.0" in decision["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "extension"),
        ({"extension": ""}, "extension"),
        ({"extension": "20 01"}, "extension"),
        ({"extension": 2001}, "extension"),
        ({"extension": "2001", "departmentId": ["x"]}, "departmentId"),
        ({"extension": "2001", "requestId": "a" * 65}, "requestId"),
    ],
)
def test_voice_route_refuses_bad_bodies(web, body, field, redis_client):
    response = httpx.post(f"{web.url}/voice/route", json=body, headers=BEARER)
    assert response.status_code == 400 and response.json()["field"] == field
    assert redis_client.keys("rq:job:*") == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer nope"}, 403), ({"Authorization": "Basic abc"}, 401)],
)
def test_bearer_endpoints_need_the_api_token(web, headers, status):
    assert httpx.post(f"{web.url}/voice/route", json={"extension": "1"}, headers=headers).status_code == status
    assert httpx.get(f"{web.url}/decisions/room1", headers=headers).status_code == status


def test_decisions_of_an_unknown_room_are_404(web):
    assert httpx.get(f"{web.url}/decisions/nope", headers=BEARER).status_code == 404
