"""A real worker process across Redis outages (issue 11): it waits, reconnects by itself and resumes, scheduler
included, however often Redis goes away; a stop asked for while Redis is down still ends it at once.

Redis here is a private ``redis-server`` of this module's own (the session's is shared by other tests), stopped
and started again on the same port. It keeps nothing on disk, so each restart also loses every key: the worker
must re-register itself and its scheduler from nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import JobStatus

from bridge.embedded import EmbeddedRedis
from bridge.jobqueue import make_queue
from bridge.settings import Settings
from tests.processes import INHERITED, ROOT
from tests.support import report, wait_for
from workers.worker import address

OUTAGE_SECONDS = 15.0
OUTAGES = 3
RESUME_BOUND_SECONDS = 20.0  # the worker pings at most every 5 s; the rest is a margin for a loaded machine
STOP_BOUND_SECONDS = 15.0


@pytest.fixture(scope="module")
def outage_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def rocketchat_env() -> Iterator[dict[str, str]]:
    """A worker refuses to start without a Rocket.Chat it may call: the double, as the service account."""
    from bridge.sandbox.server import SandboxServer
    from bridge.sandbox.state import SandboxState
    from tests.team import add_service_account

    state = SandboxState("7.13.9", seed=7)
    account = add_service_account(state)
    with SandboxServer(state) as server:
        yield {
            "ROCKETCHAT_URL": server.url,
            "ROCKETCHAT_USER_ID": account.user_id,
            "ROCKETCHAT_AUTH_TOKEN": account.token,
        }


@pytest.fixture
def redis_up(outage_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A running, empty Redis (a test before this one may have left it stopped) and a client for it."""
    if outage_redis.process is None:
        outage_redis.start()
    client = redis.Redis.from_url(outage_redis.url)
    client.flushall()
    yield client
    client.close()


class WorkerProcess:
    """``python -m bridge worker`` with its output in ``log``; killed at the end if a test left it running."""

    def __init__(self, redis_url: str, rocketchat_env: dict[str, str], log: Path, name: str) -> None:
        base = {key: os.environ[key] for key in INHERITED if key in os.environ}
        env = {**base, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "LOG_LEVEL": "INFO", **rocketchat_env}
        self.name = name
        self.log = log
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "worker", "--name", name],
                env=env,
                cwd=ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the worker exited with {self.process.returncode}\n{self.output()[-4000:]}")
        return True

    def registered(self, client: redis.Redis) -> bool:
        return self.running() and bool(client.exists(f"rq:worker:{self.name}"))

    def stop(self) -> tuple[int, float]:
        """SIGTERM; the exit status and how long it took."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=STOP_BOUND_SECONDS)
        return status, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start_worker(outage_redis, rocketchat_env, tmp_path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        worker = WorkerProcess(outage_redis.url, rocketchat_env, tmp_path / f"{name}.log", name)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def bridge_queue(client: redis.Redis) -> Queue:
    return make_queue(Settings(), client)


def finished(client: redis.Redis, job_id: str) -> bool:
    job = bridge_queue(client).fetch_job(job_id)
    return job is not None and job.get_status() == JobStatus.FINISHED


def start_slow_job(client: redis.Redis, key: str, seconds: float) -> None:
    """A job that is running (in the worker, SimpleWorker runs it in-process) when this returns."""
    bridge_queue(client).enqueue("tests.slow_jobs.sleep_then_mark", seconds, key)
    wait_for(lambda: client.get(f"{key}:started"), timeout=20)


def processed_after_restart(worker: WorkerProcess, client: redis.Redis, outage: int) -> float:
    """Seconds from now (Redis just restarted) until a job enqueued now is done; a job scheduled 1 s ahead must be
    done too: only RQ's scheduler process, started anew after the outage, moves it to the queue."""
    back = time.monotonic()
    queue = bridge_queue(client)
    job = queue.enqueue("tests.slow_jobs.sleep_then_mark", 0, f"outage-{outage}")
    scheduled = queue.enqueue_in(timedelta(seconds=1), "tests.slow_jobs.sleep_then_mark", 0, f"scheduled-{outage}")
    wait_for(lambda: worker.running() and finished(client, job.id), timeout=RESUME_BOUND_SECONDS, interval=0.05)
    took = time.monotonic() - back
    wait_for(lambda: worker.running() and finished(client, scheduled.id), timeout=RESUME_BOUND_SECONDS, interval=0.05)
    return took


