import threading

import pytest
import redis

from bridge.cache import SharedCache
from bridge.errors import RocketChatUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_fresh_entry_is_served_without_fetching(redis_client):
    cache, calls = SharedCache(redis_client), []
    fetch = lambda: calls.append(1) or ["a"]  # noqa: E731
    assert cache.get("x", fetch, ttl=60, stale_max=60).outcome == "refreshed"
    assert cache.get("x", fetch, ttl=60, stale_max=60).value == ["a"]
    assert len(calls) == 1


def test_concurrent_readers_of_a_missing_entry_cause_one_fetch(redis_url):
    calls, results = [], []
    gate = threading.Event()

    def fetch():
        calls.append(1)
        gate.wait(1.0)  # keep the lock while the others arrive
        return {"v": 1}

    def read():
        connection = redis.Redis.from_url(redis_url)
        results.append(SharedCache(connection).get("x", fetch, ttl=60, stale_max=60).value)
        connection.close()

    threads = [threading.Thread(target=read) for _ in range(30)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [{"v": 1}] * 30


def test_refresh_ahead_happens_before_expiry(redis_client):
    clock, values = Clock(), iter([1, 2])
    cache = SharedCache(redis_client, clock=clock)
    cache.get("x", lambda: next(values), ttl=10, stale_max=0)
    clock.now += 8  # past 75 % of the TTL, still fresh
    result = cache.get("x", lambda: next(values), ttl=10, stale_max=0)
    assert (result.value, result.outcome) == (2, "refreshed")


def test_stale_is_served_while_fetching_fails_and_refreshed_after(redis_client):
    clock = Clock()
    cache = SharedCache(redis_client, clock=clock)
    cache.get("x", lambda: "old", ttl=10, stale_max=100)
    clock.now += 30

    def failing():
        raise RocketChatUnavailable("Rocket.Chat is down", route="GET /x")

    stale = cache.get("x", failing, ttl=10, stale_max=100)
    assert (stale.value, stale.outcome, stale.stale) == ("old", "stale", True)
    clock.now += 3  # past the pause after a failed refresh
    assert cache.get("x", lambda: "new", ttl=10, stale_max=100).value == "new"


def test_past_the_stale_bound_the_error_surfaces(redis_client):
    clock = Clock()
    cache = SharedCache(redis_client, clock=clock)
    cache.get("x", lambda: "old", ttl=10, stale_max=100)
    clock.now += 200

    def failing():
        raise RocketChatUnavailable("Rocket.Chat is down", route="GET /x")

    with pytest.raises(RocketChatUnavailable):
        cache.get("x", failing, ttl=10, stale_max=100)


def test_after_a_failed_refresh_others_serve_stale_without_calling(redis_client):
    clock, calls = Clock(), []
    cache = SharedCache(redis_client, clock=clock)
    cache.get("x", lambda: "old", ttl=10, stale_max=100)
    clock.now += 30

    def failing():
        calls.append(1)
        raise RocketChatUnavailable("down", route="GET /x")

    for _ in range(10):
        assert cache.get("x", failing, ttl=10, stale_max=100).stale
    assert len(calls) == 1
