"""Jobs used only by worker tests; importable by a worker subprocess because the repo root is on its path."""

import time

import redis
from rq import get_current_job


def sleep_then_mark(seconds: float, key: str) -> str:
    connection: redis.Redis = get_current_job().connection
    connection.set(f"{key}:started", "1")
    time.sleep(seconds)
    connection.set(key, "done")
    return "slept"
