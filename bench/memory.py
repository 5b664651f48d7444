"""Peak memory of the web and worker processes during a routing run, and Redis bytes per waiting chat.

    python -m bench.memory [--chats 1000] [--waiting 2000] [--agents 40]

The Procfile's setup, as in bench/routing.py (``bench.common.Bridge``): one ``python -m bridge web`` and one
``python -m bridge worker`` process, a private redis-server and the Rocket.Chat double (in this process) whose
``WebhookPoster`` posts each queued chat to the web process; bot-role account, default settings.
Two departments: one with ``--agents`` agents of large capacity, one with no agent at all, so its chats wait.

1. Processes: ``VmRSS`` from ``/proc/<pid>/status`` sampled every 0.1 s, and ``VmHWM`` (the kernel's peak RSS
   of the process's life) at the end, for the web process, the worker, the worker's child (RQ's scheduler, which
   ``work(with_scheduler=True)`` forks) and redis-server. ``python -m bridge web`` runs uvicorn in its own process
   (one process, no supervisor): the web pid is the server's, and the bench prints the children it finds.
   Throughput run: ``--chats`` chats opened at once in the staffed department, until every one is taken.
2. Redis per waiting chat: ``--waiting`` chats opened at once in the department nobody serves; once the worker has
   handled every webhook, ``INFO memory`` ``used_memory`` and ``MEMORY USAGE`` (exact, ``SAMPLES 0``) of every key
   are compared with before. The difference is printed per key pattern (ids as ``*``) and per waiting chat.
   Everything a queued chat leaves in Redis is there: the waiting entry itself, the webhook's dedupe mark, the
   routing decisions, RQ's finished jobs and results (the same for every webhook, waiting or not; they expire).
   The per-pattern rows add up to the keys' part of ``used_memory``: a breakdown of it, not an addition to it.

Figures vary between runs on a shared machine; they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import Bridge, Taken, machine, wait_for
from bridge import keys
from bridge.sandbox.state import SandboxState

STAFFED = "dept-bench"
NOBODY = "dept-nobody"
QUEUE = "bridge"
# Ids in key names, shown as *: UUIDs, event identities (32 hex), Rocket.Chat ids (17 characters), job numbers.
IDS = re.compile(
    rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}|[2-9A-HJ-NP-Za-km-z]{17}|(?<=-)[0-9]+$"
)


def prefix(name_of: Callable[[str], str]) -> str:
    """What every key a ``bridge.keys`` function names starts with (``keys.waiting`` -> ``ob:waiting:``)."""
    return name_of("\x00").partition("\x00")[0]


KINDS = {
    f"the waiting chat itself ({keys.waiting('*')}, {keys.waiting_chat('*')})": (
        prefix(keys.waiting),
        prefix(keys.waiting_chat),
        keys.waiting_departments(),
    ),
    "dedupe marks (expire after DEDUPE_TTL_SECONDS)": (prefix(keys.seen),),
    f"decisions (per record, their index, and {keys.recent_decisions()}, capped)": (
        prefix(lambda kind: keys.decisions(kind, "")),
        prefix(keys.decision_index),
        keys.recent_decisions(),
    ),
    "RQ (jobs, results, registries; results expire)": ("rq:",),
}


def proc_status(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of /proc/<pid>/status, in KiB (empty once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in text.splitlines()) if k[:2] == "Vm"}


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class Sampler(threading.Thread):
    """Samples each process's VmRSS every ``period`` seconds; ``peaks`` is the highest seen since ``reset()``."""

    def __init__(self, processes: dict[str, int], period: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.processes = processes
        self.period = period
        self.lock = threading.Lock()
        self.peaks: dict[str, int] = {}
        self.stopping = threading.Event()

    def sample(self) -> dict[str, int]:
        now = dict(self.processes)
        now |= {f"worker child {pid}": pid for pid in children(self.processes["worker"])}
        return {name: proc_status(pid).get("VmRSS", 0) for name, pid in now.items()}

    def run(self) -> None:
        while not self.stopping.wait(self.period):
            rss = self.sample()
            with self.lock:
                for name, kib in rss.items():
                    self.peaks[name] = max(self.peaks.get(name, 0), kib)

    def reset(self) -> dict[str, int]:
        with self.lock:
            peaks, self.peaks = self.peaks, {}
        return peaks


def mib(kib: int) -> str:
    return f"{kib / 1024:6.1f} MiB"


def print_peaks(title: str, start: dict[str, int], peaks: dict[str, int]) -> None:
    print(title)
    for name in sorted(set(start) | set(peaks)):
        print(f"  {name:>20}: VmRSS at start {mib(start.get(name, 0))}, highest sampled {mib(peaks.get(name, 0))}")


def key_usage(client: redis.Redis) -> dict[bytes, int]:
    """MEMORY USAGE (every element counted: SAMPLES 0) of every key."""
    names = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.execute_command("MEMORY USAGE", name, "SAMPLES", 0)
    return {name: int(size) for name, size in zip(names, pipe.execute(), strict=True) if size is not None}


def pattern(name: bytes) -> str:
    return IDS.sub(b"*", name).decode(errors="replace")


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def routing_run(bridge: Bridge, taken: Taken, chats: int, timeout: float) -> None:
    started = time.monotonic()
    rooms = [bridge.state.open_chat(department=STAFFED)[0]["_id"] for _ in range(chats)]
    try:
        wait_for(lambda: taken.count(rooms) == chats, timeout, "every chat to be taken", interval=0.05)
    except SystemExit as error:
        print(f"  {error}")
    bridge.check_alive()
    print(f"throughput run: {taken.count(rooms)}/{chats} chats routed in {time.monotonic() - started:.1f} s")


def settle(bridge: Bridge, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``done()`` and the worker has nothing queued or running."""
    queue = Queue(QUEUE, connection=bridge.client, serializer=JSONSerializer)

    def idle() -> bool:
        bridge.check_alive()
        return bool(done()) and queue.count == 0 and queue.started_job_registry.count == 0

    wait_for(idle, timeout, what, interval=0.1)
    time.sleep(0.5)


def waiting_run(bridge: Bridge, count: int, timeout: float) -> None:
    client = bridge.client
    settle(bridge, lambda: True, 60, "the worker to be idle")
    before_used, before = used_memory(client), key_usage(client)
    started = time.monotonic()
    for _ in range(count):
        bridge.state.open_chat(department=NOBODY)
    waiting = keys.waiting(NOBODY)
    settle(bridge, lambda: int(client.zcard(waiting)) >= count, timeout, f"{count} chats waiting")
    print(f"waiting run: {client.zcard(waiting)} chats waiting after {time.monotonic() - started:.1f} s")
    after_used, after = used_memory(client), key_usage(client)
    rows = by_pattern(before, after)
    print(f"Redis, by key pattern, after {count} chats queued and left waiting (per chat = difference / {count}):")
    print(f"  {'pattern':<44} {'keys before':>11} {'after':>7} {'difference':>12} {'per chat':>9}")
    for name, (n_before, n_after, delta) in sorted(rows.items(), key=lambda item: -abs(item[1][2])):
        if delta or n_before != n_after:
            print(f"  {name:<44} {n_before:>11} {n_after:>7} {delta:>12,} {delta / count:>9.0f}")
    in_keys = sum(row[2] for row in rows.values())
    print(
        f"Redis bytes per waiting chat: {(after_used - before_used) / count:.0f} (used_memory {before_used:,} -> "
        f"{after_used:,}); the keys' MEMORY USAGE adds up to {in_keys / count:.0f} of it, the rest is Redis's own "
        "(expiry table, allocator)"
    )
    parts = []
    for label, prefixes in KINDS.items():
        size = sum(row[2] for name, row in rows.items() if name.startswith(prefixes))
        parts.append(f"{label} {size / count:.0f}")
        in_keys -= size
    print("  by kind, bytes per waiting chat: " + "; ".join(parts) + f"; everything else {in_keys / count:.0f}")


def by_pattern(before: dict[bytes, int], after: dict[bytes, int]) -> dict[str, tuple[int, int, int]]:
    """Key pattern -> (keys before, keys after, bytes after - before)."""
    rows: dict[str, tuple[int, int, int]] = {}
    for name in set(before) | set(after):
        n_before, n_after, delta = rows.get(pattern(name), (0, 0, 0))
        rows[pattern(name)] = (
            n_before + (name in before),
            n_after + (name in after),
            delta + after.get(name, 0) - before.get(name, 0),
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=1000, help="chats routed in the throughput run")
    parser.add_argument("--waiting", type=int, default=2000, help="chats left waiting for the Redis figure")
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for each run to finish")
    args = parser.parse_args()
    print(machine())
    state = SandboxState("7.13.9", seed=11)
    state.add_department("Bench", department_id=STAFFED)
    state.add_department("Nobody", department_id=NOBODY)
    for n in range(args.agents):
        state.add_agent(f"agent{n:03d}", max_chats=100_000, departments=[STAFFED])
    taken = Taken()
    state.listeners.append(taken)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        with Bridge(Path(tmp), state) as bridge:
            assert bridge.web is not None and bridge.worker is not None and bridge.redis.process is not None
            pids = {"web": bridge.web.pid, "worker": bridge.worker.pid, "redis-server": bridge.redis.process.pid}
            warm = [state.open_chat(department=STAFFED)[0]["_id"] for _ in range(5)]  # imports, agent list
            wait_for(lambda: taken.count(warm) == len(warm), 30, "the warm-up chats to be taken")
            time.sleep(1)
            print(f"processes: {pids}; children of web: {children(pids['web'])}, of worker: {children(pids['worker'])}")
            sampler = Sampler(pids)
            sampler.start()
            start = sampler.sample()
            routing_run(bridge, taken, args.chats, args.timeout)
            print_peaks(f"RSS during the throughput run ({args.chats} chats routed):", start, sampler.reset())
            start = sampler.sample()
            waiting_run(bridge, args.waiting, args.timeout)
            print_peaks(f"RSS during the waiting run ({args.waiting} chats queued):", start, sampler.reset())
            sampler.stopping.set()
            print("VmHWM (peak RSS of the whole life) at the end:")
            for name, pid in {**pids, **{f"worker child {p}": p for p in children(pids["worker"])}}.items():
                status = proc_status(pid)
                print(f"  {name:>20}: VmHWM {mib(status.get('VmHWM', 0))}, VmRSS now {mib(status.get('VmRSS', 0))}")
        print(f"process exits: {bridge.statuses}")


if __name__ == "__main__":
    main()
