"""What a job needs besides its arguments (settings, Redis, Rocket.Chat), built once per worker process.

``omnibridge worker`` installs it at start; a job run by RQ's own ``rq worker`` command builds it from the
environment on first use, so both ways of running workers behave the same. The Rocket.Chat client is made on
first use: one pooled HTTP client per process; the directory, router and answer watch are built once too (they
hold no state of their own beyond Redis).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import redis
from rq import Queue

from bridge.cache import SharedCache
from bridge.directory import AgentDirectory
from bridge.eventlog import EventBatches
from bridge.jobqueue import make_queue
from bridge.lease import Leases
from bridge.load import LoadBook
from bridge.metrics import Metrics
from bridge.noanswer import AnswerWatch
from bridge.ratelimits import RateLimits
from bridge.rocketchat import RocketChat
from bridge.router import Router
from bridge.settings import Settings


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    queue: Queue
    load: LoadBook
    metrics: Metrics
    _rocketchat: RocketChat | None = field(default=None, repr=False)

    def rocketchat(self) -> RocketChat:
        if self._rocketchat is None:
            limits = RateLimits(self.redis, self.settings.rocketchat_calls_per_minute, self.leases)
            self._rocketchat = RocketChat(self.settings, limits=limits, metrics=self.metrics)
        return self._rocketchat

    @cached_property
    def leases(self) -> Leases:
        return Leases(self.redis)

    @cached_property
    def directory(self) -> AgentDirectory:
        cache = SharedCache(
            self.redis,
            on_outcome=lambda name, outcome: self.metrics.inc("omnibridge_directory_lookups", outcome=outcome),
            leases=self.leases,
        )
        return AgentDirectory(self.settings, self.redis, self.rocketchat, cache=cache)

    @cached_property
    def batches(self) -> EventBatches:
        return EventBatches(self.redis)

    @cached_property
    def answers(self) -> AnswerWatch:
        return AnswerWatch(self.settings, self.redis)

    @cached_property
    def router(self) -> Router:
        return Router(
            self.settings,
            self.redis,
            self.rocketchat,
            self.directory,
            self.load,
            answers=self.answers,
            metrics=self.metrics,
        )


_current: WorkerContext | None = None


def install(settings: Settings, connection: redis.Redis) -> WorkerContext:
    global _current
    if _current is not None and _current._rocketchat is not None:
        _current._rocketchat.close()
    _current = WorkerContext(
        settings, connection, make_queue(settings, connection), LoadBook(connection), Metrics(connection)
    )
    return _current


def current() -> WorkerContext:
    if _current is None:
        settings = Settings.from_env(os.environ)
        settings.require_worker()
        return install(settings, redis.Redis.from_url(settings.require_redis()))
    return _current
