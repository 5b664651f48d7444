"""The event log (``bridge.eventlog``) against a real Redis: appends, coalesced jobs, claims, lost batches."""

import asyncio
import json

import pytest
import redis.asyncio
from rq.job import Job, JobStatus

from bridge.eventlog import PROCESS_EVENTS, EventBatches, EventLog, GroupCommit
from bridge.events import parse_event
from bridge.jobqueue import make_queue
from tests.support import load_fixture, logged_events
from workers.context import install
from workers.jobs import apply_log, tick
from workers.worker import build_worker


def queued(room_id: str):
    return parse_event({**load_fixture("LivechatSessionQueued__basic"), "_id": room_id})


def append(settings, events):
    async def go():
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        try:
            return await EventLog(settings, client).append(events)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture
def queue(settings, redis_client):
    return make_queue(settings, redis_client)


def test_appending_logs_new_events_once_and_queues_one_job(settings, redis_client, queue):
    assert append(settings, [queued("r1"), queued("r2"), queued("r1")]) == [True, True, False]
    assert append(settings, [queued("r2"), queued("r3")]) == [False, True]
    assert [line["room_id"] for line in logged_events(redis_client)] == ["r1", "r2", "r3"]
    [job_id] = queue.job_ids
    job = queue.fetch_job(job_id)
    assert job.func_name == PROCESS_EVENTS and list(job.args) == []
    assert job.retries_left == settings.job_retries


def test_an_event_after_the_job_started_makes_a_new_job(settings, redis_client, queue):
    append(settings, [queued("r1")])
    redis_client.delete("ob:events:pending")  # what process_events does first
    append(settings, [queued("r2")])
    assert len(queue.job_ids) == 2


def test_only_duplicates_make_no_job(settings, redis_client, queue):
    append(settings, [queued("r1")])
    redis_client.delete("ob:events:pending")
    assert append(settings, [queued("r1")]) == [False]
    assert len(queue.job_ids) == 1


def test_concurrent_appends_share_calls_and_each_gets_its_own_answer(settings, redis_client):
    calls = []

    class Counting(EventLog):
        async def append(self, events, identities=None):
            calls.append(len(events))
            return await super().append(events, identities)

    async def go():
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        group = GroupCommit(Counting(settings, client))
        try:
            events = [queued(f"r{n % 30}") for n in range(60)]  # every room twice
            return await asyncio.gather(*[group.append(event, event.identity) for event in events])
        finally:
            await client.aclose()

    answers = asyncio.run(go())
    assert answers == [True] * 30 + [False] * 30
    assert sum(calls) == 60 and len(calls) < 60, f"calls grouped: {calls}"
    assert len(logged_events(redis_client)) == 30


def test_a_redis_error_reaches_every_caller_of_the_group(settings, redis_server):
    async def go():
        client = redis.asyncio.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5)
        group = GroupCommit(EventLog(settings, client))
        redis_server.stop()
        try:
            return await asyncio.gather(
                *[group.append(queued(f"r{n}"), queued(f"r{n}").identity) for n in range(5)], return_exceptions=True
            )
        finally:
            await client.aclose()

    answers = asyncio.run(go())
    assert all(isinstance(answer, redis.exceptions.ConnectionError) for answer in answers), answers


def test_a_claimed_batch_is_returned_to_a_retried_job_until_it_is_finished(settings, redis_client):
    append(settings, [queued(f"r{n}") for n in range(5)])
    batches = EventBatches(redis_client)
    first = batches.claim("job-1", limit=3)
    assert [line["room_id"] for line in first] == ["r0", "r1", "r2"]
    assert batches.claim("job-1", limit=3) == first, "the same job (retried) gets its unfinished batch again"
    assert [line["room_id"] for line in batches.claim("job-2", limit=3)] == ["r3", "r4"]
    batches.finish("job-1")
    assert batches.claim("job-1", limit=3) == []
    assert batches.backlog() == 0


def test_a_batch_whose_job_was_lost_goes_back_to_the_front_of_the_log_in_order(settings, redis_client):
    append(settings, [queued(f"r{n}") for n in range(4)])
    batches = EventBatches(redis_client)
    batches.claim("lost-job", limit=2)
    assert batches.sweep(older_than=3600) == 0, "a recent batch may still be in progress"
    assert batches.sweep(older_than=-1) == 2
    assert [line["room_id"] for line in logged_events(redis_client)] == ["r0", "r1", "r2", "r3"]
    assert redis_client.keys("ob:events:batch:*") == []


def test_applying_a_batch_twice_changes_nothing_more(settings, redis_client):
    taken = load_fixture("LivechatSessionTaken__basic")
    ctx = install(settings, redis_client)
    append(settings, [queued("r1"), parse_event(taken)])
    batches = EventBatches(redis_client)
    lines = batches.claim("job-x")
    outcome = apply_log(ctx, "job-x")  # applies the claimed batch
    assert outcome.startswith("2 event(s) applied")
    redis_client.rpush("ob:events", *(json.dumps(line) for line in lines))  # as if the batch came back
    apply_log(ctx, "job-y")
    assert ctx.load.counts() == {taken["servedBy"]["_id"]: 1}
    assert ctx.router.waiting.room_ids(queued("r1").department_id) == ["r1"]


def test_the_tick_applies_a_log_that_no_job_will_read(settings, redis_client, queue):
    ctx = install(settings, redis_client)
    append(settings, [queued("r1")])
    queue.empty()  # the job is lost (a queue deleted by hand); its pending flag is still set
    redis_client.delete("ob:events:pending")  # ... until it expires
    tick()
    assert redis_client.llen("ob:events") == 0
    assert ctx.router.waiting.room_ids(queued("r1").department_id) == ["r1"]


def test_the_worker_runs_the_job_and_empties_the_log(settings, redis_client, queue):
    install(settings, redis_client)
    append(settings, [queued(f"r{n}") for n in range(450)])
    [job_id] = queue.job_ids
    assert build_worker(settings, redis_client).work(burst=True)
    job = Job.fetch(job_id, connection=redis_client, serializer=queue.serializer)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value().startswith("450 event(s) applied")
    assert redis_client.llen("ob:events") == 0
    assert install(settings, redis_client).router.waiting.count() == 450
