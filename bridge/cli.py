"""``omnibridge``: ``up`` (everything, for trying it), ``web`` and ``worker`` (the Procfile), ``doctor``."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from bridge.errors import BridgeError, ConfigError
from bridge.settings import Settings


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    env = dict(os.environ if env is None else env)
    try:
        settings = Settings.from_env(env)
        return int(args.run(args, settings, env) or 0)
    except ConfigError as error:
        print(f"omnibridge: configuration error: {error}", file=sys.stderr)
        return 2
    except BridgeError as error:
        print(f"omnibridge: {error}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnibridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the web process and a worker (and an embedded Redis if needed)")
    up.add_argument("--host", help="address to listen on (default: HOST or 127.0.0.1)")
    up.add_argument("--port", type=int, help="port to listen on (default: PORT or 8000)")
    up.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    up.set_defaults(run=run_up)

    web = commands.add_parser("web", help="run the web process (Procfile web:)")
    web.add_argument("--host", help="address to listen on (default: HOST or 127.0.0.1)")
    web.add_argument("--port", type=int, help="port to listen on (default: PORT or 8000)")
    web.add_argument("--processes", type=int, default=1, help="uvicorn worker processes (default 1)")
    web.set_defaults(run=run_web)

    worker = commands.add_parser("worker", help="run an RQ worker with the scheduler (Procfile worker:)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--name", help="worker name (default: generated)")
    worker.set_defaults(run=run_worker)

    doctor = commands.add_parser("doctor", help="check Redis, Rocket.Chat, the credentials and each permission")
    doctor.set_defaults(run=run_doctor)

    status = commands.add_parser("status", help="agents, load, chats waiting and decisions, refreshing")
    status.add_argument("--once", action="store_true", help="print one screen and exit")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    status.set_defaults(run=run_status)

    failed = commands.add_parser("failed", help="list jobs in RQ's failed-job registry (and requeue them)")
    failed.add_argument("--requeue", action="store_true", help="put every failed job back on the queue")
    failed.set_defaults(run=run_failed)
    return parser


def run_status(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    import redis

    from bridge.status import render, watch

    connection = redis.Redis.from_url(settings.require_redis())
    if args.once:
        print(render(settings, connection))
        return 0
    try:
        watch(settings, connection, args.interval)
    except KeyboardInterrupt:
        pass
    return 0


def run_failed(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    import redis

    from bridge.jobqueue import make_queue

    queue = make_queue(settings, redis.Redis.from_url(settings.require_redis()))
    registry = queue.failed_job_registry
    job_ids = registry.get_job_ids()
    for job_id in job_ids:
        job = queue.fetch_job(job_id)
        result = job.latest_result() if job else None
        lines = (result.exc_string or "").strip().splitlines() if result else ["(no result kept)"]
        print(f"{job_id}  {job.func_name if job else '?'}  {lines[-1] if lines else ''}")
    if args.requeue:
        for job_id in job_ids:
            registry.requeue(job_id)
        print(f"{len(job_ids)} job(s) requeued")
    else:
        print(f"{len(job_ids)} failed job(s)")
    return 0


def run_doctor(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    from bridge.doctor import FAIL, render, run_checks

    checks = run_checks(settings)
    print(render(checks))
    return 1 if any(check.result == FAIL for check in checks) else 0


def run_web(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    import uvicorn

    from bridge import logs

    settings.require_webhook_token()
    settings.require_redis()
    logs.configure(settings)
    uvicorn.run(
        "bridge.asgi:create_app_from_env",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.processes,
        log_level="warning",
        proxy_headers=True,
        # Rocket.Chat waits Livechat_http_timeout (5 s) for an answer; hold no request longer than that at stop.
        timeout_graceful_shutdown=5,
    )
    return 0


def run_worker(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    from bridge import logs
    from workers.worker import run_worker as work

    logs.configure(settings)
    work(settings, burst=args.burst, name=args.name)
    return 0


def run_up(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    from bridge.embedded import EmbeddedRedis

    child_env = dict(env)
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis().start()
        child_env["REDIS_URL"] = embedded.url
    if not settings.webhook_token and not settings.insecure_dev:
        child_env["ROCKETCHAT_WEBHOOK_TOKEN"] = secrets.token_urlsafe(24)
    host = args.host or settings.host
    port = args.port or settings.port
    say = print
    say(f"omnibridge: Redis at {'embedded ' + embedded.url if embedded else 'REDIS_URL'}")
    say(f"omnibridge: web process on http://{host}:{port} (webhook URL: http://{host}:{port}/webhooks/livechat)")
    if "ROCKETCHAT_WEBHOOK_TOKEN" not in env:
        say("omnibridge: no ROCKETCHAT_WEBHOOK_TOKEN set: a random one is in use for this run; set it to choose one")
    say(f"omnibridge: {args.workers} worker(s); Ctrl-C stops everything")
    sys.stdout.flush()
    command = [sys.executable, "-m", "bridge"]
    children = [subprocess.Popen([*command, "web", "--host", host, "--port", str(port)], env=child_env)]
    children += [subprocess.Popen([*command, "worker"], env=child_env) for _ in range(args.workers)]
    return supervise(children, on_exit=embedded.close if embedded else None)


def supervise(children: list[subprocess.Popen[bytes]], on_exit: object = None) -> int:
    """Wait until a child exits or we are told to stop; then stop every child (SIGTERM, then SIGKILL)."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        while not stopping:
            exited = [child for child in children if child.poll() is not None]
            if exited:
                status = exited[0].returncode or 1
                print(
                    f"omnibridge: a process exited ({exited[0].args[3]}, status {exited[0].returncode})",
                    file=sys.stderr,
                )
                break
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 25
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if callable(on_exit):
            on_exit()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("omnibridge: stopped")
    return status
