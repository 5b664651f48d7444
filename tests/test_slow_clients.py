"""Slow clients cannot hold the web process (issue 12): header and body timeouts, a connection cap, keep-alive.

The issue's run: 500 connections sending one header line every 5 s and 20 never-ending chunked bodies all stayed
open for the whole run. Here the same flood (header lines every 0.5 s, well inside any per-read timeout, plus
connections that send nothing and bodies without a token) hits a real ``python -m bridge web`` process, the
command users run, with short timeouts set through its settings; each connection must be closed within its
timeout (plus a margin for a loaded 2-core machine), answered 408 where the server could still answer, while
webhooks posted meanwhile are answered 200 within Rocket.Chat's own webhook timeout (``Livechat_http_timeout``,
5 s by default: past it a webhook is lost for its sender).
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from bridge.errors import ConfigError
from bridge.settings import Settings
from bridge.webserver import BODY_GRACE_SECONDS, Limits
from tests.conftest import WEBHOOK_TOKEN
from tests.processes import BridgeProcesses
from tests.support import load_fixture, report

HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2
MARGIN = 2.0  # timers fire on a busy event loop, on a shared 2-core machine; the bound is the timeout plus this
GIVE_UP = 15.0  # a connection still open after this stayed open: the failure this file is about
ROCKETCHAT_WEBHOOK_TIMEOUT = 5.0  # Livechat_http_timeout's default (README, status policy)

HEADER_TRICKLERS = 500
SILENT = 20
ENDLESS_BODIES = 20
ENDLESS_BODIES_WITHOUT_TOKEN = 5


@pytest.fixture
def web(redis_url, tmp_path) -> Iterator[Callable[..., BridgeProcesses]]:
    started: list[BridgeProcesses] = []

    def start(**env: str) -> BridgeProcesses:
        processes = BridgeProcesses(
            {
                "REDIS_URL": redis_url,
                "ROCKETCHAT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
                "SPOOL_DIR": str(tmp_path / "spool"),
                "LOG_LEVEL": "WARNING",
                "WEB_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
                "WEB_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
                **env,
            },
            tmp_path,
            workers=0,
        )
        started.append(processes)
        return processes.start()

    yield start
    for processes in started:
        statuses = processes.stop()
        # uvicorn re-raises SIGTERM once it has shut down gracefully: -15 is a clean stop too.
        assert statuses["web"] in (0, -15), f"the web process did not stop cleanly: {statuses}\n{processes.output()}"


@dataclass
class Closed:
    kind: str
    seconds: float | None  # from connecting to the server closing; None: still open at GIVE_UP
    answer: bytes

    @property
    def status(self) -> int | None:
        parts = self.answer.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") else None


async def slow_client(port: int, kind: str, first: bytes, more: bytes, interval: float) -> Closed:
    """Send ``first``, then ``more`` every ``interval`` s (nothing if empty), until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def read_to_end() -> bytes:
        data = b""
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionError:  # a reset after the answer, or instead of it
            pass
        return data

    reading = asyncio.create_task(read_to_end())
    if first:
        writer.write(first)
    while not reading.done():
        await asyncio.wait({reading}, timeout=interval)
        if reading.done():
            break
        if loop.time() - start > GIVE_UP:
            reading.cancel()
            writer.close()
            return Closed(kind, None, b"")
        if more and not writer.is_closing():
            writer.write(more)
    seconds = loop.time() - start
    writer.close()
    return Closed(kind, seconds, reading.result())


