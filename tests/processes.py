"""The bridge as real processes for end-to-end tests: ``omnibridge web`` and ``omnibridge worker``.

Each process writes its output to a file, so a failing test can show what the processes said.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[1]
# Only what a Python process needs from ours; nothing of the developer's own bridge configuration leaks in.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
STOP_SECONDS = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BridgeProcesses:
    """One web process and ``workers`` worker processes, started with ``env`` (on top of a minimal base)."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, workers: int = 2) -> None:
        self.port = free_port()
        base = {name: os.environ[name] for name in INHERITED if name in os.environ}
        self.env = {**base, "PYTHONPATH": str(ROOT), **env}
        self.log_dir = log_dir
        self.workers = workers
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 30.0) -> BridgeProcesses:
        command = [sys.executable, "-m", "bridge"]
        self._spawn("web", [*command, "web", "--port", str(self.port)])
        for n in range(1, self.workers + 1):
            self._spawn(f"worker-{n}", [*command, "worker", "--name", f"e2e-worker-{n}-{self.port}"])
        wait_for(self._ready, timeout=ready_timeout, interval=0.1)
        return self

    def _spawn(self, name: str, command: list[str]) -> None:
        with open(self.log_dir / f"{name}.log", "wb") as output:
            self.processes[name] = subprocess.Popen(
                command, env=self.env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
            )

    def _ready(self) -> bool:
        if exited := self.exited():
            raise AssertionError(f"bridge processes exited during start-up: {exited}\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def exited(self) -> dict[str, int]:
        """Processes that are no longer running, with their exit status."""
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def output(self) -> str:
        parts = []
        for name in self.processes:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace").strip()
            if text:
                parts.append(f"--- {name} ---\n{text[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> dict[str, int]:
        """SIGTERM every process (workers first), then SIGKILL any still running after the bound."""
        order = sorted(self.processes, key=lambda name: name == "web")
        for name in order:
            if self.processes[name].poll() is None:
                self.processes[name].send_signal(signal.SIGTERM)
        statuses = {}
        for name in order:
            process = self.processes[name]
            try:
                statuses[name] = process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                statuses[name] = process.wait()
        return statuses
