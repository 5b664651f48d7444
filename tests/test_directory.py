"""The cached agent directory against the double: one call for many readers, 7.x = 8.x, stale while failing."""

import threading
import time

import pytest
import redis

from bridge.cache import SharedCache
from bridge.directory import AgentDirectory
from bridge.errors import FetchInProgress
from bridge.load import LoadBook
from bridge.rocketchat import RocketChat
from tests.support import report
from tests.team import SALES, SUPPORT, seed_team

AVAILABLE = "/api/v1/omnichannel/agents/available"
USERS = "/api/v1/livechat/users/agent"


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


def make_directory(settings, connection, clock=None):
    rc = RocketChat(settings)
    cache = SharedCache(connection, clock=clock) if clock else SharedCache(connection)
    return AgentDirectory(settings, connection, lambda: rc, cache=cache), rc


@pytest.fixture
def team(rc_state):
    return seed_team(rc_state)


def test_two_hundred_concurrent_lookups_make_one_agents_available_call(rc_settings, rc_state, team, redis_url):
    results, busy, errors = [], [], []

    def look_up():
        connection = redis.Redis.from_url(redis_url)  # its own connection and client, like another process
        directory, rc = make_directory(rc_settings, connection)
        try:
            for _ in range(200):  # a job that got FetchInProgress comes back later (here: at once)
                try:
                    results.append(len(directory.agents().agents))
                    break
                except FetchInProgress:
                    busy.append(1)
                    time.sleep(0.05)
        except Exception as error:  # collected and asserted below
            errors.append(error)
        finally:
            rc.close()
            connection.close()

    threads = [threading.Thread(target=look_up) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [len(team)] * 200
    assert rc_state.calls("GET", AVAILABLE) == 1
    assert rc_state.calls("GET", "/api/info") == 1
    report(f"directory: 200 concurrent lookups, 1 agents/available call, {len(busy)} told to come back")


@pytest.mark.parametrize("version", ["7.13.9", "8.8.1"])
def test_7x_and_8x_yield_the_same_directory(rc_settings, rc_state, team, redis_client, version):
    rc_state.version = version
    directory, rc = make_directory(rc_settings, redis_client)
    listing = directory.agents()
    takers = {a.username: a.departments for a in listing.can_take_work(accept_idle=False)}
    assert takers == {"ana": (SALES,), "bo": (SALES, SUPPORT), "fay": (SUPPORT,)}
    assert listing.source == ("available" if version.startswith("7") else "users")
    by_name = {a.username: a for a in listing.agents}
    assert by_name["bo"].max_chats == 3 and by_name["fay"].max_chats is None
    assert [a.username for a in listing.in_department(SALES) if a in listing.can_take_work(False)] == ["ana", "bo"]
    rc.close()


def test_a_404_from_agents_available_switches_to_livechat_users_agent(rc_settings, rc_state, team, redis_client):
    rc_state.version = "8.8.1"
    directory, rc = make_directory(rc_settings.replace(agent_source="auto"), redis_client)
    directory.cache.put("agent-source", "available", ttl=600)  # as if detected on 7.x before an upgrade
    assert {a.username for a in directory.agents().can_take_work(False)} == {"ana", "bo", "fay"}
    assert rc_state.log_lines()[:2] == [f"GET {AVAILABLE} > 404", f"GET {USERS} > 200"]
    assert directory.source() == "users"
    rc.close()


def test_idle_agents_are_taken_only_when_configured(rc_settings, rc_state, team, redis_client):
    directory, rc = make_directory(rc_settings.replace(accept_idle_agents=True), redis_client)
    assert "cy" in {a.username for a in directory.agents().can_take_work(accept_idle=True)}
    rc.close()


def test_stale_data_is_served_during_an_outage_and_refreshed_after(rc_settings, rc_state, team, redis_client):
    clock = Clock()
    directory, rc = make_directory(rc_settings, redis_client, clock=clock)
    assert not directory.agents().stale
    rc_state.add_agent("gus", departments=[SALES])
    rc_state.inject("/api/v1/omnichannel", status=503)
    clock.now += 60  # past the 10 s TTL
    during = directory.agents()
    assert during.stale and "gus" not in {a.username for a in during.agents}
    assert rc_state.calls("GET", AVAILABLE) == 1 + rc_settings.rocketchat_retries + 1
    rc_state.clear_faults()
    clock.now += 3  # past the pause after a failed refresh
    after = directory.agents()
    assert not after.stale and "gus" in {a.username for a in after.agents}
    rc.close()


def test_load_from_webhooks_shows_without_a_refetch(rc_settings, rc_state, team, redis_client):
    directory, rc = make_directory(rc_settings, redis_client)
    assert directory.agents().load == {}
    book = LoadBook(redis_client)
    book.assign("room-1", team["ana"])
    book.assign("room-2", team["ana"])
    book.assign("room-2", team["bo"])  # forwarded
    assert directory.agents().load == {team["ana"]: 1, team["bo"]: 1}
    book.close("room-1")
    assert directory.agents().load == {team["bo"]: 1}
    assert rc_state.calls("GET", AVAILABLE) == 1
    rc.close()
