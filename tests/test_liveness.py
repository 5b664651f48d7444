"""Never stall (issue 11): end-to-end liveness with real processes and default settings.

Every test runs ``omnibridge web`` and two ``omnibridge worker`` processes against the session's Redis and the
Rocket.Chat double over HTTP, **with the double's rate limiter on**, webhooks posted by ``WebhookPoster`` the way
Rocket.Chat posts them, and every bridge setting at its default unless the test is about that setting (see
``tests/rig.py``). The referee checks each take against the agent's capacity in the double; the request log
counts takes, forwards and 429 answers. Each test prints its figures in the run's summary.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.sandbox.team import VOIP_ROLE
from tests.rig import (
    AGENTS_AVAILABLE,
    EXTENSION,
    FORWARD,
    INQUIRIES_LIST,
    ROOMS,
    TAKE,
    Lease,
    Rig,
    breakdown,
    bridge_rig,
    forwards_by_room,
    posts,
    takes_by_inquiry,
    too_many,
)
from tests.support import report
from tests.team import SALES, SUPPORT

pytestmark = [pytest.mark.slow]

TAKE_ROUTE = f"POST {TAKE}"


@pytest.fixture
def make_rig(redis_server, redis_url, redis_client, tmp_path) -> Iterator[Callable[..., Rig]]:
    """``make_rig(agents=, roles=, sandbox=, env=, close_after=)``: a started rig, stopped (and judged) after."""
    with contextlib.ExitStack() as stack:

        def make(**options: Any) -> Rig:
            return stack.enter_context(bridge_rig(redis_server, redis_url, redis_client, tmp_path, **options))

        yield make


def epoch_of(monotonic: float) -> float:
    return time.time() - (time.monotonic() - monotonic)


class InFlight:
    """Requests the double received and has not answered yet, per path (a delayed answer is logged only when
    it is sent): wraps the double's fault table, which sees every request first."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.arrived: dict[str, int] = {}
        self._lock = threading.Lock()
        table = rig.state.faults
        original = table.take

        def take(path: str):  # type: ignore[no-untyped-def]
            with self._lock:
                self.arrived[path] = self.arrived.get(path, 0) + 1
            return original(path)

        table.take = take  # type: ignore[method-assign]

    def pending(self, path: str) -> int:
        with self._lock:
            arrived = self.arrived.get(path, 0)
        return arrived - sum(1 for r in self.rig.state.requests() if r.path == path)

    def settle(self, path: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.pending(path) > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


# -- 1. defaults, the README's account, a burst --------------------------------------------------------------------


def test_bot_account_routes_100_chats_queued_at_once_with_defaults(make_rig):
    # 40 agents: the sample team's 8 slots plus agents 7..40 with capacities 2 to 4 (about 110 slots in all).
    rig = make_rig(agents=40, close_after=3.0)
    started = time.monotonic()
    rooms = rig.open_chats(100, gap=0)
    served = rig.wait_served(rooms, timeout=60)
    finished = rig.last_served(rooms) if rig.referee.served() else time.monotonic()
    during = [r for r in rig.state.requests() if started <= r.at <= finished]
    unserved = rig.unserved(rooms)
    report(
        f"\nliveness 1, bot account, defaults, 100 chats at once: {100 - len(unserved)}/100 served in "
        f"{finished - started:.1f} s; {len(during) / 100:.2f} Rocket.Chat calls per chat "
        f"({breakdown(during, per=100)}); 429s: {len(too_many(rig.state))}"
    )
    assert served, f"{len(unserved)} of 100 chats not served within 60 s\n{rig.output()}"
    rig.verify("1 bot account, 100 at once")


# -- 2. a non-bot account at Rocket.Chat's limit -------------------------------------------------------------------


def test_non_bot_account_routes_at_the_limit_without_429(make_rig):
    # Rocket.Chat's API_Enable_Rate_Limiter_Limit_Calls_Default (10) per API_Enable_Rate_Limiter_Limit_Time_Default,
    # the window shortened from 60 s to 15 s so that the test is short. The bridge is told nothing: it learns the
    # limit from the X-RateLimit-* headers of Rocket.Chat's answers.
    window = 15.0
    rig = make_rig(
        agents=12,  # 26 slots; agents close each chat after 1 s
        roles=("user", "livechat-manager", VOIP_ROLE),  # no bot: Rocket.Chat's rate limit applies
        sandbox={"rate_limit_calls": 10, "rate_limit_window_ms": int(window * 1000)},
        close_after=1.0,
    )
    started = time.monotonic()
    rooms = rig.open_chats(25, gap=0)
    samples: list[tuple[float, float | None, int]] = []  # (monotonic, ob:tick-last, chats unserved)
    voice: dict[str, Any] = {}

    def watch() -> None:
        now = time.monotonic()
        unserved = len(rig.unserved(rooms))
        samples.append((now, rig.tick_last(), unserved))
        if voice or not unserved:
            return
        takes = [r for r in posts(rig.state, TAKE) if r.at >= started]
        # The takes wait for the next window: the window's 10 calls are spent, or nothing was taken for 1.5 s.
        if len([t for t in takes if t.status == 200]) >= 10 or (takes and now - max(t.at for t in takes) > 1.5):
            voice["posted"] = time.monotonic()
            voice["answer"] = rig.voice_route("2001", SALES, "liveness-voice-1").status_code

    served = rig.wait_served(rooms, timeout=4 * window + 15, every=watch, interval=0.25)
    finished = rig.last_served(rooms) if rig.referee.served() else time.monotonic()
    refused = too_many(rig.state)
    windows = [len(w) for w in rig.limiter.windows(TAKE_ROUTE)]
    extension_calls = [r for r in posts(rig.state, EXTENSION) if r.at >= voice.get("posted", math.inf)]
    voice_latency = extension_calls[0].at - voice["posted"] if extension_calls else None
    later_takes = [r.at for r in posts(rig.state, TAKE) if r.at >= voice.get("posted", math.inf)]
    window_reset_after = later_takes[0] - voice["posted"] if later_takes else None
    stalled_at = voice.get("posted")
    ticked = [
        (at, last)
        for at, last, unserved in samples
        if stalled_at is not None and last is not None and unserved > 0 and last >= math.floor(epoch_of(stalled_at)) + 1
    ]
    report(
        f"\nliveness 2, non-bot account, 10 calls per {window:.0f} s: {25 - len(rig.unserved(rooms))}/25 served in "
        f"{finished - started:.1f} s (ceil(25/10) = 3 windows: about {2 * window:.0f} s); 429s: {len(refused)}; "
        f"takes per window of the double's limiter: {windows}; voice route posted "
        f"{'never' if stalled_at is None else f'{stalled_at - started:.1f} s in'} (answer {voice.get('answer')}), "
        f"its extension call reached Rocket.Chat after "
        f"{'never' if voice_latency is None else f'{voice_latency:.2f} s'}, the next take "
        f"{'never' if window_reset_after is None else f'{window_reset_after:.1f} s'} after the post; "
        f"ticks started while chats waited for the budget: {len({last for _, last in ticked})}"
    )
    assert not refused, f"Rocket.Chat answered 429: {[r.line for r in refused][:10]}\n{rig.output()}"
    assert served, f"not all 25 chats served within {4 * window + 15:.0f} s\n{rig.output()}"
    assert max(windows, default=0) <= 10, f"more than 10 takes in one window of the limiter: {windows}"
    assert stalled_at is not None, "the takes never waited for the budget (no voice request was posted)"
    assert voice["answer"] == 202, f"POST /voice/route answered {voice['answer']}"
    assert voice_latency is not None and voice_latency <= 3.0, (
        f"the voice route's Rocket.Chat call was held behind the take budget: it reached Rocket.Chat after "
        f"{voice_latency} s\n{rig.output()}"
    )
    assert ticked, f"no tick started while chats waited for the take budget: samples {samples[:3]}…{samples[-3:]}"
    rig.verify("2 non-bot account at the limit")


# -- 3. a lease holder killed --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    lease: str  # the lease's name; "room" means room:<the chat opened to make a worker take it>
    path: str  # the Rocket.Chat path the holder calls under the lease (delayed)
    due: tuple[str, ...] = ()  # Redis keys deleted to make the work due
    opens_chat: bool = False  # the lease is taken by routing a chat
    warm_up: bool = True  # route one chat first, so nothing else is due
    also: tuple[str, ...] = ()  # leases that show the holder is in the slow call (the tick: its recover_queued)


CASES = {
    "room": Case("room", TAKE, opens_chat=True),
    "load-rebuild": Case("load-rebuild", ROOMS, due=("ob:load-known",), opens_chat=True),
    "directory-refresh": Case(
        "refresh:agents:available:-", AGENTS_AVAILABLE, due=("ob:cache:agents:available:-",), opens_chat=True
    ),
    "recover-queued": Case("recover-queued", INQUIRIES_LIST, due=("ob:recover-due",)),
    "load-reconcile": Case("load-reconcile", ROOMS, due=("ob:reconcile-due",)),
    "tick": Case("tick", INQUIRIES_LIST, due=("ob:recover-due",), also=("recover-queued",)),
    "learn-take": Case(f"learn:{TAKE_ROUTE}", TAKE, opens_chat=True, warm_up=False),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_lease_holder_killed_while_holding_it_frees_routing(make_rig, case: Case):
    rig = make_rig(close_after=1.0)
    if case.warm_up:
        first = rig.open_chat(SALES)
        assert rig.wait_served([first], timeout=15), f"the warm-up chat was not served\n{rig.output()}"
    # A proxy that answers 503 after 20 s: the holder is stuck in that call (past the client's 10 s timeout, the
    # answer would not matter: the holder is dead by then, and a take is never applied).
    rig.state.inject(case.path, 503, count=1, delay=20.0)
    for key in case.due:
        rig.redis_client.delete(key)
    held = rig.open_chat(SALES) if case.opens_chat else None
    name = f"room:{held}" if case.lease == "room" else case.lease

    def holder() -> Lease | None:
        if any(rig.lease(other) is None for other in case.also):
            return None
        return rig.lease(name)

    deadline = time.monotonic() + 15
    lease = None
    while lease is None and time.monotonic() < deadline:
        lease = holder()
        time.sleep(0.02)
    assert lease is not None, (
        f"ob:lease:{name} never appeared within 15 s (leases seen: {sorted(rig.leases())})\n{rig.output()}"
    )
    victim = rig.process_of(lease.pid)
    assert victim is not None and victim.startswith("worker-"), (
        f"ob:lease:{name} is held by pid {lease.pid}, not a worker: "
        f"{ {n: p.pid for n, p in rig.processes.processes.items()} }"
    )
    # RQ's scheduler is a child forked by the worker that holds its lock: it keeps that worker's sockets open.
    inherited = rig.inherited_connections(victim)
    rig.processes.kill(victim)
    killed = time.monotonic()
    killed_epoch = time.time()
    rig.state.clear_faults()

    def since_kill() -> float:
        return time.monotonic() - killed

    # A new chat at once, and another once that one is served: the events after a kill must reach the survivor
    # too (a dead worker's blocking dequeue kept open by a child it forked would swallow a later job).
    fresh = [rig.open_chat(SUPPORT)]
    rig.wait_served(fresh, timeout=min(3.0, 10 - since_kill()))
    fresh.append(rig.open_chat(SALES))
    in_time = rig.wait_served(fresh, timeout=10 - since_kill())
    fresh_after = [(rig.served_at(rid) or math.inf) - killed for rid in fresh]
    tick_after = None
    if case.lease == "tick":  # the tick itself must come back, not only webhook-driven routing
        with contextlib.suppress(AssertionError):
            rig_wait(lambda: (rig.tick_last() or 0) > killed_epoch, timeout=15 - since_kill())
        tick_after = since_kill() if (rig.tick_last() or 0) > killed_epoch else None
    # A chat whose take the dead worker had sent may wait until that call must be over (the client's timeout
    # times its retries): it is reported, not required. Any other chat is served once the lease is free.
    excused = [held] if held and case.path == TAKE else []
    everyone = rig.wait_served([rid for rid in rig.rooms if rid not in excused], timeout=max(0.0, 20 - since_kill()))
    held_after = (rig.served_at(held) or math.inf) - killed if held else None
    report(
        f"\nliveness 3, {victim} SIGKILLed holding ob:lease:{name} "
        f"(its Redis connections a forked child keeps open: {', '.join(inherited) or 'none'}): new chats served "
        f"{', '.join(f'{t:.1f}' for t in fresh_after)} s after the kill"
        + (
            ""
            if held_after is None
            else f", the chat it was routing {held_after:.1f} s after"
            if held_after < math.inf
            else ", the chat whose take it had sent not yet (left alone until that take must be over)"
        )
        + ("" if case.lease != "tick" else f", the next tick started {tick_after or math.inf:.1f} s after")
    )
    assert in_time, (
        f"new chats not served within 10 s of the kill ({fresh_after} s; the victim's Redis connections a forked "
        f"child keeps open: {inherited})\n{rig.output()}"
    )
    if case.lease == "tick":
        assert tick_after is not None, f"no tick started within 15 s of the kill\n{rig.output()}"
    assert victim in rig.processes.exited(), f"{victim} still runs after SIGKILL"
    assert everyone, f"chats never served after the kill: {rig.unserved()}\n{rig.output()}"
    rig.verify(f"3 {case.lease} holder killed", excused=excused)


def rig_wait(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + max(0.0, timeout)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f} s")
        time.sleep(interval)


# -- 4. Rocket.Chat slower than the claim lease --------------------------------------------------------------------


def test_rocketchat_slower_than_the_claim_lease_takes_once(make_rig):
    rig = make_rig(close_after=1.0)
    flight = InFlight(rig)
    # 7 s: longer than a lease's TTL, shorter than the default 10 s client timeout. Every take in the first 10 s.
    rig.state.inject(TAKE, None, seconds=10, delay=7.0)
    started = time.monotonic()
    rooms = rig.open_chats(6, gap=0)
    served = rig.wait_served(rooms, timeout=30)
    finished = time.monotonic()
    time.sleep(2.0)  # a duplicate would be sent about now (the holder's lease lapsed, the chat still waiting)
    settled = flight.settle(TAKE, timeout=10)
    takes = takes_by_inquiry(rig.state, status=None)
    extra = {rid: takes[inquiry] for rid, inquiry in rig.rooms.items() if takes[inquiry] != 1}
    report(
        f"\nliveness 4a, inquiries.take answered after 7 s: 6 chats served in {finished - started:.1f} s, "
        f"takes per inquiry {sorted(takes.values())}"
    )
    assert served, f"not every chat served within 30 s\n{rig.output()}"
    assert settled, "takes still in flight 10 s after the last chat was served"
    assert not extra, f"chats taken more (or less) than once (any status): {extra}\n{rig.output()}"
    rig.verify("4a take slower than the claim lease")


def test_rocketchat_slower_than_the_claim_lease_forwards_once(make_rig):
    # Agents never answer (the double sends no agent Message unless told): each chat is forwarded once after 3 s.
    rig = make_rig(close_after=None, env={"NO_ANSWER_SECONDS": "3", "NO_ANSWER_MAX_ATTEMPTS": "1"})
    flight = InFlight(rig)
    rig.state.inject(FORWARD, None, delay=7.0)  # until cleared
    started = time.monotonic()
    rooms = rig.open_chats(3, gap=0)
    served = rig.wait_served(rooms, timeout=15)

    def forwarded() -> bool:
        done = forwards_by_room(rig.state)
        return all(done[rid] >= 1 for rid in rooms)

    with contextlib.suppress(AssertionError):
        rig_wait(forwarded, timeout=35)
    finished = time.monotonic()
    rig.state.clear_faults()
    time.sleep(2.0)
    settled = flight.settle(FORWARD, timeout=10)
    forwards = forwards_by_room(rig.state)
    ok = forwards_by_room(rig.state, status=200)
    report(
        f"\nliveness 4b, room.forward answered after 7 s (NO_ANSWER_SECONDS=3): 3 chats, forwards per room "
        f"{[forwards[rid] for rid in rooms]} (200: {[ok[rid] for rid in rooms]}), all forwarded "
        f"{finished - started:.1f} s after the chats opened"
    )
    assert served, f"not every chat served within 15 s\n{rig.output()}"
    assert all(forwards[rid] >= 1 for rid in rooms), f"chats never forwarded: {dict(forwards)}\n{rig.output()}"
    assert settled, "forwards still in flight 10 s after the last one was answered"
    assert all(forwards[rid] == 1 for rid in rooms), (
        f"room.forward sent more than once for a room: {dict(forwards)}\n{rig.output()}"
    )
    rig.verify("4b forward slower than the claim lease")


# -- 5. Redis down three times under a steady stream ---------------------------------------------------------------


def test_workers_survive_three_redis_outages_under_a_steady_stream(make_rig):
    rig = make_rig(agents=12, close_after=1.0)
    stop = threading.Event()
    opened: list[str] = []
    stream_errors: list[str] = []

    def stream() -> None:
        n = 0
        while not stop.is_set():
            try:
                opened.append(rig.open_chat((SALES, SUPPORT)[n % 2]))
            except Exception as error:  # the stream must not die silently
                stream_errors.append(repr(error))
            n += 1
            stop.wait(0.7)

    thread = threading.Thread(target=stream, name="liveness-stream", daemon=True)
    thread.start()
    outages: list[tuple[float, float]] = []
    try:
        time.sleep(3.0)
        for n in range(3):
            down = time.monotonic()
            rig.redis_server.stop()
            time.sleep(15.0)
            rig.redis_server.start()
            outages.append((down, time.monotonic()))
            if n < 2:
                time.sleep(15.0)
        time.sleep(3.0)  # a few more chats after the last restart
    finally:
        stop.set()
        thread.join(5)
    last_up = outages[-1][1]
    rooms = list(opened)
    # INQUIRY_RECONCILE_SECONDS (30) finds the chats whose events the wipe lost; a tick (5 s) routes them.
    served = rig.wait_served(rooms, timeout=50)
    finished = rig.last_served(rooms) if rig.referee.served() else time.monotonic()
    served_times = rig.referee.served()
    waits = {rid: served_times.get(rid, math.inf) - rig.opened_at[rid] for rid in rooms}
    slowest = max(waits, key=waits.__getitem__)
    where = rig.opened_at[slowest] - last_up
    workers_down = {name: code for name, code in rig.processes.exited().items() if name.startswith("worker-")}
    lost = rig.unserved(rooms)
    report(
        f"\nliveness 5, Redis down 3 x 15 s (wiped each time) under a chat every 0.7 s: {len(rooms)} chats, "
        f"{len(rooms) - len(lost)} served, the last one {finished - last_up:.1f} s after the last restart; "
        f"workers exited: {workers_down or 'none'}; the longest wait {waits[slowest]:.1f} s (a chat opened "
        f"{where:+.1f} s from the last restart; outages at "
        f"{', '.join(f'{d - last_up:+.0f}..{u - last_up:+.0f}' for d, u in outages)} s)"
    )
    assert not stream_errors, f"the visitors' stream failed: {stream_errors[:3]}"
    assert not workers_down, f"worker processes exited during the outages: {workers_down}\n{rig.output()}"
    assert served, f"{len(lost)} chats never served within 50 s of the last restart: {lost[:10]}\n{rig.output()}"
    rig.verify("5 three Redis outages")


# -- 6. 503s while a worker is killed and replaced -----------------------------------------------------------------


def test_503s_while_a_worker_is_killed_and_restarted(make_rig):
    rig = make_rig(close_after=1.0)
    fault = rig.state.inject("/api/", 503, count=30)
    started = time.monotonic()
    rooms = rig.open_chats(20, gap=0)
    time.sleep(0.5)
    rig.processes.kill("worker-1")
    replacement = rig.processes.add_worker()
    used_up = None
    with contextlib.suppress(AssertionError):
        rig_wait(lambda: fault.remaining == 0, timeout=60)
        used_up = time.monotonic()
    served = used_up is not None and rig.wait_served(rooms, timeout=90)
    finished = rig.last_served(rooms) if rig.referee.served() else time.monotonic()
    report(
        f"\nliveness 6, 30 x 503 on /api/, worker-1 SIGKILLed and {replacement} started: the 503s used up "
        f"{'never' if used_up is None else f'{used_up - started:.1f} s in'}, "
        f"{20 - len(rig.unserved(rooms))}/20 chats served, the last "
        f"{'-' if used_up is None else f'{finished - used_up:.1f} s'} after the fault was used up"
    )
    assert used_up is not None, f"the 503s were not used up within 60 s ({fault.remaining} left)\n{rig.output()}"
    assert served, f"not all 20 chats served within 90 s of the fault's end\n{rig.output()}"
    rig.verify("6 503s and a worker replaced")
