"""Chats routed per second end to end, against the rate at which the same worker process runs trivial RQ jobs.

    python -m bench.routing [--chats 400] [--agents 40] [--trivial 2000] [--limited-seconds 30]

The Procfile's setup: one ``python -m bridge web`` and one ``python -m bridge worker`` process, a private
redis-server (``EmbeddedRedis``) and the Rocket.Chat double (``bridge.sandbox``, in this process) whose
``WebhookPoster`` posts each queued chat to the web process. Many agents with a large capacity, so nobody is
ever full; the service account has the ``bot`` role, and every setting is at its default.

1. Reference: ``--trivial`` ``bench.trivial.noop`` jobs are put on the bridge's queue and the same worker
   process runs them; jobs/s from the enqueue to the last one finished.
2. Routing: ``--chats`` chats are opened at once in the double; chats/s from the first open to the last
   ``inquiries.take`` the double answered 200. Also: ``agents/available`` calls per 1,000 routed chats and the
   other Rocket.Chat calls per chat.
3. With ``--limited-seconds`` > 0: the double's default rate limiter (10 calls per minute per route), a service
   account without the bot role, the bridge learning the limit from the X-RateLimit headers; chats are opened for
   that long and the chats routed per window and the 429s the double answered are counted.

The double, the poster, web, worker and Redis share the machine: figures vary 10-40% between runs; compare
them within one run. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import Taken, child_env, free_port, http_ok, machine, python, spawn, stop, wait_for
from bridge.embedded import EmbeddedRedis
from bridge.sandbox.server import SandboxServer
from bridge.sandbox.state import SandboxState
from bridge.sandbox.webhooks import WebhookPoster

TOKEN = "bench-webhook-token-91f3"
QUEUE = "bridge"
TAKE = "/api/v1/livechat/inquiries.take"
AVAILABLE = "/api/v1/omnichannel/agents/available"
DEPARTMENT = "dept-bench"
BOT_ROLES = ("user", "bot", "livechat-manager", "omnibridge-voip")
PLAIN_ROLES = ("user", "livechat-manager", "omnibridge-voip")


class Setup:
    """Redis, the double with ``agents`` agents, the poster, one web and one worker process."""

    def __init__(self, work: Path, agents: int, *, bot: bool, rate_limited: bool) -> None:
        self.work = work
        self.redis = EmbeddedRedis().start()
        self.client = redis.Redis.from_url(self.redis.url)
        self.state = SandboxState("7.13.9", seed=11, rate_limit_enabled=rate_limited)
        self.state.add_department("Bench", department_id=DEPARTMENT)
        for n in range(agents):
            self.state.add_agent(f"agent{n:03d}", max_chats=100_000, departments=[DEPARTMENT])
        self.state.grant("omnibridge-voip", "manage-agent-extension-association")
        user_id, token = self.state.add_account("omnibridge", BOT_ROLES if bot else PLAIN_ROLES)
        self.taken = Taken()
        self.state.listeners.append(self.taken)
        self.server = SandboxServer(self.state).start()
        self.port = free_port()
        extra = {
            "REDIS_URL": self.redis.url,
            "ROCKETCHAT_URL": self.server.url,
            "ROCKETCHAT_USER_ID": user_id,
            "ROCKETCHAT_AUTH_TOKEN": token,
            "ROCKETCHAT_WEBHOOK_TOKEN": TOKEN,
            "LOG_LEVEL": "WARNING",
            "SPOOL_DIR": str(work / "spool"),
        }
        self.env = child_env(extra)
        self.web_log, self.worker_log = work / f"web-{self.port}.log", work / f"worker-{self.port}.log"
        self.web = spawn([python(), "-m", "bridge", "web", "--port", str(self.port)], self.env, self.web_log)
        self.worker = spawn(
            [python(), "-m", "bridge", "worker", "--name", f"bench-{self.port}"], self.env, self.worker_log
        )
        wait_for(http_ok(f"http://127.0.0.1:{self.port}/readyz", self.web, self.web_log), 30, "the web process")
        self.poster = WebhookPoster(
            self.state, f"http://127.0.0.1:{self.port}/webhooks/livechat", TOKEN, timeout=5.0, retry_delay=0.5
        ).attach()

    def open_chats(self, count: int) -> list[str]:
        return [self.state.open_chat(department=DEPARTMENT)[0]["_id"] for _ in range(count)]

    def close(self) -> dict[str, int]:
        self.poster.close(timeout=5, flush=False)
        statuses = {"worker": stop(self.worker), "web": stop(self.web)}
        self.server.stop()
        self.client.close()
        self.redis.close()
        return statuses


def trivial_rate(setup: Setup, jobs: int) -> float:
    queue = Queue(QUEUE, connection=setup.client, serializer=JSONSerializer)
    before = queue.finished_job_registry.count
    started = time.perf_counter()
    queue.enqueue_many([Queue.prepare_data("bench.trivial.noop", args=(i,)) for i in range(jobs)])
    wait_for(lambda: queue.finished_job_registry.count - before >= jobs, 120, "the trivial jobs", interval=0.01)
    return jobs / (time.perf_counter() - started)


def routing(setup: Setup, chats: int, timeout: float) -> float:
    setup.state.clear_log()
    started = time.monotonic()
    rooms = setup.open_chats(chats)
    opened = time.monotonic() - started
    try:
        wait_for(lambda: setup.taken.count(rooms) == chats, timeout, "every chat to be taken", interval=0.02)
    except SystemExit as error:
        print(f"  {error}: {setup.taken.count(rooms)}/{chats} taken")
    routed = setup.taken.count(rooms)
    elapsed = setup.taken.last(rooms) - started if routed else float("nan")
    entries = [e for e in setup.state.requests() if e.at >= started]
    calls = Counter(e.path for e in entries)
    takes = Counter(e.status for e in entries if e.path == TAKE)
    latencies = sorted(setup.taken.at[rid] - started for rid in rooms if rid in setup.taken.at)
    print(
        f"routing: {routed / elapsed:8.1f} chats/s  ({routed}/{chats} chats routed in {elapsed:.2f} s; "
        f"opening them took {opened:.2f} s; first taken after {latencies[0]:.2f} s)"
    )
    print(f"agents/available: {1000 * calls[AVAILABLE] / max(routed, 1):.1f} calls per 1,000 routed chats")
    print(f"inquiries.take answers: {dict(takes)}")
    print("Rocket.Chat calls per routed chat: " + ", ".join(
        f"{path.removeprefix('/api/v1/')} {n / max(routed, 1):.2f}" for path, n in calls.most_common()
    ))  # fmt: skip
    undelivered = [o for o in setup.poster.outcomes() if o.outcome != "delivered"]
    print(f"webhooks not answered 200: {len(undelivered)}")
    return routed / elapsed


def limited(work: Path, agents: int, seconds: float) -> None:
    setup = Setup(work, agents, bot=False, rate_limited=True)
    try:
        started = time.monotonic()
        rooms: list[str] = []
        while time.monotonic() - started < seconds:
            rooms += setup.open_chats(1)
            time.sleep(0.25)
        time.sleep(2)
        entries = setup.state.requests()
        limited_calls = Counter(e.path.removeprefix("/api/v1/") for e in entries if e.status == 429)
        calls = Counter(e.path.removeprefix("/api/v1/") for e in entries)
        routed = setup.taken.count(rooms)
        print(
            f"rate-limited (non-bot account, limits learned, double limits 10/min/route): {len(rooms)} chats opened "
            f"over {seconds:.0f} s, {routed} routed within {time.monotonic() - started:.0f} s"
        )
        print(f"  429s: {sum(limited_calls.values())} {dict(limited_calls)}; calls made: {dict(calls)}")
        queue = Queue(QUEUE, connection=setup.client, serializer=JSONSerializer)
        running = [queue.fetch_job(job_id) for job_id in queue.started_job_registry.get_job_ids()]
        print(f"  the worker is running: {[job.description for job in running if job]}; {queue.count} job(s) queued")
    finally:
        setup.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=400)
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--trivial", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for every chat to be taken")
    parser.add_argument("--limited-seconds", type=float, default=0.0, help="run the rate-limited part that long")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        work = Path(tmp)
        setup = Setup(work, args.agents, bot=True, rate_limited=True)
        try:
            setup.open_chats(5)  # warm-up: imports, first agent list, connections
            time.sleep(3)
            rate = trivial_rate(setup, args.trivial)
            print(f"trivial: {rate:8.0f} jobs/s  ({args.trivial} bench.trivial.noop jobs, the same worker process)")
            routed = routing(setup, args.chats, args.timeout)
        finally:
            statuses = setup.close()
        print(f"ratio routed chats/s / trivial jobs/s: {routed / rate:.2f}   (process exits: {statuses})")
        if args.limited_seconds > 0:
            limited(work, args.agents, args.limited_seconds)


if __name__ == "__main__":
    main()
