"""A flood of webhooks while real chats are opened: is a chat still routed at once, and does Redis stay bounded?

    python -m bench.flood [--events 100000] [--connections 48] [--chats 5] [--duplicates 0.1] [--edits 0.1]
                          [--pause-workers 0] [--other-max 50000] [--routing-max 100000] [--no-answer]

1. **Bytes per item** in a scratch Redis (``used_memory`` before and after 20,000 of each, through the event log's
   own script): a line of the routing lane (a ``LivechatSessionQueued``) and of the other lane (an agent
   ``Message``), a dedupe mark (``ob:seen:*``, kept ``DEDUPE_TTL_SECONDS``), and the mark an applied agent message
   leaves when the no-answer clock is on (``ob:replied:*``, kept an hour); then what the default bounds cap the
   event log at. The defaults of ``EVENT_LOG_ROUTING_MAX_LINES`` and ``EVENT_LOG_OTHER_MAX_LINES`` were chosen from
   these figures.
2. **The flood**: the Procfile's processes (``bench.common.Bridge``: one ``python -m bridge web``, here two
   ``python -m bridge worker``), a private redis-server and the Rocket.Chat double in this process, whose
   ``WebhookPoster`` posts the real chats' webhooks. ``--events`` agent-message webhooks, each for a room of its own,
   are posted on loopback by a process of their own (``bench.loopback``: ``--connections`` keep-alive connections;
   a 503 is posted again 0.5 s later, up to 20 attempts, as Rocket.Chat retries a 5xx), ``--duplicates`` of them
   redeliveries of the one before and ``--edits`` of them ``LivechatEdit`` (answered 200 ``ignored``). ``--chats``
   real chats are opened in the double at even steps through the flood; with ``--pause-workers S`` both workers are
   stopped (SIGSTOP) for S seconds after a tenth of the flood, so the other lane reaches its bound, and one more chat
   is opened the moment they resume, with that lane full. Per chat: from the double's poster sending the chat's
   ``LivechatSessionQueued`` (and from the web process's 200 to it) to the double receiving its ``inquiries.take``.
   Also: webhooks/s, the answers by status, 503s at the bound, lines per lane at peak, and Redis ``used_memory``
   before, at peak (sampled every 50 ms) and after the log drained.

The double, the poster, the flood, web, workers and Redis share the machine: figures vary between runs. Timings are
printed, never asserted (``tests/test_flood.py`` asserts the issue's 2 s bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import redis
import redis.asyncio

from bench.common import ROOT, WEBHOOK_TOKEN, Bridge, Taken, machine, python, spawn, stop, wait_for
from bench.latency import TimedPoster
from bench.loopback import FloodProcess
from bridge import keys
from bridge.embedded import EmbeddedRedis
from bridge.eventlog import EventLog
from bridge.events import parse_event
from bridge.sandbox.state import SandboxState
from bridge.settings import Settings

FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
DEPARTMENT = "dept-bench"
SAMPLE = 20_000
MB = 1e6


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


# -- 1. bytes per item -------------------------------------------------------------------------------------------


def message(n: int) -> dict:
    """A distinct agent message, as Rocket.Chat posts it: room ``flood-<n>``, message ``flood-msg-<n>``."""
    base = fixture("Message__from_agent")
    room = f"flood-{n:08d}"
    return {**base, "_id": room, "messages": [{**base["messages"][0], "_id": f"flood-msg-{n:08d}", "rid": room}]}


def queued(n: int) -> dict:
    return {**fixture("LivechatSessionQueued__basic"), "_id": f"Qr{n:015d}"}  # 17 characters, as Rocket.Chat's


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def costs() -> dict[str, float]:
    """Bytes of ``used_memory`` per routing line, other line, dedupe mark and reply mark."""
    found: dict[str, float] = {}
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        settings = Settings(redis_url=server.url, event_log_routing_max_lines=10**7, event_log_other_max_lines=10**7)
        for name, make, lane in (("routing line", queued, keys.events()), ("other line", message, keys.events_other())):
            client.flushall()
            # A first round writes the job template, the script and a job: measured from after it.
            asyncio.run(_append(settings, [parse_event(make(n)) for n in range(SAMPLE)]))
            client.delete(lane, *client.keys("ob:seen:*"))
            events = [parse_event(make(n)) for n in range(SAMPLE, 2 * SAMPLE)]
            before = used(client)
            asyncio.run(_append(settings, events))
            both = used(client)
            client.delete(lane)
            marks = used(client)
            found[name] = (both - marks) / SAMPLE
            found["dedupe mark"] = (marks - before) / SAMPLE
        client.flushall()
        before = used(client)
        pipe = client.pipeline(transaction=False)
        for n in range(SAMPLE):
            pipe.set(keys.replied(f"flood-{n:08d}"), "Hx7nEqKfG2aPcT9bW", ex=3600)
        pipe.execute()
        found["reply mark"] = (used(client) - before) / SAMPLE
        client.close()
    return found


async def _append(settings: Settings, events: list) -> None:
    client = redis.asyncio.Redis.from_url(settings.require_redis())
    log = EventLog(settings, client)
    try:
        for start in range(0, len(events), 256):
            await log.append(events[start : start + 256])
    finally:
        await client.aclose()


# -- 2. the flood ------------------------------------------------------------------------------------------------


class Watch(threading.Thread):
    """``used_memory`` and each lane's length every 50 ms: their peaks."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(name="redis-watch", daemon=True)
        self.client = client
        self.stopping = threading.Event()
        self.peak_memory = 0
        self.peak_routing = 0
        self.peak_other = 0

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            pipe = self.client.pipeline(transaction=False)
            pipe.info("memory")
            pipe.llen(keys.events())
            pipe.llen(keys.events_other())
            memory, routing, other = pipe.execute()
            self.peak_memory = max(self.peak_memory, int(memory["used_memory"]))
            self.peak_routing = max(self.peak_routing, routing)
            self.peak_other = max(self.peak_other, other)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


