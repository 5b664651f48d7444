"""``omnibridge``: ``up`` (everything, for trying it), ``web`` and ``worker`` (the Procfile), ``doctor``, ``sandbox``
(a simulated Rocket.Chat)."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from bridge.errors import BridgeError, ConfigError
from bridge.settings import STRATEGIES, Settings

if TYPE_CHECKING:
    from bridge.sandbox.instance import SandboxInstance

RATE_PER_MINUTE = 30.0  # sandbox visitors: one chat every 2 s on average
SANDBOX_AGENTS = 6


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
    up.add_argument("--strategy", choices=STRATEGIES, help="ROUTING_STRATEGY for the web and worker processes")
    sandbox_only = "; sandbox only (without ROCKETCHAT_URL)"
    _add_traffic_options(up, sandbox_only)
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

    sandbox = commands.add_parser(
        "sandbox", help="serve a simulated Rocket.Chat on 127.0.0.1: a sample team, visitors, livechat webhooks"
    )
    sandbox.add_argument("--port", type=_port, default=3000, help="port on 127.0.0.1 (default 3000; 0: any free one)")
    sandbox.add_argument(
        "--webhook-url",
        help="post livechat webhooks here (a loopback URL, e.g. http://127.0.0.1:8000/webhooks/livechat), "
        "with ROCKETCHAT_WEBHOOK_TOKEN as X-RocketChat-Livechat-Token",
    )
    _add_traffic_options(sandbox, "")
    sandbox.set_defaults(run=run_sandbox)
    return parser


def _add_traffic_options(parser: argparse.ArgumentParser, note: str) -> None:
    parser.add_argument(
        "--rate",
        type=_non_negative_float,
        help=f"visitors' new chats per minute, Poisson arrivals (default {RATE_PER_MINUTE:g}; 0: none){note}",
    )
    parser.add_argument(
        "--agents",
        type=_positive_int,
        help=f"agents in the sample team (default {SANDBOX_AGENTS}; more are added available){note}",
    )
    parser.add_argument("--seed", type=int, help=f"seed of the simulation (default: random, printed){note}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


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

    from bridge.jobqueue import make_queue, make_voice_queue

    connection = redis.Redis.from_url(settings.require_redis())
    failed = 0
    for queue in (make_queue(settings, connection), make_voice_queue(settings, connection)):  # chats, then voice
        registry = queue.failed_job_registry
        job_ids = registry.get_job_ids()
        failed += len(job_ids)
        for job_id in job_ids:
            job = queue.fetch_job(job_id)
            result = job.latest_result() if job else None
            lines = (result.exc_string or "").strip().splitlines() if result else ["(no result kept)"]
            print(f"{job_id}  {job.func_name if job else '?'}  {lines[-1] if lines else ''}")
        if args.requeue:
            for job_id in job_ids:
                registry.requeue(job_id)
    print(f"{failed} job(s) requeued" if args.requeue else f"{failed} failed job(s)")
    return 0


def run_doctor(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    from bridge.doctor import FAIL, render, run_checks

    checks = run_checks(settings)
    print(render(checks))
    return 1 if any(check.result == FAIL for check in checks) else 0


def run_web(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    from bridge import logs
    from bridge.webserver import serve

    settings.require_webhook_token()
    settings.require_redis()
    logs.configure(settings)
    # uvicorn with header and body timeouts, a connection cap and keep-alive (README, *Slow clients and connection
    # limits*); `omnibridge up` starts `omnibridge web`, so both run this.
    serve(settings, host=args.host or settings.host, port=args.port or settings.port, processes=args.processes)
    return 0


def run_worker(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    from bridge import logs
    from workers.worker import run_worker as work

    settings.require_worker()
    logs.configure(settings)
    work(settings, burst=args.burst, name=args.name)
    return 0


def run_up(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """The web process and workers, on an embedded Redis without REDIS_URL, against the sandbox without ROCKETCHAT_URL.

    The sandbox runs in this process (threads), not as a child ``omnibridge sandbox``: the service account's
    credentials and the sandbox's port are known here without a handshake, the sandbox answers before the first
    worker starts, and it is stopped after the last worker has finished its job (so that job's calls are answered).
    Visitors stop first, so nothing is posted to a web process that is stopping.
    """
    from bridge.embedded import EmbeddedRedis

    if settings.rocketchat_url:
        settings.require_rocketchat()  # before anything starts: the workers would refuse to start without it
    child_env = dict(env)
    if args.strategy:
        child_env["ROUTING_STRATEGY"] = args.strategy
    if not settings.webhook_token and not settings.insecure_dev:
        child_env["ROCKETCHAT_WEBHOOK_TOKEN"] = secrets.token_urlsafe(24)
    host = args.host or settings.host
    port = args.port or settings.port
    say = print
    sandbox = None
    if settings.rocketchat_url:
        if any(value is not None for value in (args.rate, args.agents, args.seed)):
            say("omnibridge: --rate, --agents and --seed drive the sandbox only; ignored with ROCKETCHAT_URL")
    else:
        sandbox = _start_sandbox(args, host, port, child_env, say)
    embedded = None
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis().start()
            child_env["REDIS_URL"] = embedded.url
    except BaseException:
        if sandbox is not None:
            sandbox.stop()
        raise
    say(f"omnibridge: Redis at {'embedded ' + embedded.url if embedded else 'REDIS_URL'}")
    say(f"omnibridge: web process on http://{host}:{port} (webhook URL: http://{host}:{port}/webhooks/livechat)")
    if not settings.api_token and not settings.insecure_dev:
        # The live view and the API need a token; a random one for this run, shown only here, on the terminal.
        child_env["BRIDGE_API_TOKEN"] = secrets.token_urlsafe(18)
        say(f"omnibridge: live view: http://{host}:{port}/?token={child_env['BRIDGE_API_TOKEN']}")
        say("omnibridge: (a random BRIDGE_API_TOKEN for this run; set BRIDGE_API_TOKEN to choose one)")
    else:
        say(f"omnibridge: live view: http://{host}:{port}/ (add ?token=<BRIDGE_API_TOKEN>)")
    say(f"omnibridge: routing strategy {args.strategy or settings.routing_strategy}")
    if "ROCKETCHAT_WEBHOOK_TOKEN" not in env:
        say("omnibridge: no ROCKETCHAT_WEBHOOK_TOKEN set: a random one is in use for this run; set it to choose one")
    say(f"omnibridge: {args.workers} worker(s); Ctrl-C stops everything")
    sys.stdout.flush()

    def close() -> None:
        if sandbox is not None:
            sandbox.stop()
        if embedded is not None:
            embedded.close()

    command = [sys.executable, "-m", "bridge"]
    children = [subprocess.Popen([*command, "web", "--host", host, "--port", str(port)], env=child_env)]
    children += [subprocess.Popen([*command, "worker"], env=child_env) for _ in range(args.workers)]
    return supervise(children, on_exit=close, on_stop=sandbox.stop_traffic if sandbox else None)


def _start_sandbox(
    args: argparse.Namespace, host: str, port: int, child_env: dict[str, str], say: Callable[[str], None]
) -> SandboxInstance:
    """Start the sandbox for ``up``, posting webhooks to the web process; point the children at it."""
    from bridge.sandbox.instance import SandboxInstance, webhook_url_for

    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    rate = RATE_PER_MINUTE if args.rate is None else args.rate
    agents = args.agents or SANDBOX_AGENTS
    say("omnibridge: SANDBOX: no ROCKETCHAT_URL is set, so the bridge runs against a simulated Rocket.Chat")
    say("omnibridge: SANDBOX: its agents and visitors are simulated; nothing reaches a real Rocket.Chat")
    say(
        "omnibridge: to use a real Rocket.Chat, set ROCKETCHAT_URL and the bridge's credentials "
        "(ROCKETCHAT_USER_ID and ROCKETCHAT_AUTH_TOKEN); see the README, 'The Rocket.Chat account the bridge needs'"
    )
    try:
        webhook_url = webhook_url_for(host, port)
    except ValueError as error:
        raise BridgeError(f"{error}: use --host 127.0.0.1, or set ROCKETCHAT_URL to use a real Rocket.Chat") from None
    sandbox = SandboxInstance(
        agents=agents,
        rate_per_minute=rate,
        seed=seed,
        webhook_url=webhook_url,
        webhook_token=child_env.get("ROCKETCHAT_WEBHOOK_TOKEN", ""),
    ).start()
    child_env.update(sandbox.bridge_env())  # the sandbox's account, whatever credentials the environment held
    for name in ("ROCKETCHAT_USERNAME", "ROCKETCHAT_PASSWORD"):
        child_env.pop(name, None)
    say(
        f"omnibridge: sandbox Rocket.Chat on {sandbox.url}: {agents} agents in Sales and Support, "
        f"visitors open about {rate:g} chats per minute (seed {seed})"
    )
    return sandbox


def run_sandbox(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    from bridge import logs
    from bridge.sandbox.instance import SandboxInstance

    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    rate = RATE_PER_MINUTE if args.rate is None else args.rate
    try:
        sandbox = SandboxInstance(
            port=args.port,
            agents=args.agents or SANDBOX_AGENTS,
            rate_per_minute=rate,
            seed=seed,
            webhook_url=args.webhook_url,
            webhook_token=settings.webhook_token,
        )
    except ValueError as error:  # a webhook URL that is not loopback
        raise BridgeError(str(error)) from None
    logs.configure(settings)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sandbox.start()
        except OSError as error:
            raise BridgeError(f"the sandbox cannot listen on 127.0.0.1:{args.port}: {error.strerror}") from None
        for line in sandbox.summary():
            print(line)
        print("Ctrl-C stops it")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("omnibridge sandbox: stopped")
    return 0


def supervise(
    children: list[subprocess.Popen[bytes]],
    on_exit: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> int:
    """Wait until a child exits or we are told to stop; then ``on_stop()``, stop every child (SIGTERM, then
    SIGKILL) and ``on_exit()``."""
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
        try:
            if on_stop is not None:
                on_stop()
        finally:
            _stop_children(children)
            if on_exit is not None:
                on_exit()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print("omnibridge: stopped")
    return status


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
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
