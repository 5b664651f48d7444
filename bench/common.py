"""Helpers shared by the benchmarks: the machine line, free ports, child processes, waiting for HTTP."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

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
