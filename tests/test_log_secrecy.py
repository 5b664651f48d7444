"""No token, password or visitor data in any log line or RQ job, over a full flow at DEBUG for every logger.

The flow: the web app over real HTTP, the Rocket.Chat double, a worker run in-process; every webhook fixture,
wrong tokens, a 401 and a re-login, a routed chat, the External Service, a voice request, Rocket.Chat answering
503 and 403; first with a username/password account, then with a personal access token.

Two views of the logs are checked: every record as the code emitted it (a handler placed on the root logger
before the project's, so it sees records before ``SecretFilter`` masks them: the code itself must not log
secrets), and what the project's own handler (``bridge.logs.configure``) finally writes.
"""

from __future__ import annotations

import io
import json
import logging
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge import logs
from bridge.app import create_app
from bridge.sandbox import payloads
from bridge.settings import Secret, Settings
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, fixture_names, load_fixture
from tests.team import SALES, SERVICE_ROLES, add_service_account, seed_team
from workers import context
from workers.worker import build_worker

PASSWORD = "pw-Tr0ub4dor&3-horse-battery"
PAT = "pat-5Hq8Zr2LmX9vKc3WnB7tYd4FgJ6pS1aE0uQiOo"
API_TOKEN = "bridge-api-token-c41e9b27"
QUEUE_TOKEN = "external-queue-token-8d03fa6e"
HOOK = {"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}

ROUTED_VISITOR = {
    "name": "Olga Petrova-Lindqvist",
    "visitorEmails": [{"address": "olga.petrova@example.net"}],
    "phone": [{"phoneNumber": "+1 202 555 0143"}],
    "ip": "198.51.100.23",
}

# LogRecord attributes every record has; anything else on a record came from ``extra=``.
STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class Collector(logging.Handler):
    """Every record as text: the formatted message, the exception and stack text, and the ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        extras = {key: value for key, value in vars(record).items() if key not in STANDARD_ATTRIBUTES}
        self.lines.append(f"{self.format(record)} {extras!r}" if extras else self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


def visitor_data(payload: dict[str, Any]) -> set[str]:
    """The personal data a webhook carries: the visitor's name, e-mails, phones, IP, token; the messages' text."""
    found: set[str] = set()
    visitor = payload.get("visitor") or {}
    for key in ("name", "ip", "token"):
        if isinstance(visitor.get(key), str):
            found.add(visitor[key])
    for key, inner in (("email", "address"), ("phone", "phoneNumber")):
        value = visitor.get(key)
        if isinstance(value, str):
            found.add(value)
        for item in value if isinstance(value, list) else []:
            found.add(item[inner])
    if isinstance(payload.get("label"), str):
        found.add(payload["label"])
    for message in payload.get("messages") or []:
        if isinstance(message.get("msg"), str):
            found.add(message["msg"])
    if isinstance(payload.get("message"), str):  # LivechatOfflineMessage
        found.add(payload["message"])
    return {value for value in found if len(value) >= 6}


def leaks(text: str, forbidden: dict[str, str]) -> list[str]:
    found = []
    for label, value in sorted(forbidden.items()):
        if value in text:
            line = next(line for line in text.splitlines() if value in line)
            found.append(f"{label} ({value!r}) in: {line[:300]}")
    return found


@pytest.fixture
def captured(settings) -> Iterator[tuple[Collector, io.StringIO]]:
    """A collector on the root logger (ahead of the project's handler) and the project's own output."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    saved_levels = {
        name: logger.level
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    collector = Collector()
    root.addHandler(collector)
    output = io.StringIO()
    yield collector, output
    for name in ("uvicorn", "uvicorn.access"):
        logging.getLogger(name).removeHandler(collector)
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            logger.setLevel(saved_levels.get(name, logging.NOTSET))


def everything_at_debug(collector: Collector) -> None:
    """Every logger at DEBUG (``configure`` quiets httpx/httpcore; uvicorn's loggers do not propagate)."""
    logging.getLogger().setLevel(logging.DEBUG)
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.setLevel(logging.DEBUG)
            logger.disabled = False
    for name in ("uvicorn", "uvicorn.access"):
        if collector not in logging.getLogger(name).handlers:
            logging.getLogger(name).addHandler(collector)


def work(settings: Settings, redis_client) -> None:
    build_worker(settings, redis_client).work(burst=True, logging_level="DEBUG")


def queued(rc_state, room) -> dict[str, Any]:
    visitor = rc_state.visitors[room["v"]["_id"]]
    return payloads.room_event("LivechatSessionQueued", room, visitor, messages=rc_state.messages_of(room["_id"]))


def served(rc_state, room) -> str | None:
    return (rc_state.rooms[room["_id"]].get("servedBy") or {}).get("_id")


def test_no_secret_or_visitor_data_reaches_logs_or_jobs(settings, rc_state, rc_server, redis_client, captured):
    collector, output = captured
    team = seed_team(rc_state)
    rc_state.add_account("svc", SERVICE_ROLES, password=PASSWORD)
    pat_account = add_service_account(rc_state, pat=PAT)
    common = settings.replace(
        rocketchat_url=rc_server.url,
        api_token=Secret(API_TOKEN),
        external_queue_token=Secret(QUEUE_TOKEN),
        log_level="DEBUG",
        rocketchat_retries=1,
        rocketchat_timeout=2.0,
        rocketchat_calls_per_minute=0,
    )
    with_password = common.replace(rocketchat_username="svc", rocketchat_password=Secret(PASSWORD))
    with_pat = common.replace(rocketchat_user_id=pat_account.user_id, rocketchat_auth_token=Secret(PAT))

    logs.configure(with_password, stream=output)
    with ServerThread(create_app(with_password)) as web, httpx.Client(base_url=web.url, timeout=10) as client:
        everything_at_debug(collector)

        # every fixture, with the right token, a wrong one (another secret) and none; one malformed
        for name in fixture_names():
            body = json.dumps(load_fixture(name)).encode()
            assert client.post("/webhooks/livechat", content=body, headers=HOOK).status_code == 200, name
            wrong = {"X-RocketChat-Livechat-Token": API_TOKEN}
            assert client.post("/webhooks/livechat", content=body, headers=wrong).status_code == 403
            assert client.post("/webhooks/livechat", content=body).status_code == 403
        malformed = load_fixture("LivechatSessionQueued__basic")
        del malformed["visitor"]["_id"]
        assert client.post("/webhooks/livechat", json=malformed, headers=HOOK).status_code == 400

        # a routed chat, the worker logging in with the password, a 401 on its first calls, then a re-login
        room, _ = rc_state.open_chat(department=SALES, visitor=ROUTED_VISITOR)
        assert client.post("/webhooks/livechat", json=queued(rc_state, room), headers=HOOK).status_code == 200
        rc_state.inject("/api/v1/livechat/", status=401, count=1)
        rc_state.inject("/api/v1/omnichannel/", status=401, count=1)
        work(with_password, redis_client)
        assert served(rc_state, room) in (team["ana"], team["bo"])
        lines = rc_state.log_lines()
        assert lines.count("POST /api/v1/login > 200") >= 2, lines
        assert any(line.endswith("> 401") for line in lines)

        # the External Service, with its token and with a wrong one (another secret)
        queue_headers = {"X-RocketChat-Secret-Token": QUEUE_TOKEN}
        assert client.get("/external-queue", params={"departmentId": SALES}, headers=queue_headers).status_code == 200
        wrong_queue = {"X-RocketChat-Secret-Token": PAT}
        assert client.get("/external-queue", headers=wrong_queue).status_code == 403

        # a voice request, with the bearer token and with the password as a wrong one
        voice = {"extension": "2001", "departmentId": SALES, "requestId": "call-1"}
        bearer = {"Authorization": f"Bearer {API_TOKEN}"}
        assert client.post("/voice/route", json=voice, headers=bearer).status_code == 202
        assert (
            client.post("/voice/route", json=voice, headers={"Authorization": f"Bearer {PASSWORD}"}).status_code == 403
        )
        work(with_password, redis_client)
        assert client.get("/decisions/voice/call-1", headers=bearer).json()["decisions"][-1]["outcome"] == "assigned"

        # Rocket.Chat answering 503 (after the retries), then 403
        for status, route in ((503, "/api/v1/livechat/inquiries.take"), (403, "/api/v1/livechat/inquiries.")):
            failing, _ = rc_state.open_chat(department=SALES, visitor={"name": f"Failing Visitor {status}"})
            rc_state.inject(route, status=status)
            assert client.post("/webhooks/livechat", json=queued(rc_state, failing), headers=HOOK).status_code == 200
            work(with_password, redis_client)
            rc_state.clear_faults()
            assert served(rc_state, failing) is None
        assert any(line.endswith("> 503") for line in rc_state.log_lines())
        assert any(line.endswith("> 403") for line in rc_state.log_lines())

        # the same with a personal access token: a routed chat, then a 401 (no re-login without a password)
        logs.configure(with_pat, stream=output)
        everything_at_debug(collector)
        rc_state.clear_faults()
        pat_room, _ = rc_state.open_chat(department=SALES, visitor={"name": "Pat Token Visitor"})
        assert client.post("/webhooks/livechat", json=queued(rc_state, pat_room), headers=HOOK).status_code == 200
        work(with_pat, redis_client)
        rc_state.inject("/api/v1/livechat/", status=401)
        rejected, _ = rc_state.open_chat(department=SALES, visitor={"name": "Rejected Visitor"})
        assert client.post("/webhooks/livechat", json=queued(rc_state, rejected), headers=HOOK).status_code == 200
        work(with_pat, redis_client)
        rc_state.clear_faults()
    current = context.current()
    if current._rocketchat is not None:
        current._rocketchat.close()

    forbidden = {
        "webhook token": WEBHOOK_TOKEN,
        "Rocket.Chat password": PASSWORD,
        "Rocket.Chat personal access token": PAT,
        "bridge API token": API_TOKEN,
        "external queue token": QUEUE_TOKEN,
    }
    # The session tokens the double issued (the bridge's login tokens among them): no setting masks these.
    for index, token in enumerate(sorted(rc_state.credentials._tokens)):
        forbidden.setdefault(f"Rocket.Chat session token #{index}", token)
    personal: set[str] = set()
    for name in fixture_names():
        personal |= visitor_data(load_fixture(name))
    personal |= {"Olga Petrova-Lindqvist", "olga.petrova@example.net", "+1 202 555 0143", "198.51.100.23"}
    assert {"maria.schmidt@example.com", "+49 30 9018 2204", "203.0.113.42", "Peter Novak"} <= personal
    forbidden |= {f"visitor data {index}": value for index, value in enumerate(sorted(personal))}

    raw, written = collector.text(), output.getvalue()
    # the capture saw the whole flow (a vacuous pass is no pass)
    for expected in (
        "webhook accepted",
        "logged in to Rocket.Chat as svc",
        "rocket.chat GET",
        "Successfully completed",
    ):
        assert expected in raw, f"{expected!r} was not logged"
    assert "rq.worker" in raw and "bridge.rocketchat" in raw and "httpx" in raw
    assert "webhook accepted" in written

    assert leaks(raw, forbidden) == [], "the code logged it (before SecretFilter)"
    assert leaks(written, forbidden) == [], "the project's log output carries it"

    in_jobs = []
    for key in redis_client.scan_iter("rq:job:*"):
        if redis_client.type(key) != b"hash":
            continue
        for field, value in redis_client.hgetall(key).items():
            try:
                text = zlib.decompress(value).decode("utf-8", "replace")
            except zlib.error:
                text = value.decode("utf-8", "replace")
            in_jobs += [f"{key.decode()} {field.decode()}: {leak}" for leak in leaks(text, forbidden)]
    assert redis_client.keys("rq:job:*"), "jobs were recorded"
    assert in_jobs == []
