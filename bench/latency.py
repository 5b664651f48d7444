"""Latency from a queued chat's webhook to its ``inquiries.take``, at a steady rate, beside the double's round trip.

    python -m bench.latency [--rate 50] [--seconds 20] [--agents 40] [--drain 30] [--round-trips 300]

The Procfile's setup, as in bench/routing.py (``bench.common.Bridge``): one ``python -m bridge web`` and one
``python -m bridge worker`` process, a private redis-server and the Rocket.Chat double (``bridge.sandbox``, in this
process) whose ``WebhookPoster`` posts each queued chat to the web process. ``--agents`` agents with a large
capacity, so nobody is ever full; the service account has the ``bot`` role.

1. Reference: the double's own round trip. A fresh interpreter (so it does not share this process's GIL with the
   double) calls ``GET livechat/inquiries.getOne?roomId=`` ``--round-trips`` times, one after the other, on one
   keep-alive httpx client with the service account's headers: the kind of call the worker makes per chat
   (``getOne``, then ``take``). p50 and p99.
2. Latency: chats are opened in the double at ``--rate`` per second for ``--seconds``, each at its own absolute
   time (start + i / rate), so a slow moment does not lower the rate after it. Per chat: from the moment the poster
   starts sending its ``LivechatSessionQueued`` POST to the moment the double receives the ``inquiries.take`` for
   it (its TAKEN listener). The web process's own receive moment is not visible from here: the figure includes the
   webhook request's way to the web process (on loopback; the webhook's full round trip, send to 200, is printed
   too). Chats not taken ``--drain`` seconds after the last one was opened count as not routed (and as slower
   than every routed one in the percentiles). p50/p99 are also printed per quarter of the run: a rate the bridge
   cannot keep up with shows as latency growing from quarter to quarter.

The double, the poster, web, worker and Redis share the machine: figures vary 10-40% between runs; compare
them within one run. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from bench.common import Bridge, Taken, machine, percentile, wait_for
from bridge.sandbox.state import QUEUED, SandboxState
from bridge.sandbox.webhooks import WebhookPoster

if TYPE_CHECKING:
    from bridge.sandbox.webhooks import _Pending

TAKE = "/api/v1/livechat/inquiries.take"
GET_ONE = "/api/v1/livechat/inquiries.getOne"
DEPARTMENT = "dept-bench"


class TimedPoster(WebhookPoster):
    """The double's poster, noting when each room's first ``LivechatSessionQueued`` POST starts and is answered.

    The poster has no hook at the moment a POST starts; its one-attempt method is the closest to the moment the
    web process receives the webhook that this process can see.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.times_lock = threading.Lock()
        self.sent: dict[str, float] = {}
        self.answered: dict[str, float] = {}

    def _attempt(self, item: _Pending) -> None:
        first = item.event_type == QUEUED and item.attempt == 0
        started = time.monotonic()
        super()._attempt(item)
        if first:
            ended = time.monotonic()
            with self.times_lock:
                self.sent[item.rid] = started
                self.answered[item.rid] = ended


def round_trips(url: str, headers: dict[str, str], room_id: str, count: int) -> list[float]:
    """Seconds per ``inquiries.getOne``, one after the other on one keep-alive client (run in a fresh process)."""
    times: list[float] = []
    with httpx.Client(base_url=url, headers=headers, timeout=10.0, trust_env=False) as client:
        for n in range(count + 10):
            started = time.perf_counter()
            client.get(GET_ONE, params={"roomId": room_id}).raise_for_status()
            if n >= 10:  # the first ones open the connection and warm the server up
                times.append(time.perf_counter() - started)
    return times


def reference(bridge: Bridge, room_id: str, count: int) -> list[float]:
    assert bridge.server is not None
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(round_trips, bridge.server.url, bridge.rocketchat_headers, room_id, count).result()


def open_steadily(state: SandboxState, rate: float, seconds: float) -> tuple[list[str], dict[str, float], float]:
    """Open ``rate * seconds`` chats, each at start + i / rate. Returns rooms, open times and the worst lateness."""
    total = max(1, round(rate * seconds))
    rooms: list[str] = []
    opened: dict[str, float] = {}
    late = 0.0
    start = time.monotonic() + 0.05
    for n in range(total):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            late = max(late, -delay)
        at = time.monotonic()
        room_id = state.open_chat(department=DEPARTMENT)[0]["_id"]
        rooms.append(room_id)
        opened[room_id] = at
    return rooms, opened, late


