"""The live view over real HTTP: the page, its JSON data after real routing, the token policy; and the one
snapshot both the page and ``omnibridge status`` are drawn from, with the routed-chats timeline it reads."""

import re
import time
from collections import Counter

import httpx
import pytest

from bridge import keys, timeline
from bridge.app import create_app
from bridge.jobqueue import enqueue, make_queue
from bridge.sandbox import payloads
from bridge.settings import Secret
from bridge.status import render
from tests.conftest import WEBHOOK_TOKEN
from tests.processes import free_port
from tests.support import ServerThread
from tests.team import SALES, SUPPORT, seed_team
from workers.worker import build_worker

API_TOKEN = "dashboard-api-token-4e2"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def team(rc_state):
    return seed_team(rc_state)


@pytest.fixture
def dash_settings(rc_settings):
    return rc_settings.replace(api_token=Secret(API_TOKEN), job_retries=0)


@pytest.fixture
def web(dash_settings):
    with ServerThread(create_app(dash_settings)) as server:
        yield server


def queue_chat(web, rc_state, department):
    """Open a chat in the double and post its ``LivechatSessionQueued`` webhook, as Rocket.Chat does."""
    room, _ = rc_state.open_chat(department=department)
    visitor = rc_state.visitors[room["v"]["_id"]]
    payload = payloads.room_event("LivechatSessionQueued", room, visitor, messages=rc_state.messages_of(room["_id"]))
    response = httpx.post(
        f"{web.url}/webhooks/livechat", json=payload, headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
    )
    assert response.status_code == 200, response.text
    return room["_id"]


@pytest.fixture
def routed(dash_settings, rc_state, team, web, redis_client):
    """Six sales chats routed for real (capacity 5: one waits), and one job that failed."""
    rooms = [queue_chat(web, rc_state, SALES) for _ in range(6)]
    # A failing job whose exception quotes a secret: the page shows its last line, masked.
    failed = enqueue(
        make_queue(dash_settings, redis_client), dash_settings, "workers.jobs.route_chat", {"type": API_TOKEN}
    )
    build_worker(dash_settings, redis_client).work(burst=True)
    return rooms, failed


def data(web, **headers):
    return httpx.get(f"{web.url}/dashboard/data", headers=headers or BEARER)


def test_data_shows_agents_waiting_chats_decisions_and_failed_jobs(web, routed, rc_state, team):
    rooms, failed = routed
    response = data(web)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    seen = response.json()
    assert set(seen) == {"at", "directory", "agents", "waiting", "decisions", "timeline", "jobs"}

    agents = {a["username"]: a for a in seen["agents"]}
    assert list(agents) == sorted(team)
    assert agents["ana"] | {"load": None} == {
        "id": team["ana"],
        "username": "ana",
        "name": agents["ana"]["name"],
        "status": "online",
        "status_livechat": "available",
        "available": True,
        "presence": "available (online)",
        "load": None,
        "capacity": 2,
        "departments": [SALES],
        "extension": None,
    }
    assert agents["ana"]["load"] + agents["bo"]["load"] == 5 and agents["ana"]["load"] == 2
    assert agents["bo"]["departments"] == [SALES, SUPPORT] and agents["bo"]["capacity"] == 3
    assert agents["cy"]["presence"] == "away (idle agents are not accepted)" and not agents["cy"]["available"]
    assert agents["fay"]["capacity"] == 3  # no maximum set: DEFAULT_MAX_CHATS
    assert seen["directory"]["source"] == "available" and seen["directory"]["stale"] is False

    served = {rid for rid in rooms if rc_state.rooms[rid].get("servedBy")}
    (waiting,) = set(rooms) - served
    assert seen["waiting"]["count"] == 1
    (chat,) = seen["waiting"]["chats"]
    assert chat["room_id"] == waiting and chat["department_id"] == SALES and chat["waiting_seconds"] >= 0

    decisions = seen["decisions"]
    assert Counter(d["outcome"] for d in decisions) == {"routed": 5, "waiting": 1}
    assert [d["at"] for d in decisions] == sorted((d["at"] for d in decisions), reverse=True)
    assert all(d["ago"] >= 0 for d in decisions)
    (wait,) = [d for d in decisions if d["room_id"] == waiting]
    assert wait["outcome"] == "waiting" and wait["strategy"] == "least_loaded"
    assert {c["username"]: c["excluded"] for c in wait["candidates"]}["ana"] == "at capacity (2/2)"
    first_routed = next(d for d in decisions if d["outcome"] == "routed")
    assert first_routed["agent_username"] in ("ana", "bo") and first_routed["waited_seconds"] >= 0

    jobs = seen["jobs"]
    assert (jobs["queued"], jobs["running"], jobs["failed"]) == (0, 0, 1)
    (job,) = jobs["latest_failed"]
    assert job["id"] == failed and job["function"] == "workers.jobs.route_chat" and job["ended_at"] > 0
    assert "KeyError" in job["last_line"] and API_TOKEN not in job["last_line"] and "********" in job["last_line"]


