"""What a job needs besides its arguments (settings, Redis), built once per worker process.

``omnibridge worker`` installs it at start; a job run by RQ's own ``rq worker`` command builds it from the
environment on first use, so both ways of running workers behave the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis
from rq import Queue

from bridge.jobqueue import make_queue
from bridge.settings import Settings


@dataclass(frozen=True, slots=True)
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    queue: Queue


_current: WorkerContext | None = None


def install(settings: Settings, connection: redis.Redis) -> WorkerContext:
    global _current
    _current = WorkerContext(settings=settings, redis=connection, queue=make_queue(settings, connection))
    return _current


def current() -> WorkerContext:
    if _current is None:
        settings = Settings.from_env(os.environ)
        return install(settings, redis.Redis.from_url(settings.require_redis()))
    return _current
