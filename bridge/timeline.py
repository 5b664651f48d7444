"""Chats routed over time, in short buckets kept in Redis, for the live view's throughput and wait charts.

Where a chat is routed, ``record_routed`` adds it to the bucket of that moment (one pipelined ``HINCRBY``,
``HINCRBYFLOAT`` and ``EXPIRE``: every web and worker process adds to the same buckets). ``recent`` reads the
last ``WINDOW_SECONDS`` of buckets, oldest first, empty ones included so a chart's time axis has no holes. Buckets
expire after ``RETENTION_SECONDS``, so nothing needs cleaning up.
"""

from __future__ import annotations

from typing import Any

import redis

from bridge import keys

BUCKET_SECONDS = 10
WINDOW_SECONDS = 600
RETENTION_SECONDS = 3600


def bucket_of(now: float) -> int:
    return int(now // BUCKET_SECONDS) * BUCKET_SECONDS


def record_routed(connection: redis.Redis, waited_seconds: float, now: float) -> None:
    """Count one chat routed at ``now`` (epoch seconds) after waiting ``waited_seconds`` in the queue."""
    key = keys.timeline(bucket_of(now))
    pipe = connection.pipeline(transaction=False)
    pipe.hincrby(key, "routed", 1)
    pipe.hincrbyfloat(key, "wait_sum", max(0.0, float(waited_seconds)))
    pipe.expire(key, RETENTION_SECONDS)
    pipe.execute()


def recent(connection: redis.Redis, now: float, window: int = WINDOW_SECONDS) -> list[dict[str, Any]]:
    """``{"start", "routed", "mean_wait"}`` per bucket over the last ``window`` seconds, the current one last.

    ``mean_wait`` is None for a bucket in which nothing was routed.
    """
    last = bucket_of(now)
    starts = range(last - (window // BUCKET_SECONDS - 1) * BUCKET_SECONDS, last + 1, BUCKET_SECONDS)
    pipe = connection.pipeline(transaction=False)
    for start in starts:
        pipe.hmget(keys.timeline(start), "routed", "wait_sum")
    buckets = []
    for start, (routed, wait_sum) in zip(starts, pipe.execute(), strict=True):
        count = int(routed or 0)
        mean = round(float(wait_sum or 0) / count, 3) if count else None
        buckets.append({"start": start, "routed": count, "mean_wait": mean})
    return buckets
