"""Helpers shared by the benchmarks: the machine line, free ports, child processes, waiting for HTTP, percentiles,
and the Procfile's processes around the Rocket.Chat double (``Bridge``)."""

from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import redis

from bridge.embedded import EmbeddedRedis
from bridge.sandbox.server import SandboxServer
from bridge.sandbox.state import TAKEN, SandboxState
from bridge.sandbox.webhooks import WebhookPoster

ROOT = Path(__file__).resolve().parents[1]
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


def machine() -> str:
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A minimal environment (nothing of the developer's own bridge configuration) plus ``extra``."""
    base = {name: os.environ[name] for name in INHERITED if name in os.environ}
    return {**base, "PYTHONPATH": str(ROOT), **extra}


def spawn(command: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as output:
        return subprocess.Popen(command, env=dict(env), cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)


def python() -> str:
    return sys.executable


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def http_ok(url: str, process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> Callable[[], bool]:
    def check() -> bool:
        if process is not None and process.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log else ""
            raise SystemExit(f"process exited with {process.returncode} during start-up\n{text}")
        try:
            return httpx.get(url, timeout=2.0, trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    return check


# -- added for bench/latency.py, bench/external.py and bench/memory.py ---------------------------------------------

WEBHOOK_TOKEN = "bench-webhook-token-91f3"
SERVICE_ROLES = ("user", "bot", "livechat-manager", "omnibridge-voip")  # the bot role: Rocket.Chat's limiter skips it


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.5 for p50, 0.99 for p99); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


class Taken:
    """A listener on the double's state: when each room was first taken (``inquiries.take`` received)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[str, float] = {}

    def __call__(self, event_type: str, room: dict[str, Any]) -> None:
        if event_type == TAKEN:
            with self.lock:
                self.at.setdefault(room["_id"], time.monotonic())

    def count(self, rooms: Iterable[str]) -> int:
        with self.lock:
            return sum(1 for rid in rooms if rid in self.at)

    def last(self, rooms: Iterable[str]) -> float:
        with self.lock:
            return max(self.at[rid] for rid in rooms if rid in self.at)


class Bridge:
    """The Procfile's processes around the Rocket.Chat double, set up as bench/routing.py does.

    A private redis-server (``EmbeddedRedis``), the double serving ``state`` in this process, one
    ``python -m bridge web`` and one ``python -m bridge worker`` process, and (unless ``poster`` is None) the
    double's ``WebhookPoster`` posting every livechat event to the web process. The service account has the bot
    role; ``extra`` adds to or overrides the child environment.
    """

    def __init__(
        self,
        work: Path,
        state: SandboxState,
        extra: Mapping[str, str] | None = None,
        poster: type[WebhookPoster] | None = WebhookPoster,
    ) -> None:
        self.state = state
        self.statuses: dict[str, int] = {}
        self.web: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.poster: WebhookPoster | None = None
        self.server: SandboxServer | None = None
        state.grant("omnibridge-voip", "manage-agent-extension-association")  # agents/available, as routing.py
        user_id, token = state.add_account("omnibridge", SERVICE_ROLES)
        self.rocketchat_headers = {"X-User-Id": user_id, "X-Auth-Token": token}
        self.redis = EmbeddedRedis().start()
        self.client = redis.Redis.from_url(self.redis.url)
        try:
            self.server = SandboxServer(state).start()
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.env = child_env(
                {
                    "REDIS_URL": self.redis.url,
                    "ROCKETCHAT_URL": self.server.url,
                    "ROCKETCHAT_USER_ID": user_id,
                    "ROCKETCHAT_AUTH_TOKEN": token,
                    "ROCKETCHAT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
                    "LOG_LEVEL": "WARNING",
                    "SPOOL_DIR": str(work / "spool"),
                    **(extra or {}),
                }
            )
            self.web_log, self.worker_log = work / f"web-{self.port}.log", work / f"worker-{self.port}.log"
            self.web = spawn([python(), "-m", "bridge", "web", "--port", str(self.port)], self.env, self.web_log)
            self.worker = spawn(
                [python(), "-m", "bridge", "worker", "--name", f"bench-{self.port}"], self.env, self.worker_log
            )
            wait_for(http_ok(f"{self.url}/readyz", self.web, self.web_log), 30, "the web process")
            if poster is not None:
                self.poster = poster(
                    state, f"{self.url}/webhooks/livechat", WEBHOOK_TOKEN, timeout=5.0, retry_delay=0.5
                ).attach()
        except BaseException:
            self.close()
            raise

    def check_alive(self) -> None:
        """Stop the benchmark with the log's tail if the web or the worker process died."""
        for name, process, log in (("web", self.web, self.web_log), ("worker", self.worker, self.worker_log)):
            if process is not None and process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"the {name} process exited with {process.returncode}\n{tail}")

    def close(self) -> dict[str, int]:
        if self.poster is not None:
            self.poster.close(timeout=5, flush=False)
            self.poster = None
        for name in ("worker", "web"):
            process = getattr(self, name)
            if process is not None:
                self.statuses[name] = stop(process)
                setattr(self, name, None)
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.client.close()
        self.redis.close()
        return self.statuses

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
