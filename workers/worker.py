"""Running RQ workers for the bridge's queue.

Worker class: ``SimpleWorker`` (runs jobs in the worker process). Our jobs are many and short (a Redis script
and one or two Rocket.Chat calls); forking a work horse per job, as RQ's default ``Worker`` does, costs more than
the job itself. The figures behind this choice are in the README (``bench/worker_classes.py``). A job that
hangs is still bounded by its timeout (RQ's SIGALRM death penalty works in-process).

Shutdown: on SIGTERM (Heroku's dyno stop) RQ's warm shutdown lets the current job finish, then exits. A worker
killed outright leaves its job in RQ's started registry; the job carries a ``Retry`` and RQ's abandoned-job
cleanup requeues it, so it is delayed but never lost.

Redis outages: a worker rides them out, however long and however often, and resumes by itself. RQ 3.0 does not:
its work loop treats a connection error outside the idle dequeue as "unhandled, quitting" (a job that was running
when Redis went away, a heartbeat, maintenance), its dequeue retries with an ERROR line per attempt and a back-off
growing to 60 s, and its scheduler child process dies on the first failed heartbeat. So RQ's loop is wrapped: a
lost connection anywhere in it ends that worker (``RedisLost``), ``run_worker`` logs the outage once, pings Redis
with a back-off capped at 5 s, then starts a fresh worker under the same name, with a fresh scheduler. A job
that was running is retried by RQ's abandoned-job cleanup (or, after a restart that lost every key, is gone and
the periodic tick and the reconciler redo its work). Only connection errors are retried: any other exception
still ends the process with a non-zero status, and a requested stop still ends it promptly, Redis or not.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline, PubSub, PubSubWorkerThread
from redis.retry import Retry
from rq import Queue, SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.utils import now

from bridge.jobqueue import queue_names
from bridge.settings import Settings
from workers import context
from workers.ticker import Ticker

log = logging.getLogger("workers.worker")

MAINTENANCE_SECONDS = 30
# Pinging a Redis that is down: first after half a second, then doubling up to every 5 s.
FIRST_WAIT_SECONDS = 0.5
MAX_WAIT_SECONDS = 5.0
SCHEDULER_STOP_SECONDS = 5.0

# What "Redis does not answer" looks like: redis-py's connection and timeout errors (BusyLoadingError, a Redis
# still loading its data after a restart, is a ConnectionError) and the socket's own. Not any OSError: a job's
# missing file is a bug, not an outage.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def is_outage(error: BaseException) -> bool:
    """Redis not answering; a refused password is a ConnectionError too, but configuration: waiting would hide it."""
    return isinstance(error, REDIS_DOWN) and not isinstance(error, redis.exceptions.AuthenticationError)


class LoopEnded(SystemExit):
    """What ended RQ's work loop from inside one of its steps; ``error`` is the exception that did.

    A ``SystemExit`` because that is the one exception RQ's loop lets through untouched (its cold-shutdown path,
    after its teardown): any other it logs as unhandled and returns as though the worker had finished, and a
    connection error in its dequeue it retries itself. Exit status 1 should it ever reach the top.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(1)
        self.error = error


class RedisLost(LoopEnded):
    """Redis stopped answering: ``run_worker`` waits for it and starts a new worker."""


class WorkerCrashed(LoopEnded):
    """Anything else: a bug, or a fault waiting would not cure. ``run_worker`` raises ``error``."""


@contextmanager
def redis_lost() -> Iterator[None]:
    """Turn a lost connection into ``RedisLost``."""
    try:
        yield
    except REDIS_DOWN as error:
        if not is_outage(error):
            raise
        raise RedisLost(error) from error


class BridgeQueue(Queue):
    """RQ's queue, but a blocking dequeue that loses Redis raises ``RedisLost`` rather than a ConnectionError,
    which RQ's worker would catch and retry with an ERROR line per attempt and up to 60 s between attempts."""

    @classmethod
    def dequeue_any(cls, *args: Any, **kwargs: Any) -> tuple[Job, Queue] | None:
        with redis_lost():
            return super().dequeue_any(*args, **kwargs)


