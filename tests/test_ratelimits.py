"""Rate limits learned from Rocket.Chat's headers, shared through Redis, never waited for."""

import threading

import pytest
import redis

from bridge.ratelimits import Heard, RateLimits, heard_from

ROUTE = "POST /api/v1/livechat/inquiries.take"


def limited(remaining: int, limit: int = 10, reset_in_ms: int = 60_000) -> Heard:
    return Heard(True, limit, remaining, reset_in_ms)


def test_an_unknown_route_is_probed_by_one_caller_at_a_time(redis_client):
    limits = RateLimits(redis_client)
    probe = limits.acquire(ROUTE)
    assert probe.ok and probe.why == "probe"
    second = limits.acquire(ROUTE)
    assert not second.ok and second.why == "learning" and second.wait < 1
    limits.learned(ROUTE, probe, limited(remaining=9))
    assert limits.acquire(ROUTE).why == "granted"


def test_a_failed_probe_lets_the_next_caller_probe(redis_client):
    limits = RateLimits(redis_client)
    probe = limits.acquire(ROUTE)
    limits.learned(ROUTE, probe, None)  # a 5xx or a timeout: nothing learned
    assert limits.acquire(ROUTE).why == "probe"


def test_only_the_calls_left_are_granted_however_many_processes_ask_at_once(redis_url):
    setup = RateLimits(redis.Redis.from_url(redis_url))
    setup.learned(ROUTE, setup.acquire(ROUTE), limited(remaining=5))
    granted = []

    def ask() -> None:
        connection = redis.Redis.from_url(redis_url)
        for _ in range(10):
            granted.append(RateLimits(connection).acquire(ROUTE).ok)
        connection.close()

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 5


def test_an_answer_lowers_the_calls_left_but_never_raises_them(redis_client):
    limits = RateLimits(redis_client)
    limits.learned(ROUTE, limits.acquire(ROUTE), limited(remaining=9))
    limits.learned(ROUTE, None, limited(remaining=3))  # another client of the account used some
    limits.learned(ROUTE, None, limited(remaining=8))  # a late answer of an earlier call
    assert limits.known()[ROUTE]["remaining"] == 3


def test_an_exhausted_window_says_when_it_ends_and_then_probes_again(redis_client):
    limits = RateLimits(redis_client)
    limits.learned(ROUTE, limits.acquire(ROUTE), limited(remaining=0, reset_in_ms=300))
    refused = limits.acquire(ROUTE)
    assert not refused.ok and refused.why == "exhausted" and 0 < refused.wait <= 0.3
    threading.Event().wait(refused.wait + 0.05)
    assert limits.acquire(ROUTE).why == "probe"


def test_routes_have_separate_limits(redis_client):
    limits = RateLimits(redis_client)
    limits.learned(ROUTE, limits.acquire(ROUTE), limited(remaining=0))
    assert not limits.acquire(ROUTE).ok
    assert limits.acquire("GET /api/v1/livechat/inquiries.list").ok


def test_a_route_without_headers_is_unlimited(redis_client):
    limits = RateLimits(redis_client)
    limits.learned(ROUTE, limits.acquire(ROUTE), Heard(limited=False))
    assert all(limits.acquire(ROUTE).why == "granted" for _ in range(100))
    assert limits.known() == {ROUTE: {"mode": "unlimited"}}


def test_a_429_blocks_the_route_for_everyone_until_its_reset(redis_client):
    limits = RateLimits(redis_client)
    assert limits.block(ROUTE, limited(remaining=0, reset_in_ms=2000)) == 2.0
    refused = RateLimits(redis_client).acquire(ROUTE)
    assert not refused.ok and refused.why == "blocked" and 1.5 < refused.wait <= 2.0


def test_the_optional_cap_holds_on_an_unlimited_route(redis_client):
    limits = RateLimits(redis_client, calls_per_minute=3)
    limits.learned(ROUTE, limits.acquire(ROUTE), Heard(limited=False))
    verdicts = [limits.acquire(ROUTE) for _ in range(4)]
    assert [v.ok for v in verdicts] == [True, True, False, False]
    assert verdicts[-1].why == "capped" and 50 < verdicts[-1].wait <= 60


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {}, Heard(limited=False)),
        (200, {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "4", "x-ratelimit-reset": "1000"}, "limited"),
        (401, {}, None),  # refused before Rocket.Chat's limiter runs: says nothing
        (503, {}, None),
        (404, {}, None),  # an unknown route: answered before the limiter
    ],
)
def test_what_an_answer_says_of_its_routes_limit(status, headers, expected):
    heard = heard_from(status, headers, now=0.0)
    if expected == "limited":
        assert heard is not None and heard.limited and (heard.limit, heard.remaining) == (10, 4)
    else:
        assert heard == expected


def test_the_reset_is_read_in_rocketchats_own_clock_from_its_date_header():
    # Rocket.Chat's clock is an hour ahead of ours: the delay still comes out right (plus the margin).
    headers = {
        "x-ratelimit-limit": "10",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str((1_700_003_600 + 20) * 1000),
        "date": "Tue, 14 Nov 2023 23:13:20 GMT",  # 1_700_003_600
    }
    heard = heard_from(200, headers, now=1_700_000_000.0)
    assert heard is not None and 20_000 <= heard.reset_in_ms <= 20_500


def test_a_probe_is_needed_before_anything_is_known_and_after_a_window_ends(redis_client):
    limits = RateLimits(redis_client)
    assert limits.needs_probe(ROUTE)
    limits.learned(ROUTE, limits.acquire(ROUTE), limited(remaining=5, reset_in_ms=200))
    assert not limits.needs_probe(ROUTE)
    threading.Event().wait(0.25)
    assert limits.needs_probe(ROUTE)
    limits.learned(ROUTE, None, Heard(limited=False))
    assert not limits.needs_probe(ROUTE)
