"""The periodic tick, run by a thread of every worker process (not by RQ, nor by RQ's scheduler).

Every second the thread looks at two things in Redis: whether the next tick is due (``tick-due``, set with NX for
``TICK_SECONDS`` by whichever ticker runs a tick, so the deployment ticks once per period however many workers
run), and whether routing asked to be woken (``wake``: a rate limit, a lease held elsewhere or Rocket.Chat not
answering made a job leave chats waiting until a given time). Either way it runs ``workers.jobs.run_tick`` right
here, in this thread, under the lease ``tick``: ticks keep their schedule whatever the worker's main thread is
doing, and no queue full of other jobs can delay them. A tick already running elsewhere is not waited for.

It needs nothing but Redis answering: after a Redis outage or a restart that lost every key, it resumes by itself.
A failing tick is logged and the thread goes on; it never dies of one.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import redis

from bridge import keys
from bridge.settings import Settings
from workers import context

log = logging.getLogger("workers.ticker")

LOOK_SECONDS = 1.0
BUSY_RETRY_SECONDS = 0.5


class Ticker(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="omnibridge-ticker", daemon=True)
        self.settings = settings
        self.stopping = threading.Event()

    def run(self) -> None:
        # Leave SIGTERM/SIGINT to the main thread: a signal the kernel hands to this thread would not interrupt
        # the main thread's blocking dequeue, and RQ's warm shutdown would wait for the dequeue timeout.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        pause = min(LOOK_SECONDS, self.settings.tick_seconds)
        while not self.stopping.wait(pause):
            pause = min(LOOK_SECONDS, self.settings.tick_seconds)
            try:
                self.look()
                pause = min(pause, self.until_woken())
            except (redis.RedisError, OSError) as error:
                log.debug("no tick: Redis %s", type(error).__name__)
            except Exception:
                log.exception("tick failed; the next one runs as scheduled")
            try:
                context.current().metrics.flush()  # counters of a quiet worker reach Redis too
            except Exception:
                log.exception("metrics not flushed")

    def look(self) -> str | None:
        """Run a tick if one is due or routing asked to be woken; the tick's outcome, or None."""
        from workers.jobs import run_tick

        ctx = context.current()
        connection = ctx.redis
        due = bool(connection.set(keys.tick_due(), "1", nx=True, ex=self.settings.tick_seconds))
        woken = bool(connection.zremrangebyscore(keys.wake(), "-inf", time.time()))
        if not (due or woken):
            return None
        outcome = run_tick(ctx)
        if woken and outcome == "a tick is running elsewhere":
            # The running tick may have drained before the wake-up was due: ask again in a moment.
            connection.zadd(keys.wake(), {"routing": time.time() + BUSY_RETRY_SECONDS}, lt=True)
        log.log(logging.DEBUG if outcome.startswith(("nothing", "a tick")) else logging.INFO, "tick: %s", outcome)
        return outcome

    def until_woken(self) -> float:
        """Seconds until the earliest wake-up routing asked for (a rate-limit window's end, a probe's answer)."""
        earliest = context.current().redis.zrange(keys.wake(), 0, 0, withscores=True)
        return max(0.02, earliest[0][1] - time.time()) if earliest else LOOK_SECONDS

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=15)