class Bodies:
    """Body ``n``: an agent message of room n; or (a share ``edits``) a LivechatEdit; or (a share ``duplicates``) the
    message of room n - 1 again. Spread evenly (a fixed stride through each thousand). Picklable: it is called in the
    flood's own process."""

    def __init__(self, duplicates: float, edits: float) -> None:
        self.duplicates = duplicates
        self.edits = edits
        self.message = json.dumps(message(0), separators=(",", ":"))
        self.edit = json.dumps({**fixture("LivechatEdit__basic"), "_id": "flood-00000000"}, separators=(",", ":"))

    def __call__(self, n: int) -> bytes:
        share = (n * 7919) % 1000 / 1000
        if share < self.edits:
            return self.edit.replace("00000000", f"{n:08d}").encode()
        if share < self.edits + self.duplicates and n > 0:
            n -= 1
        return self.message.replace("00000000", f"{n:08d}").encode()


def ms(seconds: float | None) -> str:
    return "not routed" if seconds is None else f"{seconds * 1000:.0f} ms"


def run_flood(args: argparse.Namespace, work: Path) -> None:
    state = SandboxState("7.13.9", seed=13)
    state.add_department("Bench", department_id=DEPARTMENT)
    for n in range(10):
        state.add_agent(f"agent{n:02d}", max_chats=100_000, departments=[DEPARTMENT])
    taken = Taken()
    state.listeners.append(taken)
    extra = {"EVENT_LOG_OTHER_MAX_LINES": str(args.other_max), "EVENT_LOG_ROUTING_MAX_LINES": str(args.routing_max)}
    if args.no_answer:
        extra["NO_ANSWER_SECONDS"] = "3600"  # every applied agent message then writes its reply mark
    with Bridge(work, state, extra=extra, poster=TimedPoster) as bridge:
        poster = bridge.poster
        assert isinstance(poster, TimedPoster)
        second_log = work / "worker-2.log"
        second = spawn([python(), "-m", "bridge", "worker", "--name", f"bench-2-{bridge.port}"], bridge.env, second_log)
        try:
            warm = [state.open_chat(department=DEPARTMENT)[0]["_id"] for _ in range(3)]
            wait_for(lambda: taken.count(warm) == len(warm), 30, "the warm-up chats to be taken")
            time.sleep(1.0)
            flood_and_report(args, bridge, second, taken, poster)
        finally:
            print(f"second worker exited with {stop(second)}")
    print(f"process exits: {bridge.statuses}")