class QuietScheduler(RQScheduler):
    """RQ's scheduler (a child process), ending quietly when Redis goes away instead of logging a traceback (and
    multiprocessing printing a second one): ``run_worker`` reports the outage and starts a new scheduler."""

    def work(self) -> None:
        close_inherited_redis_sockets()
        try:
            super().work()
        except REDIS_DOWN as error:
            if not is_outage(error):
                raise
            self.log.info("Scheduler [PID %s] stopped: Redis unreachable (%s)", os.getpid(), type(error).__name__)


def close_inherited_redis_sockets() -> None:
    """In a forked child (RQ's scheduler), close the sockets of the parent's Redis connections.

    The child inherits every socket of the worker, including the one of its blocking dequeue (``BLMOVE``). Were the
    worker SIGKILLed, that socket would stay open in the child, Redis would still see the worker's dequeue waiting,
    and hand it the next job: a job no one runs until RQ's intermediate-queue cleanup, a minute or more later (found
    by tests/test_liveness.py). Closing the child's copy does not touch the parent's (no shutdown: only this
    process's file descriptor goes).
    """
    import gc

    for connection in [o for o in gc.get_objects() if isinstance(o, redis.connection.AbstractConnection)]:
        sock = getattr(connection, "_sock", None)
        if sock is not None and getattr(connection, "pid", os.getpid()) != os.getpid():
            try:
                sock.close()
            except OSError:
                pass
            connection._sock = None


