"""Answers per second of ``GET /external-queue`` under Rocket.Chat's bursts of 10, against a bare Starlette GET.

    python -m bench.external [--bursts 500] [--in-flight 1] [--agents 40] [--departments 20] [--per-department 5]

Rocket.Chat's External Service fires 10 identical requests in parallel for one routing and uses the first
non-empty answer (README, External Service). The Procfile's setup, as in bench/routing.py
(``bench.common.Bridge``): one ``python -m bridge web`` and one ``python -m bridge worker`` process (the worker
refreshes the agent directory the web process answers from), a private redis-server and the Rocket.Chat double in
this process; ``ROCKETCHAT_EXTERNAL_QUEUE_TOKEN`` set. ``--agents`` agents with a large capacity, each of the
``--departments`` served by ``--per-department`` of them.

One client for both: keep-alive HTTP/1.1 connections on asyncio in this process (a minimal client: httpx tops out
near 700 requests/s here, far below either server, so it would measure itself). A burst is the same GET sent on
10 connections at once; ``--in-flight`` bursts run side by side (routings overlapping), each starting the next one
as soon as its 10 answers are in. 20 warm-up bursts first.

1. Reference: the bare Starlette app of bench/intake.py (``bench/bare_app.py`` under uvicorn with uvloop and
   httptools, one process), ``GET /healthz`` with the same query strings, for at least ``--bursts`` bursts and
   3 seconds.
2. Ours: ``--bursts`` bursts, the departments in turn, each burst a new query: its ``ignoreAgentId`` names an
   agent that does not exist (so it excludes nobody) and differs per burst. So each burst is a new routing (the
   first request computes the answer and makes one pending reservation, the other 9 wait for it) and none is
   answered from an earlier burst's shared answer (kept 3 s per query).

Prints answers/s overall, p50/p99 per request and of each burst's first answer (the one Rocket.Chat uses), and
per burst how many distinct agents were answered (one is right: the 10 requests share one answer). The client
shares the 2 cores with the servers: figures vary 10-40% between runs; compare them within one run. Timings are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx

from bench.common import Bridge, child_env, free_port, http_ok, machine, percentile, python, spawn, stop, wait_for
from bridge.sandbox.state import SandboxState

SECRET = "bench-external-queue-token-5c2e"
PARALLEL = 10  # Rocket.Chat's requests per routing
WARMUP_BURSTS = 20
BARE_MIN_SECONDS = 3.0


@dataclass(frozen=True)
class Answer:
    status: int
    seconds: float
    username: str | None


@dataclass
class Run:
    bursts: list[list[Answer]]
    seconds: float

    @property
    def answers(self) -> list[Answer]:
        return [answer for burst in self.bursts for answer in burst]

    @property
    def rate(self) -> float:
        return sum(1 for answer in self.answers if answer.status == 200) / self.seconds

    def line(self, name: str) -> str:
        times = [answer.seconds for answer in self.answers]
        firsts = [min(answer.seconds for answer in burst) for burst in self.bursts]
        other = Counter(answer.status for answer in self.answers if answer.status != 200)
        return (
            f"{name:>5}: {self.rate:8.0f} answers/s  per request p50 {ms(percentile(times, 0.5))}  "
            f"p99 {ms(percentile(times, 0.99))}  max {ms(max(times))};  first answer of a burst p50 "
            f"{ms(percentile(firsts, 0.5))}  p99 {ms(percentile(firsts, 0.99))}  ({len(self.bursts)} bursts in "
            f"{self.seconds:.2f} s, {len(self.bursts) / self.seconds:.0f}/s{self.problems(other)})"
        )

    @staticmethod
    def problems(other: Counter[int]) -> str:
        return f"; not 200: {dict(other)}" if other else ""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a prepared GET and reads the answer (Content-Length bodies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, request: bytes) -> Answer:
        started = time.perf_counter()
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line[15:]) for line in lines[1:] if line[:15].lower() == b"content-length:")
        body = await self.reader.readexactly(length)
        seconds = time.perf_counter() - started
        status = int(lines[0].split()[1])
        username = json.loads(body).get("username") if status == 200 else None
        return Answer(status, seconds, username)

    def close(self) -> None:
        self.writer.close()


def request(port: int, path: str, headers: dict[str, str], params: dict[str, str]) -> bytes:
    lines = [f"GET {path}?{urlencode(params)} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def bursts(
    port: int, path: str, headers: dict[str, str], queries: list[dict[str, str]], in_flight: int, min_seconds: float
) -> Run:
    """Every query once as a burst (then again from the start while the run is shorter than ``min_seconds``)."""
    groups = [[await Connection.open(port) for _ in range(PARALLEL)] for _ in range(in_flight)]

    async def burst(group: list[Connection], params: dict[str, str]) -> list[Answer]:
        same = request(port, path, headers, params)
        return list(await asyncio.gather(*(connection.get(same) for connection in group)))

    def schedule(started: float) -> Iterator[dict[str, str]]:
        yield from queries
        while time.perf_counter() - started < min_seconds:
            yield from queries

    async def drive(group: list[Connection], source: Iterator[dict[str, str]], into: list[list[Answer]]) -> None:
        for params in source:
            into.append(await burst(group, params))

    try:
        for n in range(WARMUP_BURSTS):
            await burst(groups[n % in_flight], {"departmentId": "dept-warm", "ignoreAgentId": f"warm-{n}"})
        results: list[list[Answer]] = []
        started = time.perf_counter()
        source = schedule(started)
        await asyncio.gather(*(drive(group, source, results) for group in groups))
        return Run(results, time.perf_counter() - started)
    finally:
        for connection in itertools.chain.from_iterable(groups):
            connection.close()


def bare(work: Path, queries: list[dict[str, str]], in_flight: int) -> Run:
    port = free_port()
    command = [
        python(), "-m", "uvicorn", "bench.bare_app:app", "--port", str(port), "--loop", "uvloop",
        "--http", "httptools", "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    log = work / "bare.log"
    process = spawn(command, child_env({}), log)
    try:
        wait_for(http_ok(f"http://127.0.0.1:{port}/healthz", process, log), 30, "the bare app to answer /healthz")
        return asyncio.run(bursts(port, "/healthz", {}, queries, in_flight, BARE_MIN_SECONDS))
    finally:
        stop(process)


def wait_for_directory(bridge: Bridge) -> None:
    """Until the web process answers an agent (a worker has cached the directory it answers from)."""
    tries = itertools.count()

    def answered() -> bool:
        bridge.check_alive()
        params = {"departmentId": "dept-warm", "ignoreAgentId": f"ready-{next(tries)}"}  # a new query each time
        headers = {"X-RocketChat-Secret-Token": SECRET}
        response = httpx.get(f"{bridge.url}/external-queue", params=params, headers=headers, trust_env=False)
        return response.status_code == 200 and bool(response.json().get("username"))

    wait_for(answered, 60, "the agent directory to be cached", interval=0.5)


def double(departments: list[str], agents: int, per_department: int) -> SandboxState:
    state = SandboxState("7.13.9", seed=11)
    for department in [*departments, "dept-warm"]:
        state.add_department(department, department_id=department)
    step = max(1, agents // per_department)
    for n in range(agents):
        served = [d for i, d in enumerate(departments) if (i + n) % step == 0]  # per_department agents each
        state.add_agent(f"agent{n:03d}", max_chats=100_000, departments=[*served, "dept-warm"])
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=500, help="bursts of 10 measured")
    parser.add_argument("--in-flight", type=int, default=1, help="bursts (routings) running side by side")
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--departments", type=int, default=20)
    parser.add_argument("--per-department", type=int, default=5, help="agents serving each department")
    args = parser.parse_args()
    print(machine())
    departments = [f"dept-{n:04d}" for n in range(args.departments)]
    queries = [
        {"departmentId": departments[n % len(departments)], "ignoreAgentId": f"nobody-{n}"} for n in range(args.bursts)
    ]
    print(
        f"bursts of {PARALLEL} identical GETs, {args.in_flight} burst(s) in flight; {args.agents} agents, "
        f"{args.per_department} per department; {args.departments} departments"
    )
    with tempfile.TemporaryDirectory(prefix="bench-external-") as tmp:
        work = Path(tmp)
        state = double(departments, args.agents, args.per_department)
        extra = {"ROCKETCHAT_EXTERNAL_QUEUE_TOKEN": SECRET}
        with Bridge(work, state, extra, poster=None) as bridge:
            wait_for_directory(bridge)
            reference = bare(work, queries, args.in_flight)
            headers = {"X-RocketChat-Secret-Token": SECRET}
            ours = asyncio.run(bursts(bridge.port, "/external-queue", headers, queries, args.in_flight, 0.0))
            bridge.check_alive()
        print(reference.line("bare"))
        print(ours.line("ours"))
        print(f"ratio ours/bare answers/s: {ours.rate / reference.rate:.3f}")
        agents = [len({answer.username for answer in burst if answer.username}) for burst in ours.bursts]
        empty = sum(1 for answer in ours.answers if answer.status == 200 and not answer.username)
        print(
            f"distinct agents answered per burst: {dict(sorted(Counter(agents).items()))} (0: the burst was answered "
            f"{{}}); requests answered {{}}: {empty}; distinct agents over the run: "
            f"{len({answer.username for answer in ours.answers if answer.username})}"
        )
        print(f"process exits: {bridge.statuses}")


if __name__ == "__main__":
    main()
