"""How many trivial jobs per second each RQ worker class runs, on a private redis-server.

    python -m bench.worker_classes [--jobs 2000]

Prints jobs/s for SimpleWorker (in-process, our choice) and Worker (forks a work horse per job). Figures vary
10-40% between runs on a shared machine; compare them within one run.
"""

from __future__ import annotations

import argparse
import platform
import time

import redis
from rq import Queue, SimpleWorker, Worker
from rq.serializers import JSONSerializer

from bridge.embedded import EmbeddedRedis


def run(worker_class: type[Worker], jobs: int, url: str) -> float:
    connection = redis.Redis.from_url(url)
    connection.flushall()
    queue = Queue("bench", connection=connection, serializer=JSONSerializer)
    queue.enqueue_many([Queue.prepare_data("bench.trivial.noop", args=(i,)) for i in range(jobs)])
    worker = worker_class([queue], connection=connection, serializer=JSONSerializer)
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - started
    assert queue.finished_job_registry.count == jobs, "not every job finished"
    connection.close()
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    with EmbeddedRedis() as server:
        for worker_class, jobs in ((SimpleWorker, args.jobs), (Worker, max(200, args.jobs // 10))):
            rate = run(worker_class, jobs, server.url)
            print(f"{worker_class.__name__:>12}: {rate:8.0f} trivial jobs/s ({jobs} jobs, one process)")


if __name__ == "__main__":
    main()
