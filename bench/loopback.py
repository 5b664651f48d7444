"""A flood of webhooks on loopback: keep-alive HTTP/1.1 over asyncio streams, bounded concurrency, Rocket.Chat's
retries of 5xx answers; in a thread (``LoopbackFlood``) or a process of its own (``FloodProcess``). Used by
``bench/flood.py`` and ``tests/test_flood.py``.

Why not httpx: its async client spends more CPU per request than our web process does (measured on this 2-core
machine: about 370 posts/s with 64 connections against a bare Starlette endpoint that uvicorn serves at about 12,000
posts/s to this poster), so a flood posted with it measures the client. This poster writes a request and reads its
answer (status line, headers, ``Content-Length`` body) on each of ``connections`` connections, nothing more.

Rocket.Chat retries a webhook answered 5xx (``apps/meteor/app/livechat/server/lib/webhooks.ts``: up to 5 attempts,
``Livechat_http_timeout`` × 4 apart); with ``attempts`` > 1 a body answered 503 is posted again ``retry_delay``
seconds later, so what a bound refused is delivered once there is room, as Rocket.Chat would.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

PATH = "/webhooks/livechat"


@dataclass
class FloodProgress:
    """What the flood has seen so far; read from other threads while it runs (ints and Counters, no locks needed
    for a progress report)."""

    answered: int = 0  # answers of any status (a retried body counts once per attempt)
    accepted: int = 0  # 200 "accepted"
    duplicates: int = 0  # 200 "duplicate"
    ignored: int = 0  # 200 "ignored"
    refused: int = 0  # 503 answers
    gave_up: int = 0  # bodies still refused after every attempt
    errors: int = 0  # connection errors (the request is not retried)
    statuses: Counter[int] = field(default_factory=Counter)
    started: float = 0.0
    ended: float = 0.0
    refused_at: list[float] = field(default_factory=list)  # time.monotonic() of each 503

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class LoopbackFlood:
    """Posts ``count`` bodies (``body(n)`` for n in 0..count-1) to ``127.0.0.1:port``; ``run()`` blocks until
    every body is answered 200, gave up, or failed; ``start()`` runs it in a thread."""

    def __init__(
        self,
        port: int,
        token: str,
        body: Callable[[int], bytes],
        count: int,
        *,
        connections: int = 48,
        attempts: int = 5,
        retry_delay: float = 0.5,
    ) -> None:
        self.port = port
        self.body = body
        self.count = count
        self.connections = connections
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.head = (
            f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-RocketChat-Livechat-Token: {token}\r\n"
        ).encode()
        self.progress = FloodProgress()
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def start(self) -> LoopbackFlood:
        self.thread = threading.Thread(target=self._run_in_thread, name="loopback-flood", daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float | None = None) -> FloodProgress:
        assert self.thread is not None
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the flood did not end within {timeout} s")
        if self.failure is not None:
            raise self.failure
        return self.progress

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as error:  # reported by join()
            self.failure = error

    def run(self) -> FloodProgress:
        asyncio.run(self._flood())
        return self.progress

    async def _flood(self) -> None:
        loop = asyncio.get_running_loop()
        todo: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        for n in range(self.count):
            todo.put_nowait((n, 1))
        outstanding = [self.count]  # bodies not settled yet (answered 200, gave up or failed)
        progress = self.progress
        progress.started = time.monotonic()

        def settle() -> None:
            outstanding[0] -= 1
            if outstanding[0] == 0:
                for _ in range(self.connections):
                    todo.put_nowait(None)

        async def connection() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                while (item := await todo.get()) is not None:
                    n, attempt = item
                    payload = self.body(n)
                    try:
                        writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
                        status, answer = await _read_answer(reader)
                    except (OSError, asyncio.IncompleteReadError):
                        progress.errors += 1
                        settle()
                        writer.close()
                        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                        continue
                    progress.answered += 1
                    progress.statuses[status] += 1
                    if status == 200:
                        if b'"accepted"' in answer:
                            progress.accepted += 1
                        elif b'"duplicate"' in answer:
                            progress.duplicates += 1
                        else:
                            progress.ignored += 1
                        settle()
                    elif status >= 500 and attempt < self.attempts:
                        if status == 503:
                            progress.refused += 1
                            progress.refused_at.append(time.monotonic())
                        loop.call_later(self.retry_delay, todo.put_nowait, (n, attempt + 1))
                    else:
                        if status == 503:
                            progress.refused += 1
                        progress.gave_up += 1
                        settle()
            finally:
                writer.close()

        await asyncio.gather(*(connection() for _ in range(self.connections)))
        progress.ended = time.monotonic()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


class FloodProcess:
    """A ``LoopbackFlood`` in a process of its own (``spawn``), so that it does not share the GIL with what it is
    measured against (the Rocket.Chat double answers the routing's calls from the test's or benchmark's process).
    ``body`` must be picklable (a module-level function or class instance). Its answers and 503s so far are shared
    through counters; ``join()`` returns its ``FloodProgress``."""

    def __init__(self, port: int, token: str, body: Callable[[int], bytes], count: int, **options: object) -> None:
        context = multiprocessing.get_context("spawn")
        self.answered_so_far = context.Value("q", 0)
        self.refused_so_far = context.Value("q", 0)
        self.results: multiprocessing.Queue[FloodProgress | BaseException] = context.Queue()
        self.process = context.Process(
            target=_flood_in_process,
            args=(port, token, body, count, options, self.answered_so_far, self.refused_so_far, self.results),
            name="loopback-flood",
            daemon=True,
        )

    def start(self) -> FloodProcess:
        self.process.start()
        return self

    def answered(self) -> int:
        self._check()
        return int(self.answered_so_far.value)

    def refused(self) -> int:
        self._check()
        return int(self.refused_so_far.value)

    def _check(self) -> None:
        if not self.process.is_alive() and self.results.empty():
            raise RuntimeError(f"the flood's process exited with {self.process.exitcode}")

    def join(self, timeout: float) -> FloodProgress:
        result = self.results.get(timeout=timeout)
        self.process.join(timeout=10)
        if isinstance(result, BaseException):
            raise result
        return result

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)


def _flood_in_process(port, token, body, count, options, answered, refused, results) -> None:  # type: ignore[no-untyped-def]
    flood = LoopbackFlood(port, token, body, count, **options).start()
    while flood.thread is not None and flood.thread.is_alive():
        answered.value, refused.value = flood.progress.answered, flood.progress.refused
        time.sleep(0.01)
    try:
        progress = flood.join()
    except BaseException as error:  # reported by join() in the parent
        results.put(error)
        return
    answered.value, refused.value = progress.answered, progress.refused
    results.put(progress)
