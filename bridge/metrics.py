"""Counters shared by every web and worker process, kept in Redis and exposed in Prometheus format.

Heroku-style deployments run processes on different hosts, so prometheus-client's file-based multiprocess mode
does not apply; each process adds to one Redis hash instead, and ``GET /metrics`` on any web process renders the
totals with prometheus-client. Increments are buffered in memory and written at most once a second (one
pipelined ``HINCRBYFLOAT`` per counter), so counting costs no Redis round trip on the request path. A failing
metrics write never fails the work it counts (the increments are kept for the next flush).

Gauges (chats waiting, RQ jobs by state) are read from Redis when scraped, not counted.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from bridge import keys

log = logging.getLogger("bridge.metrics")

FLUSH_SECONDS = 1.0

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "omnibridge_webhooks": (
        "Webhooks received, by Rocket.Chat event type and HTTP status answered",
        ("type", "status"),
    ),
    "omnibridge_routing_decisions": ("Routing decisions, by kind and outcome", ("kind", "outcome")),
    "omnibridge_reservations": ("Capacity reservations, by result (reserved, full, released)", ("result",)),
    "omnibridge_directory_lookups": ("Agent directory lookups, by outcome (hit, refreshed, stale)", ("outcome",)),
    "omnibridge_rocketchat_calls": ("Rocket.Chat calls, by route and HTTP status", ("route", "status")),
    "omnibridge_rate_limit_deferrals": (
        "Rocket.Chat calls not made now because the route's rate limit had no call left (the work waits in Redis), "
        "by route and reason (exhausted, learning, blocked, capped, 429)",
        ("route", "reason"),
    ),
    "omnibridge_ticks": ("Periodic ticks run (routing waiting chats, recovering lost ones, re-routing)", ()),
    "omnibridge_waiting_refused": (
        "Queued chats not added to the routing queue because WAITING_MAX_CHATS chats were waiting (the inquiry "
        "reconciler adds the ones Rocket.Chat really has queued once there is room)",
        (),
    ),
}
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "omnibridge_routing_wait_seconds": (
        "Seconds from Rocket.Chat queueing a chat to the bridge taking it for an agent",
        (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
    ),
}


@functools.lru_cache(maxsize=4096)
def _field(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    """The hash field of one series (cached: the same few series are counted on every request)."""
    return json.dumps([name, dict(labels)], sort_keys=True, separators=(",", ":"))


class Metrics:
    def __init__(self, connection: redis.Redis, auto_flush: bool = True) -> None:
        self.connection = connection
        self.auto_flush = auto_flush
        self.lock = threading.Lock()
        self.pending: Counter[str] = Counter()
        self.flushed_at = time.monotonic()
        self.failing = False  # the last flush failed: say so once per outage, not once a second

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        if name not in COUNTERS:
            raise KeyError(f"unknown metric {name}")
        self._add(_field(name, tuple(sorted(labels.items()))), amount)

    def observe(self, name: str, value: float) -> None:
        _, buckets = HISTOGRAMS[name]
        for bound in buckets:
            if value <= bound:
                self._add(json.dumps([name + "_bucket", {"le": str(bound)}], separators=(",", ":")), 1)
        self._add(json.dumps([name + "_count", {}], separators=(",", ":")), 1)
        self._add(json.dumps([name + "_sum", {}], separators=(",", ":")), value)

    def _add(self, field: str, amount: float) -> None:
        with self.lock:
            self.pending[field] += amount
            due = self.auto_flush and time.monotonic() - self.flushed_at >= FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, Counter()
            self.flushed_at = time.monotonic()
        if not batch:
            return
        try:
            pipe = self.connection.pipeline(transaction=False)
            for field, amount in batch.items():
                pipe.hincrbyfloat(keys.metrics(), field, amount)
            pipe.execute()
        except (redis.RedisError, OSError) as error:
            level = logging.DEBUG if self.failing else logging.WARNING
            log.log(level, "metrics not written yet (Redis %s); kept for the next flush", type(error).__name__)
            self.failing = True
            with self.lock:
                self.pending.update(batch)
            return
        if self.failing:
            self.failing = False
            log.info("metrics written again")

    def totals(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        result = {}
        for field, value in self.connection.hgetall(keys.metrics()).items():
            name, labels = json.loads(field)
            result[(name, tuple(sorted(labels.items())))] = float(value)
        return result


class RedisCollector(Collector):
    def __init__(self, metrics: Metrics, queue_name: str) -> None:
        self.metrics = metrics
        self.queue_name = queue_name

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        self.metrics.flush()
        totals = self.metrics.totals()
        for name, (help_text, label_names) in COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=label_names)
            for (metric, labels), value in sorted(totals.items()):
                if metric == name:
                    values = dict(labels)
                    family.add_metric([values.get(label, "") for label in label_names], value)
            yield family
        for name, (help_text, bounds) in HISTOGRAMS.items():
            counts = {
                dict(labels).get("le"): value
                for (metric, labels), value in totals.items()
                if metric == name + "_bucket"
            }
            total = totals.get((name + "_count", ()), 0.0)
            buckets = [(str(bound), counts.get(str(bound), 0.0)) for bound in bounds] + [("+Inf", total)]
            family = HistogramMetricFamily(name, help_text)
            family.add_metric([], buckets, sum_value=totals.get((name + "_sum", ()), 0.0))
            yield family
        yield from self._gauges()

    def _gauges(self) -> Iterator[GaugeMetricFamily]:
        from rq import Queue

        from bridge.eventlog import EventBatches
        from bridge.jobqueue import voice_queue_of
        from bridge.waiting import WaitingQueue

        connection = self.metrics.connection
        waiting = GaugeMetricFamily("omnibridge_chats_waiting", "Chats waiting for an agent, now")
        waiting.add_metric([], WaitingQueue(connection).count())
        yield waiting
        lanes = GaugeMetricFamily(
            "omnibridge_event_log_lines",
            "Lines waiting in the event log, by lane (routing: queued, taken, forwarded, closed; other: the rest), "
            "now; each lane is bounded by EVENT_LOG_<LANE>_MAX_LINES, past which webhooks are answered 503",
            labels=["lane"],
        )
        for lane, lines in EventBatches(connection).lanes().items():
            lanes.add_metric([lane], lines)
        yield lanes
        jobs = GaugeMetricFamily(
            "omnibridge_jobs",
            "RQ jobs of the bridge's queues (chats and the rest; voice requests), by state, now",
            labels=["queue", "state"],
        )
        for name in (self.queue_name, voice_queue_of(self.queue_name)):
            queue = Queue(name, connection=connection)
            jobs.add_metric([name, "queued"], queue.count)
            jobs.add_metric([name, "started"], queue.started_job_registry.count)
            jobs.add_metric([name, "scheduled"], queue.scheduled_job_registry.count)
            jobs.add_metric([name, "finished"], queue.finished_job_registry.count)
            jobs.add_metric([name, "failed"], queue.failed_job_registry.count)
        yield jobs
        yield from self._rate_limits(connection)

    def _rate_limits(self, connection: redis.Redis) -> Iterator[GaugeMetricFamily]:
        from bridge.ratelimits import RateLimits

        learned = RateLimits(connection).known()
        limit = GaugeMetricFamily(
            "omnibridge_rocketchat_rate_limit",
            "Calls per window Rocket.Chat allows the bridge's account on a route, from its X-RateLimit-Limit header "
            "(-1: the route answered without rate-limit headers: unlimited for this account)",
            labels=["route"],
        )
        remaining = GaugeMetricFamily(
            "omnibridge_rocketchat_rate_limit_remaining", "Calls left in the route's current window", labels=["route"]
        )
        reset = GaugeMetricFamily(
            "omnibridge_rocketchat_rate_limit_reset_seconds", "Seconds until the route's window ends", labels=["route"]
        )
        for route, entry in learned.items():
            if entry["mode"] == "unlimited":
                limit.add_metric([route], -1)
            elif entry["mode"] == "limited":
                limit.add_metric([route], entry["limit"])
                remaining.add_metric([route], entry["remaining"])
                reset.add_metric([route], entry["reset_in"])
        yield limit
        yield remaining
        yield reset


def registry_for(metrics: Metrics, queue_name: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(metrics, queue_name))
    return registry
