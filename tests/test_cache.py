import threading

import pytest
import redis

from bridge.cache import SharedCache
from bridge.errors import FetchInProgress, RocketChatUnavailable
from tests.support import wait_for


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


def test_concurrent_readers_of_a_missing_entry_cause_one_fetch_and_wait_for_nobody(redis_url):
    calls, results, busy = [], [], []
    gate = threading.Event()

    def fetch():
        calls.append(1)
        gate.wait(2.0)  # keep the lease while the others arrive
        return {"v": 1}

    def read():
        connection = redis.Redis.from_url(redis_url)
        try:
            results.append(SharedCache(connection).get("x", fetch, ttl=60, stale_max=60).value)
        except FetchInProgress:
            busy.append(1)  # at once, not after the fetch: nobody waits for another process
        connection.close()

    threads = [threading.Thread(target=read) for _ in range(30)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(busy) == 29, timeout=1.5)  # the fetch is still held by the gate
    gate.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [{"v": 1}]
    assert SharedCache(redis.Redis.from_url(redis_url)).get("x", fetch, ttl=60, stale_max=60).value == {"v": 1}
    assert len(calls) == 1, "whoever comes back finds the entry"


def test_a_reader_that_may_wait_gets_the_other_process_result(redis_url):
    gate = threading.Event()

    def fetch():
        gate.wait(2.0)
        return {"v": 2}

    holder = threading.Thread(target=lambda: SharedCache(redis.Redis.from_url(redis_url)).get("x", fetch, 60, 60))
    holder.start()
    wait_for(lambda: redis.Redis.from_url(redis_url).exists("ob:lease:refresh:x"), timeout=2)
    threading.Timer(0.2, gate.set).start()
    value = SharedCache(redis.Redis.from_url(redis_url)).get("x", fetch, ttl=60, stale_max=60, wait_max=5).value
    holder.join()
    assert value == {"v": 2}


def test_a_dead_refreshers_lease_frees_within_seconds(redis_client):
    # A process that died mid-fetch leaves its lease: nobody renews it, so it expires on its own.
    redis_client.set("ob:lease:refresh:x", "1|host|999999|dead", px=5000)
    cache = SharedCache(redis_client)
    with pytest.raises(FetchInProgress):
        cache.get("x", lambda: {"v": 3}, ttl=60, stale_max=60)
    wait_for(lambda: not redis_client.exists("ob:lease:refresh:x"), timeout=6, interval=0.1)
    assert cache.get("x", lambda: {"v": 3}, ttl=60, stale_max=60).value == {"v": 3}


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