class StopSignal:
    """SIGTERM/SIGINT while no RQ work loop is running (starting up, waiting out an outage).

    RQ installs its own handlers once a worker's loop starts; outside it these remember the request, so that the
    outage wait ends at once and a worker that is still starting stops as soon as its loop begins.
    """

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless a stop is requested first; True if it was."""
        deadline = time.monotonic() + seconds
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))  # a signal's handler runs between slices: a stop is seen within 0.1 s
        return self.requested


class BridgeWorker(SimpleWorker):
    """RQ's ``SimpleWorker`` whose work loop ends with ``RedisLost`` when Redis stops answering.

    Each step RQ's loop takes (suspension check, maintenance, dequeue, the job and its bookkeeping, heartbeat)
    turns a lost connection into ``RedisLost`` and any other exception into ``WorkerCrashed``: RQ would log either
    and return from ``work()`` as if done, or, in its dequeue, retry a connection error without end.
    """

    queue_class = BridgeQueue
    stop_signal: StopSignal | None = None
    children_stopped = False

    @contextmanager
    def _step(self) -> Iterator[None]:
        try:
            yield
        except StopRequested:
            raise  # RQ's warm shutdown, raised by its signal handler
        except Exception as error:
            raise (RedisLost if is_outage(error) else WorkerCrashed)(error) from error

    def check_for_suspension(self, burst: bool) -> None:
        with self._step():
            super().check_for_suspension(burst)

    def run_maintenance_tasks(self) -> None:
        with self._step():
            super().run_maintenance_tasks()

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        with self._step():
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def execute_job(self, job: Job, queue: Queue) -> None:
        # A job that loses Redis fails, and RQ's recording of that failure (or of its success) then raises.
        with self._step():
            super().execute_job(job, queue)

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        with self._step():
            super().heartbeat(timeout, pipeline)

    def set_shutdown_requested_date(self) -> None:
        """RQ writes this from its SIGTERM handler while a job runs: a field for dashboards, not worth raising a
        ConnectionError into the running job when Redis is down. The stop itself is kept in memory."""
        try:
            super().set_shutdown_requested_date()
        except REDIS_DOWN as error:
            self.log.debug("Worker %s: shutdown date not recorded: Redis %s", self.name, type(error).__name__)

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        if self.stop_signal is not None and self.stop_signal.requested:
            # Asked to stop while this worker was starting: stop as RQ's warm shutdown would, before any job.
            self._shutdown_requested_date = now()
            self._stop_requested = True
            self.handle_warm_shutdown_request()

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """RQ's own ``_start_scheduler`` (rq 3.0), with ``QuietScheduler`` for ``RQScheduler``."""
        self.scheduler = QuietScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return  # another worker's scheduler holds them; maintenance tries again
        if not burst:
            self.scheduler.start()
            return
        try:
            self.scheduler.register_birth()
            self.scheduler.enqueue_scheduled_jobs()
        finally:
            self.scheduler.release_locks()
            self.scheduler.register_death()

    def stop_scheduler(self) -> None:
        """RQ's, but bounded: a scheduler child that does not stop within 5 s of SIGTERM is killed."""
        process = self.scheduler._process if self.scheduler else None
        if process is None or not process.pid:
            return
        if process.is_alive():
            process.terminate()
            process.join(SCHEDULER_STOP_SECONDS)
        if process.is_alive():
            process.kill()
        process.join()

    def teardown(self) -> None:
        """RQ's teardown, then the scheduler and pubsub thread stopped even if Redis is gone: RQ stops the pubsub
        thread after recording the worker's death, so a death it cannot record would leave the thread running.

        The work loop is over: a stop signal from here on is ``StopSignal``'s. RQ's handler would raise
        StopRequested into this teardown (or into our outage handling), where nothing catches it.
        """
        if self.stop_signal is not None:
            self.stop_signal.install()
        try:
            super().teardown()
        finally:
            self.stop_children()

    def stop_children(self) -> None:
        """Stop what runs beside the work loop: RQ's scheduler child and the pubsub thread (for ``rq`` commands).
        Needs no Redis; safe to call again."""
        self.children_stopped = True
        if self.scheduler is not None:
            self.stop_scheduler()
        if self.pubsub_thread is not None:
            self.pubsub_thread.stop()
        if self.pubsub is not None:
            self.pubsub.close()  # drops its connection: a thread blocked reading it wakes up and sees the stop

    def _pubsub_exception_handler(self, exc: Exception, pubsub: PubSub, pubsub_thread: PubSubWorkerThread) -> None:
        """Quiet while Redis is down (RQ logs an ERROR every 2 s; ``run_worker`` reports the outage once): redis-py
        resubscribes when Redis answers. Also quiet once the thread was told to stop."""
        if isinstance(exc, REDIS_DOWN) or self.children_stopped:
            self.log.debug("Worker %s: pubsub: %s", self.name, type(exc).__name__)
            time.sleep(1.0)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def retire(self) -> None:
        """After an outage ended this worker, record its death and free its scheduler's locks (they would be held
        by the dead scheduler for up to 61 s), so a successor may take the same name and schedule at once."""
        self.register_death()
        if self.scheduler is not None and self.scheduler.acquired_locks:
            try:
                self.scheduler.release_locks()
            finally:
                self.scheduler.connection.close()


def connect(settings: Settings) -> redis.Redis:
    """The worker's connection (RQ raises its socket timeout above its dequeue's block).

    No command retries of redis-py's own: a command whose connection broke may have run, and jobs send scripts
    that must not run twice behind their back; an outage, even a blip, is ``run_worker``'s to wait out. A
    connection the pool kept through an outage is checked, and reconnected, when it is taken from the pool.
    """
    return redis.Redis.from_url(settings.require_redis(), socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))


