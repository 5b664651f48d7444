"""Leases: one holder at a time, renewed while held, lapsing only when nobody renews them."""

import os
import threading

import redis

from bridge.lease import Leases
from tests.support import wait_for


def test_one_holder_at_a_time_and_a_released_lease_is_free(redis_client):
    leases = Leases(redis_client)
    first = leases.acquire("room:r1")
    assert first is not None
    assert leases.acquire("room:r1") is None, "held: the second caller is told at once"
    assert leases.acquire("room:r2") is not None
    leases.release(first)
    assert leases.acquire("room:r1") is not None


def test_the_value_names_the_holder_and_fences_grow(redis_client):
    leases = Leases(redis_client)
    first, second = leases.acquire("a"), leases.acquire("b")
    fence, host, pid, _ = leases.holder("a").split("|")
    assert int(pid) == os.getpid() and host and int(fence) == first.fence
    assert second.fence > first.fence


def test_a_lease_outlives_its_ttl_while_its_holder_lives(redis_client):
    leases = Leases(redis_client, ttl=0.6)
    lease = leases.acquire("slow-call")
    threading.Event().wait(2.0)  # a Rocket.Chat call three times slower than the TTL
    assert leases.still_held(lease) and not lease.lost.is_set()
    leases.release(lease)
    assert leases.holder("slow-call") is None


def test_a_dead_holders_lease_expires_by_itself(redis_url):
    # A holder that stops renewing (SIGKILLed: tests/test_liveness.py kills real processes) frees it within the TTL.
    connection = redis.Redis.from_url(redis_url)
    connection.set("ob:lease:rebuild", "7|elsewhere|999999|dead", px=600)
    leases = Leases(connection, ttl=0.6)
    assert leases.acquire("rebuild") is None
    wait_for(lambda: leases.acquire("rebuild") is not None, timeout=2)


def test_a_fenced_write_needs_the_lease_to_still_be_the_holders(redis_client):
    leases = Leases(redis_client)
    lease = leases.acquire("room:r1")
    assert leases.fenced_set(lease, "ob:in-flight:r1", "agent", ttl_seconds=5)
    redis_client.delete("ob:lease:room:r1")  # it lapsed (a process frozen past its TTL)
    taker = leases.acquire("room:r1")  # and someone else took it
    assert not leases.fenced_set(lease, "ob:in-flight:r1", "other", ttl_seconds=5)
    assert lease.lost.is_set()
    assert redis_client.get("ob:in-flight:r1") == b"agent"
    leases.release(lease)  # releasing a lapsed lease leaves the new holder's alone
    assert leases.still_held(taker)


def test_a_lease_taken_over_is_reported_lost_by_the_keeper(redis_client):
    leases = Leases(redis_client, ttl=0.6)
    lease = leases.acquire("x")
    redis_client.set("ob:lease:x", "99|other|1|someone-else")
    wait_for(lease.lost.is_set, timeout=2)
