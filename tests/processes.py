"""The bridge as real processes for end-to-end tests: ``omnibridge web`` and ``omnibridge worker``.

Each process writes its output to a file, so a failing test can show what the processes said. Fault tests also
kill a worker outright, restart the web process on the same port, or add a worker: a worker killed with SIGKILL
leaves its children (RQ's scheduler runs in a forked child) running, so they are remembered and stopped too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
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
        self.killed: set[str] = set()  # stopped on purpose by a test (kill / restart_web): not a crash
        self.orphans: set[int] = set()  # children of killed processes, still to stop

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

    def crashed(self) -> dict[str, int]:
        """Processes that exited although no test stopped them."""
        return {name: code for name, code in self.exited().items() if name not in self.killed}

    def worker_name(self, name: str) -> str:
        """The RQ worker name of the process ``name`` (``worker-2`` -> ``e2e-worker-2-<port>``)."""
        return f"e2e-{name}-{self.port}"

    def add_worker(self) -> str:
        """Start one more worker process; returns its name (``worker-3``, ...)."""
        n = 1 + sum(1 for name in self.processes if name.startswith("worker-"))
        name = f"worker-{n}"
        self._spawn(name, [sys.executable, "-m", "bridge", "worker", "--name", self.worker_name(name)])
        return name

    def kill(self, name: str, children: bool = False) -> None:
        """SIGKILL one process, as the kernel's OOM killer would: its children are left running (and remembered).

        With ``children`` its descendants are killed too, as when the whole host or container is lost.
        """
        process = self.processes[name]
        found = descendants(process.pid)
        self.killed.add(name)
        process.kill()
        process.wait()
        if children:
            for pid in found:
                _signal(pid, signal.SIGKILL)
        self.orphans |= found

    def children(self, name: str) -> set[int]:
        return descendants(self.processes[name].pid)

    def restart_web(self, ready_timeout: float = 30.0) -> str:
        """SIGTERM the running web process, then start a new one on the same port; returns the new one's name."""
        current = [name for name in self.processes if name.startswith("web") and name not in self.killed]
        for name in current:
            self.killed.add(name)
            self.processes[name].send_signal(signal.SIGTERM)
            try:
                self.processes[name].wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.processes[name].kill()
                self.processes[name].wait()
        name = f"web-{1 + sum(1 for n in self.processes if n.startswith('web'))}"
        self._spawn(name, [sys.executable, "-m", "bridge", "web", "--port", str(self.port)])
        wait_for(lambda: self._web_ready(name), timeout=ready_timeout, interval=0.05)
        return name

    def _web_ready(self, name: str) -> bool:
        if self.processes[name].poll() is not None:
            raise AssertionError(f"{name} exited during start-up\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        parts = []
        for name in self.processes:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace").strip()
            if text:
                parts.append(f"--- {name} ---\n{text[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> dict[str, int]:
        """SIGTERM every process (workers first), then SIGKILL any still running after the bound."""
        order = sorted(self.processes, key=lambda name: name.startswith("web"))
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
        self._stop_orphans()
        return statuses

    def _stop_orphans(self) -> None:
        for pid in self.orphans:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while any(_alive(pid) for pid in self.orphans) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.orphans:
            _signal(pid, signal.SIGKILL)
        self.orphans.clear()


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces or parentheses, so split after the last ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
