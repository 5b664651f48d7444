import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from rq.job import Job, JobStatus

from bridge.app import create_app
from bridge.jobqueue import enqueue, make_queue
from bridge.load import LoadBook
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, load_fixture, wait_for
from workers.worker import build_worker

ROOT = Path(__file__).resolve().parents[1]


def test_events_logged_by_webhooks_are_applied_by_the_worker(settings, redis_client):
    with ServerThread(create_app(settings)) as bridge:
        for name in ("LivechatSessionQueued__basic", "LivechatSessionTaken__basic"):
            answer = httpx.post(
                f"{bridge.url}/webhooks/livechat",
                json=load_fixture(name),
                headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN},
            )
            assert answer.json()["outcome"] == "accepted"
    queue = make_queue(settings, redis_client)
    [job_id] = queue.job_ids
    worker = build_worker(settings, redis_client)
    assert worker.work(burst=True)
    assert not Job.exists(job_id, connection=redis_client), "finished, and deleted at once (README, *Bounds*)"
    assert queue.failed_job_registry.count == 0
    assert redis_client.llen("ob:events") == 0
    assert redis_client.keys("ob:events:batch:*") == []
    taken = load_fixture("LivechatSessionTaken__basic")
    assert LoadBook(redis_client).agent_of(taken["_id"]) == taken["servedBy"]["_id"]


@pytest.fixture
def worker_process(rc_settings):
    # A worker refuses to start without a Rocket.Chat it may call: this one calls the double as the service account.
    env = dict(
        os.environ,
        REDIS_URL=rc_settings.redis_url,
        ROCKETCHAT_URL=rc_settings.rocketchat_url,
        ROCKETCHAT_USER_ID=rc_settings.rocketchat_user_id,
        ROCKETCHAT_AUTH_TOKEN=rc_settings.rocketchat_auth_token,
        PYTHONPATH=str(ROOT),
        LOG_LEVEL="WARNING",
    )
    process = subprocess.Popen([sys.executable, "-m", "bridge", "worker"], env=env, cwd=ROOT)
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_sigterm_lets_the_running_job_finish(settings, redis_client, worker_process):
    queue = make_queue(settings, redis_client)
    job_id = enqueue(queue, settings, "tests.slow_jobs.sleep_then_mark", 1.5, "marker")
    wait_for(lambda: redis_client.get("marker:started"), timeout=20)
    worker_process.send_signal(signal.SIGTERM)
    assert worker_process.wait(timeout=30) == 0
    assert redis_client.get("marker") == b"done"
    job = Job.fetch(job_id, connection=redis_client, serializer=queue.serializer)
    assert job.get_status() == JobStatus.FINISHED


def test_taken_forwarded_and_closed_webhooks_keep_agent_load(settings, redis_client):
    from bridge.load import LoadBook

    taken = load_fixture("LivechatSessionTaken__basic")
    forwarded = load_fixture("LivechatSessionForwarded__to_agent")
    closed = load_fixture("LivechatSession__closed_by_agent")
    assert taken["_id"] == forwarded["_id"] == closed["_id"]
    book = LoadBook(redis_client)
    worker = build_worker(settings, redis_client)
    with ServerThread(create_app(settings)) as bridge:

        def deliver(payload):
            httpx.post(
                f"{bridge.url}/webhooks/livechat", json=payload, headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
            ).raise_for_status()
            worker.work(burst=True)

        deliver(taken)
        assert book.counts() == {taken["servedBy"]["_id"]: 1}
        deliver(forwarded)
        assert book.counts() == {forwarded["servedBy"]["_id"]: 1}
        deliver(taken)  # a redelivery of the first event changes nothing
        assert book.counts() == {forwarded["servedBy"]["_id"]: 1}
        deliver(closed)
        assert book.counts() == {}