def flood_and_report(
    args: argparse.Namespace, bridge: Bridge, second: object, taken: Taken, poster: TimedPoster
) -> None:
    client = bridge.client
    before = used(client)
    watch = Watch(client)
    flood = FloodProcess(
        bridge.port,
        WEBHOOK_TOKEN,
        Bodies(args.duplicates, args.edits),
        args.events,
        connections=args.connections,
        attempts=20,
        retry_delay=0.5,
    )
    workers = [p.pid for p in (bridge.worker, second) if p is not None]  # type: ignore[attr-defined]
    steps = [args.events * (k + 1) // (args.chats + 1) for k in range(args.chats)]
    chats: list[tuple[str, str, int]] = []  # room, when (what the other lane held when it was opened)
    watch.start()
    flood.start()
    try:
        if args.pause_workers > 0:
            wait_for(lambda: flood.answered() >= args.events // 10, 120, "a tenth of the flood")
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(args.pause_workers)
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
            lines = client.llen(keys.events_other())
            chats.append((bridge.state.open_chat(department=DEPARTMENT)[0]["_id"], "workers resumed", lines))
        for step in steps:
            wait_for(lambda s=step: flood.answered() >= s, 300, f"{step} answers")
            lines = client.llen(keys.events_other())
            chats.append((bridge.state.open_chat(department=DEPARTMENT)[0]["_id"], f"{step:,} answered", lines))
        progress = flood.join(timeout=600)
        rooms = [room for room, _, _ in chats]
        wait_for(lambda: taken.count(rooms) == len(rooms), 60, "every chat to be taken")
        wait_for(lambda: client.llen(keys.events()) + client.llen(keys.events_other()) == 0, 120, "the log to drain")
        time.sleep(0.5)
    finally:
        watch.stop()
        flood.stop()
    bridge.check_alive()
    after = used(client)
    with taken.lock:
        took = dict(taken.at)
    with poster.times_lock:
        sent, answered = dict(poster.sent), dict(poster.answered)
    print(
        f"flood: {args.events:,} webhooks in {progress.seconds:.1f} s = {args.events / progress.seconds:,.0f}/s "
        f"({progress.answered:,} answers with retries; {args.connections} connections)"
    )
    print(
        f"  answers: {dict(sorted(progress.statuses.items()))}; accepted {progress.accepted:,}, duplicate "
        f"{progress.duplicates:,}, ignored {progress.ignored:,}; 503 at the bound {progress.refused:,} "
        f"(gave up {progress.gave_up}, connection errors {progress.errors})"
    )
    print(
        f"  lines at peak: routing lane {watch.peak_routing:,} (bound {args.routing_max:,}), other lane "
        f"{watch.peak_other:,} (bound {args.other_max:,})"
    )
    print(
        f"  Redis used_memory: before {before / MB:.1f} MB, peak {watch.peak_memory / MB:.1f} MB "
        f"(+{(watch.peak_memory - before) / MB:.1f}), after the log drained {after / MB:.1f} MB "
        f"(+{(after - before) / MB:.1f}: dedupe marks, kept DEDUPE_TTL_SECONDS"
        f"{'; reply marks, kept an hour' if args.no_answer else ''})"
    )
    for room, when, lines in chats:
        routed = room in took and room in sent
        print(
            f"  chat opened at {when} (other lane {lines:,} lines): its queued webhook sent -> inquiries.take "
            f"{ms(took[room] - sent[room] if routed else None)}; answered 200 -> inquiries.take "
            f"{ms(took[room] - answered[room] if routed else None)}"
        )
    print("  (answered -> take is below 0 when the take reached the double before the poster's thread noted the 200)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=48)
    parser.add_argument("--chats", type=int, default=5, help="real chats opened at even steps through the flood")
    parser.add_argument("--duplicates", type=float, default=0.0, help="share of redeliveries, 0 to 1")
    parser.add_argument("--edits", type=float, default=0.0, help="share of LivechatEdit webhooks, 0 to 1")
    parser.add_argument("--pause-workers", type=float, default=0.0, help="seconds both workers are stopped")
    parser.add_argument("--other-max", type=int, default=Settings().event_log_other_max_lines)
    parser.add_argument("--routing-max", type=int, default=Settings().event_log_routing_max_lines)
    parser.add_argument("--no-answer", action="store_true", help="NO_ANSWER_SECONDS=3600 (messages write marks)")
    parser.add_argument("--skip-costs", action="store_true", help="skip the bytes-per-item measurement")
    args = parser.parse_args()
    print(machine())
    if not args.skip_costs:
        found = costs()
        print(
            "bytes of Redis used_memory per item (20,000 of each): "
            + ", ".join(f"{k} {v:.0f}" for k, v in found.items())
        )
        default = Settings()
        routing = default.event_log_routing_max_lines * found["routing line"]
        other = default.event_log_other_max_lines * found["other line"]
        print(
            f"  default bounds: routing lane {default.event_log_routing_max_lines:,} lines = {routing / MB:.1f} MB, "
            f"other lane {default.event_log_other_max_lines:,} lines = {other / MB:.1f} MB; both full: "
            f"{(routing + other) / MB:.1f} MB"
        )
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        run_flood(args, Path(tmp))


if __name__ == "__main__":
    main()