def flood(port: int, connected: threading.Event) -> list[Closed]:
    headers = b"POST /webhooks/livechat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body_head = (
        b"POST /webhooks/livechat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nX-RocketChat-Livechat-Token: " + WEBHOOK_TOKEN.encode() + b"\r\n\r\n5\r\n"
        b'{"a":\r\n'
    )
    anonymous_body_head = (
        b"POST /webhooks/livechat HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
    )

    async def run() -> list[Closed]:
        clients = [slow_client(port, "headers", headers, b"X-Trickle: 1\r\n", 0.5) for _ in range(HEADER_TRICKLERS)]
        clients += [slow_client(port, "silent", b"", b"", 0.5) for _ in range(SILENT)]
        clients += [slow_client(port, "body", body_head, b"1\r\n \r\n", 0.5) for _ in range(ENDLESS_BODIES)]
        clients += [
            slow_client(port, "body, no token", anonymous_body_head, b"1\r\n \r\n", 0.5)
            for _ in range(ENDLESS_BODIES_WITHOUT_TOKEN)
        ]
        tasks = [asyncio.ensure_future(client) for client in clients]
        await asyncio.sleep(0.3)  # every connection opened and its first bytes sent
        connected.set()
        return list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def post_webhook(url: str, n: int) -> tuple[int, float]:
    body = load_fixture("LivechatSessionQueued__basic")
    body["_id"] = f"slow-clients-room-{n}"
    start = time.monotonic()
    # A new connection each time (a top-level httpx call), as a sender without keep-alive opens one per webhook.
    answer = httpx.post(
        f"{url}/webhooks/livechat", json=body, headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}, timeout=10
    )
    return answer.status_code, time.monotonic() - start


