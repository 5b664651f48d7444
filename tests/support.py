"""Test helpers that are not fixtures: a real uvicorn server in a thread, fixture loading, waiting."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"

# Summaries tests want shown after the run even when output is captured (printed by conftest's terminal summary).
# Under pytest-xdist the tests run in worker processes: each appends to the file the controller names here.
SUMMARIES: list[str] = []
SUMMARY_FILE = "OMNIBRIDGE_TEST_SUMMARIES"


def report(text: str) -> None:
    """Show ``text`` in the test run's closing summary (and now, with ``-s``)."""
    SUMMARIES.append(text)
    path = os.environ.get(SUMMARY_FILE)
    if path:
        with open(path, "a", encoding="utf-8") as out:  # one write per summary: appends do not interleave
            out.write(text.strip("\n") + "\n\x00")
    print(text)


def summaries() -> list[str]:
    """Every summary reported in this run, by this process or by any xdist worker."""
    path = os.environ.get(SUMMARY_FILE)
    if not path or not os.path.exists(path):
        return list(SUMMARIES)
    with open(path, encoding="utf-8") as found:
        return [text for text in found.read().split("\x00") if text.strip()]


def fixture_names() -> list[str]:
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll until ``condition()`` is truthy; raise AssertionError after ``timeout`` (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class ServerThread:
    """A real uvicorn server on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


def logged_events(client) -> list[dict]:
    """The event log's lines (``bridge.eventlog``): the routing lane's, then the other lane's, each oldest first."""
    return [json.loads(line) for lane in ("ob:events", "ob:events:other") for line in client.lrange(lane, 0, -1)]


def recorded_keys(client) -> list[bytes]:
    """Every key in Redis but the metrics counters (which count refused requests too)."""
    return sorted(k for k in client.keys("*") if k != b"ob:metrics")