def test_data_shows_chats_routed_over_the_last_ten_minutes(web, redis_client):
    now = 1_800_000_005.0  # in the bucket that starts at ...000
    timeline.record_routed(redis_client, 1.0, now)
    timeline.record_routed(redis_client, 3.0, now - 2)
    timeline.record_routed(redis_client, 0.5, now - 30)
    timeline.record_routed(redis_client, 9.0, now - timeline.WINDOW_SECONDS)  # just out of the window
    assert 0 < redis_client.ttl(keys.timeline(1_800_000_000)) <= timeline.RETENTION_SECONDS

    buckets = timeline.recent(redis_client, now)
    assert len(buckets) == timeline.WINDOW_SECONDS // timeline.BUCKET_SECONDS
    assert buckets[-1] == {"start": 1_800_000_000, "routed": 2, "mean_wait": 2.0}
    assert buckets[-4] == {"start": 1_799_999_970, "routed": 1, "mean_wait": 0.5}
    assert buckets[0]["start"] == 1_800_000_000 - timeline.WINDOW_SECONDS + timeline.BUCKET_SECONDS
    assert sum(b["routed"] for b in buckets) == 3 and buckets[-2]["mean_wait"] is None

    for waited in (0.2, 0.4):  # routed now, as the page sees it
        timeline.record_routed(redis_client, waited, time.time())
    seen = data(web).json()["timeline"]
    assert seen["bucket_seconds"] == timeline.BUCKET_SECONDS and len(seen["buckets"]) == len(buckets)
    assert seen["routed_last_minute"] == 2 and seen["mean_wait_last_minute"] == pytest.approx(0.3)


def test_the_page_is_one_self_contained_file_that_names_no_other_host(web):
    response = httpx.get(f"{web.url}/?token={API_TOKEN}")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|href|action)\s*=\s*[\"'](?!data:)", page), "the page loads nothing"
    assert "@import" not in page and "url(" not in page
    assert API_TOKEN not in page, "the token is read by the script from the address, never written into the page"
    policy = response.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'; script-src 'sha256-") and "connect-src 'self'" in policy
    assert response.headers["referrer-policy"] == "no-referrer" and response.headers["cache-control"] == "no-store"
    assert httpx.get(f"{web.url}/dashboard", headers=BEARER).text == page


@pytest.mark.parametrize("path", ["/", "/dashboard", "/dashboard/data"])
@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({}, {}, 401),
        ({"token": "nope"}, {}, 403),
        ({}, {"Authorization": "Bearer nope"}, 403),
        ({}, {"Authorization": f"Basic {API_TOKEN}"}, 401),
    ],
)
def test_without_the_right_token_nothing_is_shown(web, path, params, headers, status):
    if path == "/dashboard/data" and params:
        status = 401  # the data takes the token in a header only, so polling never puts it in a URL
    response = httpx.get(f"{web.url}{path}", params=params, headers=headers)
    assert response.status_code == status
    assert "agents" not in response.text and "nope" not in response.text


def test_data_refuses_a_token_in_its_address(web):
    assert httpx.get(f"{web.url}/dashboard/data", params={"token": API_TOKEN}).status_code == 401


@pytest.mark.parametrize(("insecure_dev", "status"), [(False, 403), (True, 200)])
def test_without_a_configured_token_the_view_is_closed_unless_insecure_dev(settings, insecure_dev, status):
    with ServerThread(create_app(settings.replace(insecure_dev=insecure_dev))) as server:
        assert httpx.get(f"{server.url}/").status_code == status
        assert httpx.get(f"{server.url}/dashboard/data").status_code == status


def test_data_without_redis_is_a_503_the_page_can_show(dash_settings):
    down = dash_settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with ServerThread(create_app(down)) as server:
        response = httpx.get(f"{server.url}/dashboard/data", headers=BEARER)
        assert response.status_code == 503 and response.json()["error"].startswith("Redis unavailable")
        assert httpx.get(f"{server.url}/", headers=BEARER).status_code == 200


def test_omnibridge_status_renders_the_same_snapshot(dash_settings, routed, redis_client):
    screen = render(dash_settings, redis_client)
    lines = screen.splitlines()
    assert lines[2].startswith("agents (available, ") and lines[3].split() == [
        "agent",
        "presence",
        "load",
        "departments",
    ]
    ana = next(line for line in lines if line.split()[:1] == ["ana"])
    assert ana.split() == ["ana", "available", "(online)", "2/2", SALES]
    assert "chats waiting: 1" in lines
    assert sum(1 for line in lines if " routed " in line) == 5
    assert lines[-1] == "jobs: 0 queued, 0 running, 1 failed (omnibridge failed)"
