"""Requests per second of ``POST /webhooks/livechat`` against a bare Starlette endpoint, measured in one run.

    python -m bench.intake [--connections 64] [--duration 10] [--threads 1]

Needs ``wrk`` (``apt-get install -y wrk``). Starts a private redis-server (``EmbeddedRedis``), then, one after the
other and each as a single process: the bare reference (``bench/bare_app.py`` under uvicorn with uvloop and
httptools) and our web process (``python -m bridge web``, uvicorn picks uvloop and httptools when installed).
wrk posts distinct, valid ``LivechatSessionQueued`` bodies (a counter in the room and visitor ids), so every one
of ours is a new job and none is a duplicate; afterwards the queue length in Redis is compared with the number of
answers wrk counted. Prints req/s, p50/p99 latency and the ratio ours/bare. Figures vary 10-40% between runs on
a shared machine; compare them within one run. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.common import child_env, free_port, http_ok, machine, python, spawn, stop, wait_for
from bridge.embedded import EmbeddedRedis

TOKEN = "bench-webhook-token-91f3"
PATH = "/webhooks/livechat"
QUEUE = "bridge"

# tests/fixtures/webhooks/LivechatSessionQueued__basic.json, compact, with %s for the room id (three times: room,
# message rid and the message id) and the visitor id (twice: visitor and message author).
TEMPLATE = {
    "_id": "%s",
    "label": "Maria Schmidt",
    "createdAt": "2026-11-24T10:15:30.123Z",
    "lastMessageAt": "2026-11-24T10:15:30.123Z",
    "tags": [],
    "customFields": {"orderId": "A-10293"},
    "visitor": {
        "_id": "%s",
        "token": "yvxd3z2cn8g2e1h8ouq1h",
        "name": "Maria Schmidt",
        "username": "guest-1042",
        "department": "Jx4pQ9sTnB6wYc2Ke",
        "ip": "203.0.113.42",
        "os": "Windows 10",
        "browser": "Firefox 132.0",
        "customFields": {"customerId": "C-88213"},
        "email": [{"address": "maria.schmidt@example.com"}, {"address": "m.schmidt@example.org"}],
        "phone": [{"phoneNumber": "+49 30 9018 2204"}],
    },
    "type": "LivechatSessionQueued",
    "messages": [
        {
            "u": {"_id": "%s", "username": "guest-1042", "name": "Maria Schmidt"},
            "_id": "%s",
            "username": "guest-1042",
            "msg": "Hello, I have a question about my last invoice.",
            "ts": "2026-11-24T10:15:30.123Z",
            "rid": "%s",
            "_updatedAt": "2026-11-24T10:15:30.123Z",
        }
    ],
    "departmentId": "Jx4pQ9sTnB6wYc2Ke",
}

LUA = r"""
-- Distinct LivechatSessionQueued bodies: room id "<tag>-r<thread>-<n>", visitor id "<tag>-v<thread>-<n>".
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local template = [==[%(template)s]==]

function init(args)
  tag = args[1]
  n = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-RocketChat-Livechat-Token"] = args[2]
end

function request()
  n = n + 1
  local room = string.format("%%s-r%%d-%%d", tag, tid, n)
  local visitor = string.format("%%s-v%%d-%%d", tag, tid, n)
  local body = string.format(template, room, visitor, visitor, room .. "-m", room)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%%d,"duration_us":%%d,"bytes":%%d,"non2xx":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,"mean_us":%%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class Result:
    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def write_script(directory: Path) -> Path:
    template = json.dumps(TEMPLATE, separators=(",", ":"))
    assert "%" not in template.replace("%s", ""), "stray % in the template"
    script = directory / "queued.lua"
    script.write_text(LUA % {"template": template})
    return script


def wrk(url: str, script: Path, tag: str, connections: int, threads: int, seconds: int) -> Result:
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
        "-s", str(script), url, "--", tag, TOKEN,
    ]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    line = next((line for line in output.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary:\n{output}")
    data = json.loads(line[6:])
    return Result(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non2xx=data["non2xx"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


def measure(name: str, command: list[str], env: dict[str, str], port: int, work: Path, args) -> tuple[Result, int]:
    """Start ``command``, warm it up, run wrk against it, stop it. Returns the result and requests sent in all."""
    log = work / f"{name}.log"
    process = spawn(command, env, log)
    try:
        wait_for(http_ok(f"http://127.0.0.1:{port}/healthz", process, log), 30, f"{name} to answer /healthz")
        url = f"http://127.0.0.1:{port}{PATH}"
        warm = wrk(url, args.script, f"{name}-warm", args.connections, args.threads, args.warmup)
        result = wrk(url, args.script, f"{name}-run", args.connections, args.threads, args.duration)
    finally:
        status = stop(process)
    if status not in (0, -15):
        print(f"  ({name} exited with {status}; its output: {log})")
    return result, warm.requests + result.requests


def line(name: str, result: Result) -> str:
    errors = f", {result.non2xx} non-2xx" if result.non2xx else ""
    errors += f", {result.socket_errors} socket errors/timeouts" if result.socket_errors else ""
    return (
        f"{name:>5}: {result.rate:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms  "
        f"max {result.max_ms:7.2f} ms  ({result.requests} requests in {result.seconds:.1f} s{errors})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each run")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (the machine is shared with servers)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit(
            "bench.intake needs wrk: install it with `apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk`"
        )
    print(machine())
    print(
        f"wrk: {args.connections} connections, {args.threads} thread(s), {args.duration} s (+{args.warmup} s warm-up)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp, EmbeddedRedis() as server:
        work = Path(tmp)
        args.script = write_script(work)
        client = redis.Redis.from_url(server.url)
        client.flushall()

        port = free_port()
        bare_cmd = [
            python(), "-m", "uvicorn", "bench.bare_app:app", "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        bare, _ = measure("bare", bare_cmd, child_env({}), port, work, args)

        port = free_port()
        env = child_env(
            {
                "REDIS_URL": server.url,
                "ROCKETCHAT_WEBHOOK_TOKEN": TOKEN,
                "LOG_LEVEL": "WARNING",
                "SPOOL_DIR": str(work / "spool"),
            }
        )
        ours, sent = measure("ours", [python(), "-m", "bridge", "web", "--port", str(port)], env, port, work, args)
        time.sleep(0.2)
        jobs = client.llen(f"rq:queue:{QUEUE}")
        seen = sum(1 for _ in client.scan_iter("ob:seen:*", count=10_000))  # best effort: the dedupe marks
        client.close()

    print(line("bare", bare))
    print(line("ours", ours))
    print(f"ratio ours/bare: {ours.rate / bare.rate:.2f}  (p99 ours/bare: {ours.p99_ms / bare.p99_ms:.1f}x)")
    every_200 = ours.non2xx == 0 and ours.socket_errors == 0
    print(f"every answer of ours 2xx: {'yes' if every_200 else 'NO'} (wrk counts non-2xx; 200 is our only 2xx)")
    print(
        f"jobs queued in Redis: {jobs}, dedupe marks: {seen}, for {sent} answers wrk counted (warm-up included; "
        f"up to {2 * args.connections} more were in flight when wrk stopped)"
    )


if __name__ == "__main__":
    main()
