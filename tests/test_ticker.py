"""The ticker thread: ticks once per period for the deployment, and when routing asks to be woken."""

import time

from bridge.lease import Leases
from tests.support import wait_for
from workers import context
from workers.ticker import Ticker


def test_a_tick_runs_when_due_and_again_when_routing_asks_to_be_woken(rc_settings, redis_client):
    context.install(rc_settings.replace(tick_seconds=60), redis_client)
    ticker = Ticker(rc_settings.replace(tick_seconds=60))
    ticker.start()
    try:
        wait_for(lambda: redis_client.get("ob:tick-last"), timeout=3)  # the first one is due at once
        first = float(redis_client.get("ob:tick-last"))
        redis_client.zadd("ob:wake", {"routing": time.time() + 0.3})
        wait_for(lambda: float(redis_client.get("ob:tick-last")) > first, timeout=3)
        assert float(redis_client.get("ob:tick-last")) - first < 2, "woken, not the next period (60 s)"
        assert not redis_client.zcard("ob:wake")
    finally:
        ticker.stop()


def test_a_tick_running_elsewhere_is_not_waited_for_and_the_wake_up_is_kept(rc_settings, redis_client):
    context.install(rc_settings, redis_client)
    elsewhere = Leases(redis_client).acquire("tick")
    redis_client.set("ob:tick-due", "1", ex=60)
    redis_client.zadd("ob:wake", {"routing": time.time() - 1})
    started = time.monotonic()
    assert Ticker(rc_settings).look() == "a tick is running elsewhere"
    assert time.monotonic() - started < 1
    assert redis_client.zscore("ob:wake", "routing") > time.time(), "asked again a moment later"
    assert redis_client.get("ob:tick-last") is None
    Leases(redis_client).release(elsewhere)


def test_ticks_keep_running_while_the_main_thread_is_busy(rc_settings, redis_client):
    context.install(rc_settings.replace(tick_seconds=1), redis_client)
    ticker = Ticker(rc_settings.replace(tick_seconds=1))
    ticker.start()
    try:
        time.sleep(3.5)  # this thread is "busy in a job" (a worker's main thread): the ticker does not care
        assert float(redis_client.get("ob:tick-last")) > time.time() - 1.5
    finally:
        ticker.stop()