@pytest.mark.slow
def test_worker_rides_out_repeated_redis_outages_and_resumes(outage_redis, redis_up, start_worker):
    worker = start_worker("outage-worker")
    wait_for(lambda: worker.registered(redis_up), timeout=30, interval=0.1)
    resumed = []
    for outage in range(1, OUTAGES + 1):
        if outage == 2:
            start_slow_job(redis_up, "outage-busy", 3)  # Redis goes away under a running job: issue 11's crash
        outage_redis.stop()
        time.sleep(OUTAGE_SECONDS)
        assert worker.running()
        outage_redis.start()
        resumed.append(processed_after_restart(worker, redis_up, outage))
        assert redis_up.get(f"outage-{outage}") == b"done"
    assert worker.running()
    status, took = worker.stop()
    output = worker.output()
    report(
        f"worker across {OUTAGES} Redis outages of {OUTAGE_SECONDS:.0f} s: first job done "
        + ", ".join(f"{seconds:.1f} s" for seconds in resumed)
        + f" after each restart; SIGTERM to exit {took:.1f} s"
    )
    assert status == 0, output[-4000:]
    where = f"Redis unreachable at 127.0.0.1:{outage_redis.port}: waiting; jobs resume when it answers"
    assert output.count(where) == OUTAGES, output[-4000:]
    assert output.count("answers again after") == OUTAGES
    assert "found an unhandled exception" not in output  # RQ's "quitting" path never ran
    assert "Traceback" not in output  # an outage is a WARNING, not a stack


@pytest.mark.slow
def test_worker_resumes_under_its_name_when_redis_keeps_its_data(rocketchat_env, tmp_path):
    """A restart that keeps the data (a snapshot loaded at start) leaves the worker's registration and its dead
    scheduler's lock behind: the worker must still come back under its own name and schedule at once."""
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        worker = WorkerProcess(server.url, rocketchat_env, tmp_path / "kept.log", "outage-kept-worker")
        try:
            wait_for(lambda: worker.registered(client), timeout=30, interval=0.1)
            wait_for(lambda: client.exists("rq:scheduler-lock:bridge"), timeout=10)
            client.save()  # dump.rdb, which redis-server loads when it starts
            server.stop()
            time.sleep(3)
            server.start()
            assert client.exists(f"rq:worker:{worker.name}") and client.exists("rq:scheduler-lock:bridge")
            # The dead scheduler's lock would hold off a new scheduler for up to 61 s; the bound is well below.
            took = processed_after_restart(worker, client, 1)
            status, _ = worker.stop()
        finally:
            worker.kill()
            client.close()
    report(f"worker after a Redis restart that kept its data: first job done {took:.1f} s after the restart")
    output = worker.output()
    assert status == 0, output[-4000:]
    assert output.count("answers again after") == 1, output[-4000:]
    assert "Traceback" not in output


@pytest.mark.slow
def test_sigterm_while_redis_is_down_exits_at_once(outage_redis, redis_up, start_worker):
    worker = start_worker("outage-stop-worker")
    wait_for(lambda: worker.registered(redis_up), timeout=30, interval=0.1)
    outage_redis.stop()
    wait_for(
        lambda: worker.running() and "waiting; jobs resume when it answers" in worker.output(),
        timeout=20,
        interval=0.05,
    )
    status, took = worker.stop()
    report(f"worker stopped by SIGTERM during a Redis outage in {took:.1f} s")
    assert status == 0, worker.output()[-4000:]
    assert took < 5.0


@pytest.mark.slow
def test_sigterm_just_as_redis_goes_away_exits_cleanly(outage_redis, redis_up, start_worker):
    """The stop arrives while RQ's own loop is still finding out that Redis is gone (its handlers, not ours)."""
    worker = start_worker("outage-early-stop-worker")
    wait_for(lambda: worker.registered(redis_up), timeout=30, interval=0.1)
    outage_redis.stop()
    status, took = worker.stop()
    report(f"worker stopped by SIGTERM as Redis went away in {took:.1f} s")
    assert status == 0, worker.output()[-4000:]
    assert took < 10.0


@pytest.mark.slow
def test_a_redis_error_that_is_no_outage_still_ends_the_worker(redis_up, start_worker):
    """Only a lost connection is waited out: the queue's key holding a string (WRONGTYPE) is a fault to report,
    where RQ alone would log it and return as though the worker had finished (exit status 0)."""
    redis_up.set("rq:queue:bridge", "not a list")
    worker = start_worker("outage-broken-worker")
    status = worker.process.wait(timeout=30)
    output = worker.output()
    assert status != 0, output[-4000:]
    assert "WRONGTYPE" in output
    assert "Redis unreachable" not in output


def test_the_outage_log_names_where_redis_is_but_never_its_password():
    assert address("redis://:s3cret-pw@redis.internal:6380/0") == "redis.internal:6380"
    assert address("rediss://user:s3cret-pw@[::1]/2") == "[::1]:6379"
    assert address("unix:///run/redis.sock?db=1") == "/run/redis.sock"