def address(url: str) -> str:
    """Where Redis is, for logs: host:port (or the socket path), never the password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    return f"{f'[{host}]' if ':' in host else host}:{parts.port or 6379}"


def make_worker(settings: Settings, connection: redis.Redis, name: str | None = None) -> BridgeWorker:
    # Maintenance (registry cleanup, restarting RQ's scheduler after it died) every 30 s instead of RQ's 10
    # minutes; an idle worker wakes at least every worker_ttl - 15 s to run it.
    # Queues in the order RQ reads them (its default dequeue strategy): chats' first, then voice requests', so a
    # voice job starts only when no chat job waits (bridge.jobqueue.queue_names).
    return BridgeWorker(
        [BridgeQueue(queue, connection=connection, serializer=JSONSerializer) for queue in queue_names(settings)],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
        maintenance_interval=MAINTENANCE_SECONDS,
        worker_ttl=MAINTENANCE_SECONDS + 15,
    )


def build_worker(settings: Settings, connection: redis.Redis, name: str | None = None) -> BridgeWorker:
    context.install(settings, connection)
    return make_worker(settings, connection, name)


class Outage:
    """A Redis outage as this process sees it: one WARNING when it begins, one when Redis answers again."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.since: float | None = None

    def begin(self, error: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "Redis unreachable at %s: waiting; jobs resume when it answers (%s: %s)",
                self.where,
                type(error).__name__,
                error,
            )

    def end(self) -> None:
        if self.since is not None:
            log.warning("Redis at %s answers again after %.1f s: resuming", self.where, time.monotonic() - self.since)
            self.since = None


def wait_for_redis(probe: redis.Redis, stop: StopSignal) -> bool:
    """Ping until Redis answers (True) or a stop is requested (False), waiting 0.5 s doubling to 5 s between."""
    delay = FIRST_WAIT_SECONDS
    while not stop.wait(delay):
        try:
            probe.ping()
            return True
        except REDIS_DOWN as error:
            if not is_outage(error):
                raise
            delay = min(2 * delay, MAX_WAIT_SECONDS)
    return False


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> bool:
    """``omnibridge worker``: RQ workers under one name (generated if not given) until stopped, or until the
    queue is empty with ``burst``; the ticker thread beside them. True if any job was processed."""
    stop = StopSignal()
    stop.install()
    connection = connect(settings)
    context.install(settings, connection)
    ticker = Ticker(settings)
    if not burst:
        ticker.start()
    try:
        return work_through_outages(settings, connection, stop, burst, name or uuid4().hex)
    finally:
        ticker.stop()
        context.current().metrics.flush()


def work_through_outages(settings: Settings, connection: redis.Redis, stop: StopSignal, burst: bool, name: str) -> bool:
    """Run RQ workers one after another, a new one after each Redis outage, until one finishes or a stop."""
    outage = Outage(address(settings.require_redis()))
    # One attempt per ping, no retries of its own: the back-off is ours.
    probe = redis.Redis.from_url(
        settings.require_redis(), socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    worked = False
    retiring: BridgeWorker | None = None  # the worker an outage ended, whose death Redis has not recorded yet
    try:
        while not stop.requested:
            worker: BridgeWorker | None = None
            try:
                if retiring is not None:
                    retiring.retire()
                    retiring = None
                worker = make_worker(settings, connection, name)
                worker.stop_signal = stop
                log.info("worker %s listening on queues %s", worker.name, ", ".join(queue_names(settings)))
                worked |= worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
                return worked
            except WorkerCrashed as crashed:
                raise crashed.error from None  # a bug, not an outage: the process ends with a non-zero status
            except (RedisLost, *REDIS_DOWN) as error:
                cause = error.error if isinstance(error, RedisLost) else error
                if not is_outage(cause):
                    raise
                if worker is not None and (stop.requested or worker._shutdown_requested_date is not None):
                    # Stopping was asked for: exit, Redis or not. What failed is RQ's bookkeeping of the exit (or of
                    # the job that was running); the registry entry expires by itself.
                    log.warning("worker %s stopped; Redis did not record it: %s", worker.name, cause)
                    return True
                outage.begin(cause)
                if worker is not None:
                    worker.stop_children()  # teardown did not run if Redis went away while the worker started
                    retiring = worker
            finally:
                stop.install()  # RQ's handlers belong to the worker that just ended
            if not wait_for_redis(probe, stop):
                break
            outage.end()
        return worked
    finally:
        probe.close()
