"""The sandbox's webhook poster against a real receiving HTTP server (docs/rocketchat.md §1.4, 1.5)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.sandbox import payloads
from bridge.sandbox.livechat import forward_room
from bridge.sandbox.state import CLOSED, FORWARDED, QUEUED, TAKEN, SandboxState
from bridge.sandbox.webhooks import WebhookPoster
from tests.support import ServerThread, wait_for

TOKEN = "livechat-secret-3f9a"


@dataclass
class Reply:
    """What the receiver answers to one request; `delay` stalls it, `gate` holds it until set."""

    status: int = 200
    text: str = ""
    delay: float = 0.0
    gate: threading.Event | None = None


@dataclass
class Received:
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.raw)
        return result


@dataclass
class Receiver:
    """The webhook target: logs every request, answers from `script`, then 200 with an empty body."""

    url: str = ""
    script: list[Reply] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def hook(self, request: Request) -> Response:
        raw = await request.body()
        with self.lock:
            self.requests.append(Received(dict(request.headers), raw))
            reply = self.script.pop(0) if self.script else Reply()
        await asyncio.sleep(reply.delay)
        while reply.gate is not None and not reply.gate.is_set():
            await asyncio.sleep(0.01)
        return Response(reply.text, status_code=reply.status)

    def types(self) -> list[str]:
        return [request.body["type"] for request in self.requests]


Start = Callable[..., WebhookPoster]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with ServerThread(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as server:
        receiver.url = f"{server.url}/hook"
        yield receiver


@pytest.fixture
def start(rc_state: SandboxState, receiver: Receiver) -> Iterator[Start]:
    """Attach a poster to the state; small timeouts so retries take milliseconds."""
    posters: list[WebhookPoster] = []

    def start_poster(url: str | None = None, token: str = TOKEN, **options: Any) -> WebhookPoster:
        options = {"timeout": 2.0, "retry_delay": 0.05, **options}
        poster = WebhookPoster(rc_state, url or receiver.url, token, **options).attach()
        posters.append(poster)
        return poster

    yield start_poster
    for poster in posters:
        poster.close(flush=False)


def settled(poster: WebhookPoster) -> None:
    assert poster.drain(timeout=5.0), "deliveries still pending"


def test_each_event_type_is_posted_with_its_payload_and_the_token(
    rc_state: SandboxState, receiver: Receiver, start: Start
) -> None:
    poster = start()
    rc_state.add_agent("ana")
    bob = rc_state.add_agent("bob")
    room, _ = rc_state.open_chat()
    settled(poster)
    rc_state.assign(room["_id"], "ana")
    settled(poster)
    forward_room(rc_state, room["_id"], user_id=bob["_id"], department_id=None)
    settled(poster)
    rc_state.close_room(room["_id"])
    settled(poster)

    for request in receiver.requests:
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-rocketchat-livechat-token"] == TOKEN
        assert request.body["_id"] == room["_id"]
    # Forwarding fires Taken and Forwarded together; they may arrive in either order.
    assert receiver.types()[:2] == [QUEUED, TAKEN] and receiver.types()[-1] == CLOSED
    assert sorted(receiver.types()[2:4]) == sorted([TAKEN, FORWARDED])
    queued, taken = receiver.requests[0].body, receiver.requests[1].body
    visitor = rc_state.visitors[room["v"]["_id"]]
    assert queued == payloads.room_event(QUEUED, room, visitor, None, rc_state.messages_of(room["_id"]))
    assert queued["messages"][0]["msg"] == "Hello, I need help" and "agent" not in queued
    assert taken["agent"]["username"] == taken["servedBy"]["username"] == "ana"
    forwarded = next(r.body for r in receiver.requests if r.body["type"] == FORWARDED)
    assert forwarded["agent"]["username"] == "bob" and forwarded["oldServedBy"]["username"] == "ana"
    closed = receiver.requests[-1].body
    assert closed["closer"] == "user" and closed["closedBy"]["username"] == "bob"
    assert {outcome.outcome for outcome in poster.outcomes()} == {"delivered"}


def test_no_token_header_without_a_token(rc_state: SandboxState, receiver: Receiver, start: Start) -> None:
    poster = start(token="")
    rc_state.open_chat()
    settled(poster)
    assert "x-rocketchat-livechat-token" not in receiver.requests[0].headers


def test_a_200_answer_becomes_crm_data_and_comes_back_in_the_next_event(
    rc_state: SandboxState, receiver: Receiver, start: Start
) -> None:
    rc_state.add_agent("ana")
    receiver.script.append(Reply(200, '{"lead": "L-77"}'))
    poster = start()
    room, _ = rc_state.open_chat()
    settled(poster)
    assert "crmData" not in receiver.requests[0].body
    assert rc_state.rooms[room["_id"]]["crmData"] == '{"lead": "L-77"}'  # the raw text, not parsed
    rc_state.assign(room["_id"], "ana")
    settled(poster)
    assert receiver.requests[1].body["crmData"] == '{"lead": "L-77"}'


@pytest.mark.parametrize("status", [201, 204, 400, 404])
def test_new_policy_does_not_retry_other_answers(
    rc_state: SandboxState, receiver: Receiver, start: Start, status: int
) -> None:
    receiver.script.append(Reply(status, '{"ignored": true}' if status != 204 else ""))
    poster = start(retry_policy="new")
    room, _ = rc_state.open_chat()
    settled(poster)
    assert len(receiver.requests) == 1
    assert [(o.outcome, o.attempts) for o in poster.outcomes()] == [("not_retryable", 1)]
    assert "crmData" not in rc_state.rooms[room["_id"]]  # only exactly 200 is a delivery


@pytest.mark.parametrize("status", [201, 400])
def test_old_policy_retries_every_answer_but_200(
    rc_state: SandboxState, receiver: Receiver, start: Start, status: int
) -> None:
    receiver.script.extend([Reply(status), Reply(status), Reply(200, "ok")])
    poster = start(retry_policy="old")
    room, _ = rc_state.open_chat()
    settled(poster)
    assert [a.status for a in poster.deliveries()] == [status, status, 200]
    assert [(o.outcome, o.attempts) for o in poster.outcomes()] == [("delivered", 3)]
    assert rc_state.rooms[room["_id"]]["crmData"] == "ok"


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_answers_are_retried_with_the_same_body(
    rc_state: SandboxState, receiver: Receiver, start: Start, status: int
) -> None:
    receiver.script.extend([Reply(status), Reply(status), Reply(200)])
    poster = start()
    rc_state.open_chat()
    settled(poster)
    assert len(receiver.requests) == 3
    assert len({request.raw for request in receiver.requests}) == 1  # built once, resent as is
    assert [(a.attempt, a.status) for a in poster.deliveries()] == [(1, status), (2, status), (3, 200)]
    assert [o.outcome for o in poster.outcomes()] == ["delivered"]


def test_gives_up_after_the_last_attempt(rc_state: SandboxState, receiver: Receiver, start: Start) -> None:
    receiver.script.extend([Reply(503)] * 5)
    poster = start(attempts=3)
    rc_state.open_chat()
    settled(poster)
    assert len(receiver.requests) == 3  # attempts counts every try, the first included
    assert [(o.outcome, o.attempts) for o in poster.outcomes()] == [("gave_up", 3)]


def test_a_timeout_is_retried(rc_state: SandboxState, receiver: Receiver, start: Start) -> None:
    receiver.script.append(Reply(200, "late", delay=1.0))
    poster = start(timeout=0.3)
    room, _ = rc_state.open_chat()
    settled(poster)
    first, second = poster.deliveries()
    assert (first.status, first.error) == (None, "ReadTimeout")
    assert (second.status, second.error) == (200, None)
    assert receiver.requests[0].raw == receiver.requests[1].raw
    assert rc_state.rooms[room["_id"]]["crmData"] == ""  # the answer of the attempt that counted


def test_a_refused_connection_is_retried(rc_state: SandboxState, start: Start) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    poster = start(url=f"http://127.0.0.1:{port}/hook", attempts=2)
    rc_state.open_chat()
    settled(poster)
    assert [a.error for a in poster.deliveries()] == ["ConnectError", "ConnectError"]
    assert [o.outcome for o in poster.outcomes()] == ["gave_up"]


def test_the_events_filter_mirrors_the_webhook_toggles(
    rc_state: SandboxState, receiver: Receiver, start: Start
) -> None:
    rc_state.add_agent("ana")
    poster = start(events={CLOSED})
    room, _ = rc_state.open_chat()
    rc_state.assign(room["_id"], "ana")
    rc_state.close_room(room["_id"])
    settled(poster)
    assert receiver.types() == [CLOSED]


def test_the_listener_does_not_wait_for_the_receiver(rc_state: SandboxState, receiver: Receiver, start: Start) -> None:
    gate = threading.Event()
    receiver.script.append(Reply(200, gate=gate))
    poster = start(attempts=1)
    rc_state.open_chat()  # returns while the receiver still holds the request
    wait_for(lambda: receiver.requests, timeout=5.0)
    assert poster.outcomes() == []
    gate.set()
    settled(poster)
    assert [o.outcome for o in poster.outcomes()] == ["delivered"]


def test_close_without_flush_drops_pending_retries(rc_state: SandboxState, receiver: Receiver, start: Start) -> None:
    receiver.script.append(Reply(503))
    poster = start(retry_delay=60.0)
    rc_state.open_chat()
    wait_for(poster.deliveries, timeout=5.0)
    poster.close(flush=False)
    assert [(o.outcome, o.attempts) for o in poster.outcomes()] == [("dropped", 1)]
    rc_state.open_chat()  # detached: no longer told
    assert len(poster.outcomes()) == 1 and len(receiver.requests) == 1


def test_defaults_follow_rocket_chat(rc_state: SandboxState) -> None:
    poster = WebhookPoster(rc_state, "http://localhost:9/hook", TOKEN)
    assert (poster.timeout, poster.retry_delay, poster.attempts, poster.retry_policy) == (5.0, 20.0, 5, "new")
    assert poster.events == {QUEUED, TAKEN, FORWARDED, CLOSED}
    poster.close()


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/hook", "http://example.com/hook", "ftp://127.0.0.1/hook", "http://0.0.0.0:80/"]
)
def test_only_loopback_urls_are_accepted(rc_state: SandboxState, url: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        WebhookPoster(rc_state, url, TOKEN)


def test_unknown_event_types_are_refused(rc_state: SandboxState) -> None:
    with pytest.raises(ValueError, match="LivechatSessionClosed"):
        WebhookPoster(rc_state, "http://127.0.0.1:9/hook", TOKEN, events={"LivechatSessionClosed"})