def ms(seconds: float) -> str:
    return "not routed" if seconds == float("inf") else f"{seconds * 1000:.1f} ms"


def report(bridge: Bridge, taken: Taken, poster: TimedPoster, rooms: list[str], opened: dict[str, float]) -> None:
    with taken.lock:
        took = dict(taken.at)
    with poster.times_lock:
        sent, answered = dict(poster.sent), dict(poster.answered)
    inf = float("inf")
    from_send = [took.get(r, inf) - sent[r] if r in sent else inf for r in rooms]
    from_open = [took.get(r, inf) - opened[r] for r in rooms]
    webhook = [answered[r] - sent[r] for r in rooms if r in sent]
    routed = sum(1 for r in rooms if r in took)
    print(
        f"latency, webhook sent -> inquiries.take received: p50 {ms(percentile(from_send, 0.5))}  "
        f"p99 {ms(percentile(from_send, 0.99))}  max {ms(max(from_send))}"
    )
    print(
        f"  the same from open_chat (the poster's queueing included): p50 {ms(percentile(from_open, 0.5))}  "
        f"p99 {ms(percentile(from_open, 0.99))}"
    )
    print(
        f"  the webhook's own round trip (send -> 200), included above up to the web process's receipt: "
        f"p50 {ms(percentile(webhook, 0.5))}  p99 {ms(percentile(webhook, 0.99))}"
    )
    bounds = [len(rooms) * k // 4 for k in range(5)]
    quarters = [from_send[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    print("  by quarter of the run (chats in opening order): " + "; ".join(
        f"p50 {ms(percentile(chunk, 0.5))} / p99 {ms(percentile(chunk, 0.99))}" for chunk in quarters
    ))  # fmt: skip
    print(f"routed: {routed}/{len(rooms)}; not routed by the end: {len(rooms) - routed}")
    entries = [e for e in bridge.state.requests() if e.path == TAKE and e.at >= min(opened.values())]
    assert bridge.poster is not None
    undelivered = Counter(o.outcome for o in bridge.poster.outcomes() if o.outcome != "delivered")
    detail = f" {dict(undelivered)}" if undelivered else ""
    print(
        f"inquiries.take answers: {dict(Counter(e.status for e in entries))}; "
        f"webhooks not answered 200: {sum(undelivered.values())}{detail}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0, help="chats opened per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long chats are opened")
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the last chats to be taken")
    parser.add_argument("--round-trips", type=int, default=300, help="getOne calls of the reference")
    args = parser.parse_args()
    print(machine())
    state = SandboxState("7.13.9", seed=11)
    state.add_department("Bench", department_id=DEPARTMENT)
    for n in range(args.agents):
        state.add_agent(f"agent{n:03d}", max_chats=100_000, departments=[DEPARTMENT])
    taken = Taken()
    state.listeners.append(taken)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        with Bridge(Path(tmp), state, poster=TimedPoster) as bridge:
            run(bridge, taken, args)
        print(f"process exits: {bridge.statuses}")


def run(bridge: Bridge, taken: Taken, args: argparse.Namespace) -> None:
    state, poster = bridge.state, bridge.poster
    assert isinstance(poster, TimedPoster)
    warm = [state.open_chat(department=DEPARTMENT)[0]["_id"] for _ in range(5)]  # imports, agent list
    wait_for(lambda: taken.count(warm) == len(warm), 30, "the warm-up chats to be taken")
    time.sleep(1)
    trips = reference(bridge, warm[0], args.round_trips)
    print(
        f"reference, the double's round trip (GET inquiries.getOne, keep-alive, sequential, other process): "
        f"p50 {ms(percentile(trips, 0.5))}  p99 {ms(percentile(trips, 0.99))}  ({len(trips)} calls)"
    )
    rooms, opened, late = open_steadily(state, args.rate, args.seconds)
    span = max(opened.values()) - min(opened.values())
    print(
        f"opened {len(rooms)} chats at {len(rooms) / max(span, 1e-9):.1f}/s over {span:.1f} s "
        f"(target {args.rate:g}/s; at worst {late * 1000:.0f} ms behind schedule)"
    )
    try:
        wait_for(lambda: taken.count(rooms) == len(rooms), args.drain, "every chat to be taken", interval=0.05)
    except SystemExit as error:
        print(f"  {error}")
    bridge.check_alive()
    report(bridge, taken, poster, rooms, opened)


if __name__ == "__main__":
    main()