def figures(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"


@pytest.mark.slow
def test_slow_clients_are_closed_within_the_timeouts_while_webhooks_keep_their_latency(web):
    processes = web()
    port = processes.port
    baseline = [post_webhook(processes.url, n) for n in range(30)]

    connected = threading.Event()
    results: list[Closed] = []
    flooder = threading.Thread(target=lambda: results.extend(flood(port, connected)), daemon=True)
    flooder.start()
    assert connected.wait(30), "the flood did not start"
    during: list[tuple[int, float]] = []
    n = 100
    deadline = time.monotonic() + HEADER_TIMEOUT + BODY_TIMEOUT + BODY_GRACE_SECONDS
    while flooder.is_alive() and time.monotonic() < deadline and len(during) < 100:  # bounded: count and time
        during.append(post_webhook(processes.url, n))
        n += 1
        time.sleep(0.02)
    flooder.join(GIVE_UP + 15)
    assert not flooder.is_alive(), "the flood did not end"

    bounds = {
        "headers": HEADER_TIMEOUT + MARGIN,
        "silent": HEADER_TIMEOUT + MARGIN,
        "body": BODY_TIMEOUT + MARGIN,  # the app answers 408 at the body timeout
        "body, no token": BODY_TIMEOUT + BODY_GRACE_SECONDS + MARGIN,  # answered 403 unread; closed past the grace
    }
    by_kind: dict[str, list[Closed]] = {kind: [r for r in results if r.kind == kind] for kind in bounds}
    lines = [
        f"slow clients (web process, WEB_HEADER_TIMEOUT_SECONDS={HEADER_TIMEOUT}, "
        f"WEB_BODY_TIMEOUT_SECONDS={BODY_TIMEOUT}, one header line or chunk every 0.5 s):"
    ]
    for kind, closed in by_kind.items():
        times = [c.seconds for c in closed if c.seconds is not None]
        statuses = sorted({str(c.status) for c in closed})
        lines.append(
            f"  {kind}: {len(closed)} connections, {len(times)} closed, after {min(times):.2f}-{max(times):.2f} s "
            f"(bound {bounds[kind]:g} s), answers {', '.join(statuses)}"
        )
    lines.append(f"  webhooks before the flood: {len(baseline)}, {figures([s for _, s in baseline])}")
    lines.append(f"  webhooks during the flood: {len(during)}, {figures([s for _, s in during])}")
    report("\n".join(lines))

    assert len(results) == HEADER_TRICKLERS + SILENT + ENDLESS_BODIES + ENDLESS_BODIES_WITHOUT_TOKEN
    for kind, closed in by_kind.items():
        still_open = [c for c in closed if c.seconds is None]
        assert not still_open, f"{len(still_open)} '{kind}' connections were still open after {GIVE_UP} s"
        late = [c.seconds for c in closed if c.seconds is not None and c.seconds > bounds[kind]]
        assert not late, f"'{kind}' connections closed after {max(late):.2f} s, past {bounds[kind]} s"
    # Where an answer arrived before the close, it is the documented one (a reset may replace it).
    assert {c.status for c in by_kind["headers"] + by_kind["silent"]} <= {408, None}
    assert {c.status for c in by_kind["body"]} <= {408, None}
    assert any(c.status == 408 for c in by_kind["headers"]) and any(c.status == 408 for c in by_kind["body"])
    assert {c.status for c in by_kind["body, no token"]} <= {403, None}
    answered_408 = [json.loads(c.answer.partition(b"\r\n\r\n")[2]) for c in by_kind["body"] if c.status == 408]
    assert all(a == {"ok": False, "error": f"request body not received within {BODY_TIMEOUT} s"} for a in answered_408)

    assert during, "no webhook was posted during the flood"
    assert all(status == 200 for status, _ in baseline + during), sorted({s for s, _ in during})
    slowest = max(seconds for _, seconds in during)
    assert slowest < ROCKETCHAT_WEBHOOK_TIMEOUT, f"a webhook took {slowest:.2f} s during the flood"
    assert httpx.get(f"{processes.url}/healthz").status_code == 200


def raw_request(port: int, request: bytes) -> tuple[socket.socket, bytes]:
    """Open a connection, send ``request`` and read one whole answer (Content-Length); the connection stays open."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    while len(body) < length:
        body += connection.recv(65536)
    return connection, head + b"\r\n\r\n" + body


def closed_by_server(connection: socket.socket, wait: float) -> bool:
    """Whether the server closes ``connection`` within ``wait`` s (reading whatever it answers first)."""
    deadline = time.monotonic() + wait
    try:
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if connection.recv(65536) == b"":
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return False


@pytest.mark.slow
def test_past_the_connection_cap_an_idle_connection_makes_room_else_the_answer_is_a_clear_503(web):
    processes = web(WEB_MAX_CONNECTIONS="10")
    port = processes.port
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    # Ten connections busy (their request has not arrived): the eleventh is answered 503 at once, then closed.
    busy = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    time.sleep(0.3)
    refused = httpx.get(f"{processes.url}/healthz", timeout=5)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
    assert refused.json() == {"ok": False, "error": "too many connections to this web process (over 10); retry shortly"}
    assert all(closed_by_server(c, HEADER_TIMEOUT + MARGIN) for c in busy), "busy connections outlived the timeout"

    # Ten idle kept-alive connections: a new one is served, and one idle connection was closed for it.
    idle = [raw_request(port, health) for _ in range(10)]
    assert all(answer.startswith(b"HTTP/1.1 200") for _, answer in idle)
    assert httpx.get(f"{processes.url}/healthz", timeout=5).status_code == 200
    evicted = [c for c, _ in idle if closed_by_server(c, 0.2)]
    assert len(evicted) == 1
    # A kept-alive connection's next request gets the header timeout too.
    kept = next(c for c, _ in idle if c not in evicted)
    kept.sendall(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    kept.settimeout(HEADER_TIMEOUT + MARGIN)
    answer = kept.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < HEADER_TIMEOUT + MARGIN
    for connection in [*busy, *(c for c, _ in idle)]:
        connection.close()


def test_the_limits_are_settings_with_defaults_for_heroku_and_rocketchat():
    limits = Limits.of(Settings.from_env({}))
    assert limits == Limits(header_seconds=10.0, body_seconds=10.0, max_connections=1000, keepalive_seconds=100)
    env = {
        "WEB_HEADER_TIMEOUT_SECONDS": "3",
        "WEB_BODY_TIMEOUT_SECONDS": "4",
        "WEB_MAX_CONNECTIONS": "50",
        "WEB_KEEPALIVE_SECONDS": "120",
    }
    assert Limits.of(Settings.from_env(env)) == Limits(3.0, 4.0, 50, 120)
    for name, bad in [
        ("WEB_HEADER_TIMEOUT_SECONDS", "0"),
        ("WEB_BODY_TIMEOUT_SECONDS", "301"),
        ("WEB_MAX_CONNECTIONS", "9"),
        ("WEB_KEEPALIVE_SECONDS", "ten"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: bad})
