"""Running RQ workers for the bridge's queue.

Worker class: ``SimpleWorker`` (runs jobs in the worker process). Our jobs are many and short (a Redis script
and one or two Rocket.Chat calls); forking a work horse per job, as RQ's default ``Worker`` does, costs more than
the job itself. The figures behind this choice are in the README (``bench/worker_classes.py``). A job that
hangs is still bounded by its timeout (RQ's SIGALRM death penalty works in-process).

Shutdown: on SIGTERM (Heroku's dyno stop) RQ's warm shutdown lets the current job finish, then exits. A worker
killed outright leaves its job in RQ's started registry; the job carries a ``Retry`` and RQ's abandoned-job
cleanup requeues it, so it is delayed but never lost.
"""

from __future__ import annotations

import logging

import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from bridge.settings import Settings
from workers import context
from workers.ticker import Ticker

log = logging.getLogger("workers.worker")

MAINTENANCE_SECONDS = 30


def build_worker(settings: Settings, connection: redis.Redis, name: str | None = None) -> SimpleWorker:
    ctx = context.install(settings, connection)
    # Maintenance (registry cleanup, restarting RQ's scheduler after it died on a Redis outage) every 30 s instead
    # of RQ's 10 minutes; an idle worker wakes at least every worker_ttl - 15 s to run it.
    return SimpleWorker(
        [ctx.queue],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
        maintenance_interval=MAINTENANCE_SECONDS,
        worker_ttl=MAINTENANCE_SECONDS + 15,
    )


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> bool:
    connection = redis.Redis.from_url(settings.require_redis(), socket_connect_timeout=5)
    worker = build_worker(settings, connection, name=name)
    ticker = Ticker(settings)
    if not burst:
        ticker.start()
    log.info("worker %s listening on queue %s", worker.name, settings.queue_name)
    try:
        return worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
    except redis.RedisError as error:
        if worker._shutdown_requested_date is None:
            raise  # the worker itself failed: exit non-zero so the process manager restarts it
        # Stopping was asked for and the current job had finished; only RQ's bookkeeping of its own exit (worker
        # registry) failed, typically on a connection that lived through a Redis restart. Nothing is lost: the
        # registry entry expires by itself.
        log.warning("worker %s stopped; deregistering failed: %s", worker.name, error)
        return True
    finally:
        ticker.stop()
        context.current().metrics.flush()
