"""The event log (``bridge.eventlog``) against a real Redis: appends, coalesced jobs, claims, lost batches."""

import asyncio
import json

import pytest
import redis.asyncio
from rq.job import Job

from bridge.eventlog import PROCESS_EVENTS, Appended, EventBatches, EventLog, GroupCommit
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
    assert not Job.exists(job_id, connection=redis_client), "a finished job leaves nothing behind (README, *Bounds*)"
    assert queue.failed_job_registry.count == 0 and queue.finished_job_registry.count == 0
    assert redis_client.keys("rq:results:*") == []
    assert redis_client.llen("ob:events") == 0
    assert install(settings, redis_client).router.waiting.count() == 450


# -- lanes and bounds (issue 12) --------------------------------------------------------------------------------


def agent_message(room_id: str, n: int = 0):
    payload = load_fixture("Message__from_agent")
    message = {**payload["messages"][0], "_id": f"msg-{room_id}-{n}", "rid": room_id}
    return parse_event({**payload, "_id": room_id, "messages": [message]})


def seen_marks(redis_client) -> int:
    return len(redis_client.keys("ob:seen:*"))


def test_routing_events_and_the_rest_go_to_their_own_lanes(settings, redis_client):
    taken = parse_event(load_fixture("LivechatSessionTaken__basic"))
    closed = parse_event(load_fixture("LivechatSession__closed_by_agent"))
    forwarded = parse_event(load_fixture("LivechatSessionForwarded__to_agent"))
    append(settings, [agent_message("m1"), queued("r1"), taken, agent_message("m2"), forwarded, closed])
    routing = [json.loads(line)["type"] for line in redis_client.lrange("ob:events", 0, -1)]
    other = [json.loads(line)["room_id"] for line in redis_client.lrange("ob:events:other", 0, -1)]
    assert routing == ["LivechatSessionQueued", "LivechatSessionTaken", "LivechatSessionForwarded", "LivechatSession"]
    assert other == ["m1", "m2"]
    assert EventBatches(redis_client).lanes() == {"routing": 4, "other": 2}
    assert EventBatches(redis_client).backlog() == 6


def test_routing_lines_are_claimed_before_other_lines_whatever_arrived_first(settings, redis_client):
    append(settings, [agent_message(f"m{n}") for n in range(5)])
    append(settings, [queued("r1"), queued("r2")])
    batches = EventBatches(redis_client)
    assert [line["room_id"] for line in batches.claim("job-1", limit=3)] == ["r1", "r2"]
    batches.finish("job-1")
    assert [line["room_id"] for line in batches.claim("job-1", limit=3)] == ["m0", "m1", "m2"]
    batches.finish("job-1")
    append(settings, [queued("r3")])  # a chat queued while the other lane still holds lines
    assert [line["room_id"] for line in batches.claim("job-1", limit=3)] == ["r3"], "looked at the routing lane again"
    batches.finish("job-1")
    assert [line["room_id"] for line in batches.claim("job-1", limit=3)] == ["m3", "m4"]
    batches.finish("job-1")
    assert batches.claim("job-1") == [] and batches.backlog() == 0


def test_an_unfinished_other_lane_batch_is_returned_to_its_retried_job_first(settings, redis_client):
    append(settings, [agent_message("m1"), agent_message("m2")])
    batches = EventBatches(redis_client)
    first = batches.claim("job-1")
    append(settings, [queued("r1")])
    assert batches.claim("job-1") == first, "the retried job finishes its own batch before anything else"


def test_other_lines_are_applied_after_the_routing_lines(settings, redis_client):
    ctx = install(settings.replace(no_answer_seconds=60), redis_client)  # so an agent message leaves a mark
    append(settings, [agent_message(f"m{n}") for n in range(450)] + [queued("r1")])
    outcome = apply_log(ctx, "job-x")
    assert outcome.startswith("451 event(s) applied"), outcome
    assert sorted(k.decode() for k in redis_client.keys("ob:replied:*")) == sorted(
        f"ob:replied:m{n}" for n in range(450)
    )
    assert ctx.router.waiting.room_ids(queued("r1").department_id) == ["r1"]
    assert EventBatches(redis_client).backlog() == 0 and redis_client.keys("ob:events:*batch*") == []


