"""Counters shared by every web and worker process, kept in Redis and exposed in Prometheus format.

Heroku-style deployments run processes on different hosts, so prometheus-client's file-based multiprocess mode
does not apply; each process adds to one Redis hash instead, and ``GET /metrics`` on any web process renders the
totals with prometheus-client. A failing metrics write never fails the work it counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from bridge import keys

log = logging.getLogger("bridge.metrics")

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "omnibridge_directory_lookups": ("Agent directory lookups, by outcome (hit, refreshed, stale)", ("outcome",)),
    "omnibridge_rocketchat_calls": ("Rocket.Chat calls, by route and HTTP status", ("route", "status")),
    "omnibridge_rate_limit_waits": ("Waits for a Rocket.Chat rate-limit reset or call budget slot", ("route",)),
}


class Metrics:
    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        if name not in COUNTERS:
            raise KeyError(f"unknown metric {name}")
        field = json.dumps([name, labels], sort_keys=True, separators=(",", ":"))
        try:
            self.connection.hincrbyfloat(keys.metrics(), field, amount)
        except (redis.RedisError, OSError) as error:
            log.warning("metric %s not recorded: %s", name, type(error).__name__)

    def totals(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        result = {}
        for field, value in self.connection.hgetall(keys.metrics()).items():
            name, labels = json.loads(field)
            result[(name, tuple(sorted(labels.items())))] = float(value)
        return result


class RedisCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = self.metrics.totals()
        for name, (help_text, label_names) in COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=label_names)
            for (metric, labels), value in sorted(totals.items()):
                if metric == name:
                    values = dict(labels)
                    family.add_metric([values.get(label, "") for label in label_names], value)
            yield family


def registry_for(metrics: Metrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(metrics))
    return registry
