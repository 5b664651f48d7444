"""The periodic tick, kept alive by every worker process (not by RQ's scheduler).

A thread in each worker enqueues ``workers.jobs.tick`` every ``TICK_SECONDS`` unless one is already waiting
(``tick-pending``, set with NX, cleared when the tick starts, expiring on its own). It needs nothing but Redis
answering: after a Redis outage or a restart that lost every key it resumes by itself, which a self-scheduling
job chain or RQ's scheduler process (which exits on a connection error and is restarted only by worker
maintenance) would not.
"""

from __future__ import annotations

import logging
import signal
import threading

import redis

from bridge import jobqueue, keys
from bridge.settings import Settings
from workers import context

log = logging.getLogger("workers.ticker")


class Ticker(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="omnibridge-ticker", daemon=True)
        self.settings = settings
        self.stopping = threading.Event()

    def run(self) -> None:
        # Leave SIGTERM/SIGINT to the main thread: a signal the kernel hands to this thread would not interrupt
        # the main thread's blocking dequeue, and RQ's warm shutdown would wait for the dequeue timeout.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        connection = redis.Redis.from_url(self.settings.require_redis(), socket_connect_timeout=2, socket_timeout=2)
        queue = jobqueue.make_queue(self.settings, connection)
        period = self.settings.tick_seconds
        while not self.stopping.wait(period):
            try:
                if connection.set(keys.tick_pending(), "1", nx=True, ex=max(30, 4 * period)):
                    jobqueue.enqueue(queue, self.settings.replace(job_retries=0), jobqueue.TICK, result_ttl=60)
            except (redis.RedisError, OSError) as error:
                log.debug("tick not enqueued: Redis %s", type(error).__name__)
            context.current().metrics.flush()  # counters of a quiet worker reach Redis too
        connection.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=5)