def test_an_agent_message_leaves_no_mark_when_the_no_answer_clock_is_off(settings, redis_client):
    ctx = install(settings, redis_client)
    append(settings, [agent_message("m1")])
    apply_log(ctx, "job-x")
    assert redis_client.keys("ob:replied:*") == []


def test_a_lost_batch_goes_back_to_its_own_lane(settings, redis_client):
    append(settings, [agent_message("m1"), agent_message("m2"), queued("r1")])
    batches = EventBatches(redis_client)
    batches.claim("lost-routing", limit=5)
    batches.claim("lost-other", limit=1)
    assert batches.sweep(older_than=-1) == 2
    assert [line["room_id"] for line in logged_events(redis_client)] == ["r1", "m1", "m2"]
    assert batches.lanes() == {"routing": 1, "other": 2}
    assert redis_client.keys("ob:events*batch*") == []


def test_the_tick_applies_an_other_lane_that_no_job_will_read(settings, redis_client, queue):
    ctx = install(settings.replace(no_answer_seconds=60), redis_client)
    append(settings, [agent_message("m1")])
    queue.empty()
    redis_client.delete("ob:events:pending")
    tick()
    assert redis_client.llen("ob:events:other") == 0
    assert ctx.redis.get("ob:replied:m1") is not None


def test_a_lane_at_its_bound_refuses_events_and_records_nothing_for_them(settings, redis_client, queue):
    bounded = settings.replace(event_log_other_max_lines=3, event_log_routing_max_lines=3)
    answers = append(bounded, [agent_message(f"m{n}") for n in range(5)])
    assert answers == [Appended.ACCEPTED] * 3 + [Appended.FULL] * 2
    assert redis_client.llen("ob:events:other") == 3
    assert seen_marks(redis_client) == 3, "no dedupe mark for a refused event: its retry must not be a duplicate"
    assert append(bounded, [queued("r1")]) == [Appended.ACCEPTED], "the routing lane has a bound of its own"
    assert append(bounded, [agent_message("m0"), agent_message("m4")]) == [Appended.DUPLICATE, Appended.FULL]
    batches = EventBatches(redis_client)
    batches.claim("job-1")  # the routing line
    batches.finish("job-1")
    assert append(bounded, [agent_message("m4")]) == [Appended.FULL]
    batches.claim("job-1")  # the other lane's three lines: now there is room
    assert append(bounded, [agent_message("m4"), agent_message("m3")]) == [Appended.ACCEPTED, Appended.ACCEPTED]
    assert len(queue.job_ids) == 1, "one job, as before"


def test_within_one_call_the_bound_counts_what_the_call_added(settings, redis_client):
    bounded = settings.replace(event_log_other_max_lines=2, event_log_routing_max_lines=2)
    answers = append(
        bounded, [agent_message("m1"), queued("r1"), agent_message("m2"), agent_message("m3"), queued("r2")]
    )
    assert answers == [Appended.ACCEPTED, Appended.ACCEPTED, Appended.ACCEPTED, Appended.FULL, Appended.ACCEPTED]


def test_a_job_out_of_time_hands_the_rest_of_the_log_to_a_new_job(settings, redis_client, queue):
    ctx = install(settings, redis_client)
    append(settings, [agent_message(f"m{n}") for n in range(450)])
    redis_client.delete("ob:events:pending")  # what process_events does first
    queue.empty()
    outcome = apply_log(ctx, "job-x", budget=0)
    assert outcome.startswith("200 event(s) applied"), outcome
    assert "the rest is left to a new job" in outcome
    assert EventBatches(redis_client).backlog() == 250
    [job_id] = queue.job_ids
    assert queue.fetch_job(job_id).func_name == PROCESS_EVENTS
    assert redis_client.ttl("ob:events:pending") > 0
    assert "the pending job" in apply_log(ctx, "job-y", budget=0), "no second job while one is pending"
    assert len(queue.job_ids) == 1
    assert build_worker(settings, redis_client).work(burst=True)
    assert EventBatches(redis_client).backlog() == 0


def test_hand_over_writes_the_job_template_again_when_redis_lost_it(settings, redis_client, queue):
    batches = EventBatches(redis_client)
    assert redis_client.exists("ob:events:job-template") == 0
    assert batches.hand_over(settings)
    [job_id] = queue.job_ids
    assert queue.fetch_job(job_id).func_name == PROCESS_EVENTS
