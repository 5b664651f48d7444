"""The Rocket.Chat double, exercised over real loopback HTTP the way the bridge will call it."""

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bridge.sandbox.server import SandboxServer
from bridge.sandbox.state import SandboxState

V7, V8 = "7.13.9", "8.8.1"


@dataclass
class Sandbox:
    state: SandboxState
    url: str
    stack: ExitStack

    def client(self, user_id: str | None = None, token: str | None = None) -> httpx.Client:
        headers = {"X-User-Id": user_id, "X-Auth-Token": token} if user_id and token else {}
        return self.stack.enter_context(httpx.Client(base_url=self.url, headers=headers))

    def account(self, username: str, *roles: str) -> httpx.Client:
        return self.client(*self.state.add_account(username, roles or ("user",)))


Launch = Callable[..., Sandbox]


@pytest.fixture
def launch() -> Iterator[Launch]:
    with ExitStack() as stack:

        def start(version: str = V7, **options: Any) -> Sandbox:
            state = SandboxState(version, seed=7, **options)
            server = stack.enter_context(SandboxServer(state))
            return Sandbox(state, server.url, stack)

        yield start


def events_of(state: SandboxState) -> list[tuple[str, dict[str, Any]]]:
    received: list[tuple[str, dict[str, Any]]] = []
    state.listeners.append(lambda event_type, room: received.append((event_type, room)))
    return received


# -- auth, versions, errors -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [V7, V8])
def test_info_needs_no_auth_and_reports_the_version(launch: Launch, version: str) -> None:
    sandbox = launch(version)
    assert sandbox.client().get("/api/info").json() == {"version": version, "success": True}


def test_login_returns_a_token_that_authenticates(launch: Launch) -> None:
    sandbox = launch()
    user_id, _ = sandbox.state.add_account("svc", ["bot"], password="s3cret")
    reply = sandbox.client().post("/api/v1/login", json={"user": "svc", "password": "s3cret"}).json()
    assert reply["status"] == "success" and reply["success"] is True
    assert reply["data"]["userId"] == user_id and reply["data"]["me"]["username"] == "svc"
    me = sandbox.client(user_id, reply["data"]["authToken"]).get("/api/v1/me").json()
    assert (me["_id"], me["roles"], me["success"]) == (user_id, ["bot"], True)
    assert "services" not in me


@pytest.mark.parametrize(
    ("version", "login", "body"),
    [
        (V7, "svc", {"success": False, "error": 403, "status": "error", "message": "Incorrect password"}),
        (
            V7,
            "nobody",
            {"success": False, "error": "Unauthorized", "status": "error", "message": "Unauthorized"},
        ),
        (V8, "svc", {"success": False, "error": "unauthorized"}),
    ],
)
def test_login_failure_is_a_401_with_the_version_body(
    launch: Launch, version: str, login: str, body: dict[str, Any]
) -> None:
    sandbox = launch(version)
    sandbox.state.add_account("svc", ["bot"], password="s3cret")
    reply = sandbox.client().post("/api/v1/login", json={"username": login, "password": "wrong"})
    assert (reply.status_code, reply.json()) == (401, body)


@pytest.mark.parametrize(
    ("version", "body"),
    [
        (
            V7,
            {
                "success": False,
                "error": "You must be logged in to do this.",
                "status": "error",
                "message": "You must be logged in to do this.",
            },
        ),
        (V8, {"success": False, "error": "You must be logged in to do this."}),
    ],
)
def test_missing_or_wrong_token_is_a_401(launch: Launch, version: str, body: dict[str, Any]) -> None:
    sandbox = launch(version)
    user_id, _ = sandbox.state.add_account("svc", ["bot"])
    for client in (sandbox.client(), sandbox.client(user_id, "not-the-token")):
        reply = client.get("/api/v1/livechat/users/agent")
        assert (reply.status_code, reply.json()) == (401, body)


@pytest.mark.parametrize(("version", "code"), [(V7, "error-unauthorized"), (V8, "error-forbidden")])
def test_missing_permission_is_a_403_named_per_version(launch: Launch, version: str, code: str) -> None:
    sandbox = launch(version)
    agent = sandbox.account("agent", "user", "livechat-agent")  # view-l-room, but not transfer-livechat-guest
    reply = agent.post("/api/v1/livechat/room.forward", json={"roomId": "r1", "userId": "u1"})
    assert reply.status_code == 403
    assert reply.json() == {
        "success": False,
        "error": f"User does not have the permissions required for this action [{code}]",
    }


@pytest.mark.parametrize(("version", "error"), [(V7, "unauthorized"), (V8, "forbidden")])
def test_a_handler_refusal_is_a_bare_403(launch: Launch, version: str, error: str) -> None:
    sandbox = launch(version)
    someone = sandbox.state.add_agent("someone")
    agent = sandbox.account("agent", "user", "livechat-agent")
    reply = agent.get("/api/v1/livechat/rooms", params={"agents[]": someone["_id"], "open": "true"})
    assert (reply.status_code, reply.json()) == (403, {"success": False, "error": error})


def test_an_agent_may_count_its_own_rooms(launch: Launch) -> None:
    sandbox = launch()
    agent_id, token = sandbox.state.add_account("agent", ["user", "livechat-agent"], statusLivechat="available")
    room, _ = sandbox.state.open_chat()
    sandbox.state.assign(room["_id"], agent_id)
    reply = sandbox.client(agent_id, token).get(
        "/api/v1/livechat/rooms", params={"agents[]": agent_id, "open": "true", "count": 1}
    )
    assert reply.status_code == 200 and reply.json()["total"] == 1


def test_unknown_routes_are_404(launch: Launch) -> None:
    reply = launch().client().get("/api/v1/no.such.route")
    assert (reply.status_code, reply.json()) == (404, {"success": False, "error": "Resource not found"})


def test_the_server_binds_to_loopback_only() -> None:
    with pytest.raises(ValueError):
        SandboxServer(SandboxState(), host="0.0.0.0")


# -- agents ---------------------------------------------------------------------------------------


def test_agents_available_ignores_presence_and_does_not_enforce_count(launch: Launch) -> None:
    sandbox = launch(V7)
    state = sandbox.state
    state.add_agent("ann", status="offline", statusLivechat="not-available")
    state.add_agent("ben", status="away")
    state.add_agent("cat", max_chats="4")
    state.add_agent("dan", extension="1001")
    state.add_account("mgr", ["livechat-manager"])
    admin = sandbox.account("admin", "admin")

    reply = admin.get("/api/v1/omnichannel/agents/available", params={"count": 2, "sort": '{"username": 1}'}).json()
    assert [agent["username"] for agent in reply["agents"]] == ["ann", "ben", "cat"]
    assert (reply["count"], reply["offset"], reply["total"], reply["success"]) == (2, 0, 3, True)
    first = reply["agents"][0]
    assert {"statusConnection", "roles", "active", "utcOffset", "livechatCount"} <= first.keys()
    assert "services" not in first and "livechat" not in first
    assert reply["agents"][2]["livechat"] == {"maxNumberSimultaneousChat": "4"}

    with_dan = admin.get(
        "/api/v1/omnichannel/agents/available", params={"includeExtension": "1001", "text": "D", "offset": 0}
    ).json()
    assert [agent["username"] for agent in with_dan["agents"]] == ["dan"]


def test_agents_available_is_admin_only_and_gone_in_8(launch: Launch) -> None:
    seven = launch(V7)
    manager = seven.account("mgr", "livechat-manager")
    assert manager.get("/api/v1/omnichannel/agents/available").status_code == 403

    eight = launch(V8)
    reply = eight.account("admin", "admin").get("/api/v1/omnichannel/agents/available")
    assert (reply.status_code, reply.json()) == (404, {"success": False, "error": "Resource not found"})
    assert eight.state.log_lines() == ["GET /api/v1/omnichannel/agents/available > 404"]


@pytest.mark.parametrize("version", [V7, V8])
def test_users_agent_filters_availability_and_enforces_count(launch: Launch, version: str) -> None:
    sandbox = launch(version)
    state = sandbox.state
    sales = state.add_department("Sales")
    state.add_agent("amy", name="Amy", departments=[sales["_id"]], max_chats=3)
    state.add_agent("bea", name="Bea", status="offline")
    state.add_agent("cid", name="Cid", statusLivechat="not-available")
    state.add_agent("dee", name="Dee", status="away")
    manager = sandbox.account("mgr", "livechat-manager")

    available = manager.get(
        "/api/v1/livechat/users/agent", params={"onlyAvailable": "true", "showIdleAgents": "false"}
    ).json()
    assert [user["username"] for user in available["users"]] == ["amy", "dee"]
    assert available["users"][0] == {
        "_id": available["users"][0]["_id"],
        "username": "amy",
        "name": "Amy",
        "status": "online",
        "statusLivechat": "available",
        "emails": [{"address": "amy@example.test", "verified": True}],
        "livechat": {"maxNumberSimultaneousChat": 3},
        "departments": [sales["_id"]],
    }
    assert available["users"][1]["livechat"] is None

    paged = manager.get("/api/v1/livechat/users/agent", params={"count": 1, "offset": 1}).json()
    assert [user["username"] for user in paged["users"]] == ["bea"]
    assert (paged["count"], paged["offset"], paged["total"]) == (1, 1, 4)


def test_departments_and_their_agents(launch: Launch) -> None:
    sandbox = launch()
    state = sandbox.state
    sales = state.add_department("Sales")
    closed = state.add_department("Archive", enabled=False)
    amy = state.add_agent("amy", departments=[sales["_id"], closed["_id"]])
    agent = sandbox.client(*state.add_account("viewer", ["livechat-agent"]))

    mine = agent.get(f"/api/v1/livechat/agents/{amy['_id']}/departments").json()["departments"]
    assert sorted(d["departmentName"] for d in mine) == ["Archive", "Sales"]
    enabled = agent.get(
        f"/api/v1/livechat/agents/{amy['_id']}/departments", params={"enabledDepartmentsOnly": "true"}
    ).json()["departments"]
    assert [(d["departmentId"], d["agentId"], d["departmentEnabled"]) for d in enabled] == [
        (sales["_id"], amy["_id"], True)
    ]
    listed = agent.get("/api/v1/livechat/department").json()
    assert [d["name"] for d in listed["departments"]] == ["Archive", "Sales"] and listed["total"] == 2
    members = agent.get(f"/api/v1/livechat/department/{sales['_id']}/agents").json()
    assert [a["username"] for a in members["agents"]] == ["amy"] and members["count"] == 1


def test_agent_status_changes_own_status_and_guards_others(launch: Launch) -> None:
    sandbox = launch(V8)
    state = sandbox.state
    other = state.add_agent("other")
    agent_id, token = state.add_account("me", ["user", "livechat-agent"], statusLivechat="available")
    me = sandbox.client(agent_id, token)

    assert me.post("/api/v1/livechat/agent.status", json={}).json() == {
        "status": "not-available",
        "success": True,
    }
    refused = me.post("/api/v1/livechat/agent.status", json={"agentId": other["_id"], "status": "not-available"})
    assert (refused.status_code, refused.json()) == (403, {"success": False, "error": "forbidden"})
    manager = sandbox.account("mgr", "livechat-manager")
    changed = manager.post("/api/v1/livechat/agent.status", json={"agentId": other["_id"], "status": "not-available"})
    assert changed.json()["status"] == "not-available"
    assert manager.post("/api/v1/livechat/agent.status", json={}).status_code == 404  # a manager is no agent
    assert me.post("/api/v1/livechat/agent.status", json={"status": "busy"}).json()["errorType"] == "invalid-params"


# -- the queue ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V7, V8])
def test_take_assigns_the_room_and_tells_listeners(launch: Launch, version: str) -> None:
    sandbox = launch(version)
    state = sandbox.state
    received = events_of(state)
    amy = state.add_agent("amy")
    room, inquiry = state.open_chat()
    bot = sandbox.account("svc", "bot", "livechat-manager")

    assert bot.get("/api/v1/livechat/inquiries.getOne", params={"roomId": room["_id"]}).json()["inquiry"]["status"] == (
        "queued"
    )
    reply = bot.post("/api/v1/livechat/inquiries.take", json={"inquiryId": inquiry["_id"], "userId": amy["_id"]})
    assert reply.status_code == 200
    if version == V8:
        assert reply.json() == {"success": True}
    else:
        assert reply.json()["inquiry"]["servedBy"]["_id"] == amy["_id"]
    assert [event_type for event_type, _ in received] == ["LivechatSessionQueued", "LivechatSessionTaken"]
    assert received[1][1]["servedBy"]["username"] == "amy"
    assert [r["_id"] for r in state.open_chats_of(amy["_id"])] == [room["_id"]]
    assert "lastRoutingTime" in state.users[amy["_id"]]
    taken = bot.get("/api/v1/livechat/inquiries.getOne", params={"roomId": room["_id"]}).json()["inquiry"]
    assert taken["status"] == "taken"


def test_take_errors_use_the_meteor_shape(launch: Launch) -> None:
    sandbox = launch(V7, accept_when_idle=False)
    state = sandbox.state
    offline = state.add_agent("off", status="offline")
    idle = state.add_agent("idle", status="away")
    busy = state.add_agent("amy")
    _, inquiry = state.open_chat()
    bot = sandbox.account("svc", "bot", "livechat-manager")

    def take(body: dict[str, Any]) -> httpx.Response:
        return bot.post("/api/v1/livechat/inquiries.take", json=body)

    def error_type(body: dict[str, Any]) -> str:
        reply = take(body)
        assert reply.status_code == 400
        return str(reply.json().get("errorType"))

    assert error_type({"inquiryId": "nope", "userId": busy["_id"]}) == "error-not-found"
    assert error_type({"inquiryId": inquiry["_id"], "userId": offline["_id"]}) == "error-agent-status-service-offline"
    assert error_type({"inquiryId": inquiry["_id"], "userId": idle["_id"]}) == "error-agent-status-service-offline"
    assert take({"inquiryId": inquiry["_id"], "userId": "ghost"}).json() == {
        "success": False,
        "error": "The user is invalid",
    }
    options = {"inquiryId": inquiry["_id"], "userId": busy["_id"], "options": {"clientAction": True}}
    assert error_type(options) == "invalid-params"  # 7.x schema has no `options`
    assert take({"inquiryId": inquiry["_id"], "userId": busy["_id"]}).status_code == 200
    taken = take({"inquiryId": inquiry["_id"], "userId": busy["_id"]}).json()
    assert taken == {
        "success": False,
        "error": "Inquiry already taken [error-inquiry-taken]",
        "errorType": "error-inquiry-taken",
        "details": {"method": "livechat:takeInquiry"},
    }


def test_take_accepts_idle_agents_and_options_on_8(launch: Launch) -> None:
    sandbox = launch(V8)
    idle = sandbox.state.add_agent("idle", status="away")
    _, inquiry = sandbox.state.open_chat()
    bot = sandbox.account("svc", "bot", "livechat-manager")
    body = {"inquiryId": inquiry["_id"], "userId": idle["_id"], "options": {"clientAction": True}}
    assert bot.post("/api/v1/livechat/inquiries.take", json=body).json() == {"success": True}


def test_queue_listings(launch: Launch) -> None:
    sandbox = launch()
    state = sandbox.state
    sales, support = state.add_department("Sales"), state.add_department("Support")
    state.open_chat(department=sales["_id"])
    state.open_chat(department=support["_id"])
    agent = sandbox.client(*state.add_account("amy", ["livechat-agent"]))
    state.link_agent(sales["_id"], "amy")
    manager = sandbox.account("mgr", "livechat-manager")

    mine = agent.get("/api/v1/livechat/inquiries.queuedForUser").json()
    assert [inquiry["department"] for inquiry in mine["inquiries"]] == [sales["_id"]]
    everything = manager.get("/api/v1/livechat/inquiries.queuedForUser").json()  # in no department: all
    assert everything["total"] == 2
    listed = manager.get("/api/v1/livechat/inquiries.list", params={"department": support["_id"]}).json()
    assert [set(inquiry) for inquiry in listed["inquiries"]] == [{"_id", "rid", "name", "ts", "status", "department"}]
    assert agent.get("/api/v1/livechat/inquiries.list").status_code == 403


# -- forwarding -----------------------------------------------------------------------------------


def test_forward_errors_are_plain_error_ids(launch: Launch) -> None:
    sandbox = launch()
    state = sandbox.state
    amy, off = state.add_agent("amy"), state.add_agent("off", status="offline")
    room, _ = state.open_chat()
    state.assign(room["_id"], "amy")
    closed, _ = state.open_chat()
    state.close_room(closed["_id"], closer="visitor")
    manager = sandbox.account("mgr", "livechat-manager")

    def error(body: dict[str, Any]) -> Any:
        reply = manager.post("/api/v1/livechat/room.forward", json=body)
        assert reply.status_code == 400 and "errorType" not in reply.json()
        return reply.json()["error"]

    assert error({"roomId": "nope", "userId": amy["_id"]}) == "error-invalid-room"
    assert error({"roomId": closed["_id"], "userId": amy["_id"]}) == "This_conversation_is_already_closed"
    assert error({"roomId": room["_id"], "userId": off["_id"]}) == "error-user-is-offline"
    assert error({"roomId": room["_id"], "userId": amy["_id"]}) == "error-selected-agent-room-agent-are-same"
    assert error({"roomId": room["_id"], "departmentId": "nope"}) == "error-invalid-department"
    assert error({"roomId": room["_id"]}) == "error-forwarding-chat"
    extra = manager.post("/api/v1/livechat/room.forward", json={"roomId": room["_id"], "agent": "amy"})
    assert extra.json()["errorType"] == "invalid-params"


def test_forward_to_an_agent_and_to_a_department(launch: Launch) -> None:
    sandbox = launch(V8)
    state = sandbox.state
    sales = state.add_department("Sales")
    amy, bob = state.add_agent("amy"), state.add_agent("bob")
    room, inquiry = state.open_chat()
    state.assign(room["_id"], "amy")
    received = events_of(state)
    manager = sandbox.account("mgr", "livechat-manager")

    to_bob = manager.post("/api/v1/livechat/room.forward", json={"roomId": room["_id"], "userId": bob["_id"]})
    assert to_bob.json() == {"success": True}
    assert [event_type for event_type, _ in received] == ["LivechatSessionTaken", "LivechatSessionForwarded"]
    forwarded = received[1][1]
    assert forwarded["servedBy"]["_id"] == bob["_id"] and forwarded["oldServedBy"]["_id"] == amy["_id"]
    assert state.open_chats_of(amy["_id"]) == [] and len(state.open_chats_of(bob["_id"])) == 1

    to_sales = manager.post("/api/v1/livechat/room.forward", json={"roomId": room["_id"], "departmentId": sales["_id"]})
    assert to_sales.json() == {"success": True}
    assert received[-1][0] == "LivechatSessionForwarded" and "servedBy" not in received[-1][1]
    requeued = state.inquiries[inquiry["_id"]]
    assert (requeued["status"], requeued["department"]) == ("queued", sales["_id"])


def test_closing_a_room_tells_listeners_and_drops_the_inquiry(launch: Launch) -> None:
    sandbox = launch()
    state = sandbox.state
    state.add_agent("amy")
    room, inquiry = state.open_chat()
    state.assign(room["_id"], "amy")
    received = events_of(state)
    closed = state.close_room(room["_id"])
    assert "open" not in closed and closed["closer"] == "user" and closed["closedBy"]["username"] == "amy"
    assert [event_type for event_type, _ in received] == ["LivechatSession"]
    assert inquiry["_id"] not in state.inquiries


def test_listeners_run_outside_the_lock_and_cannot_break_the_api(launch: Launch) -> None:
    sandbox = launch()
    state = sandbox.state
    lock_free: list[bool] = []

    def take_and_release() -> None:
        taken = state.lock.acquire(timeout=2)
        if taken:
            state.lock.release()
        lock_free.append(taken)

    def probe(event_type: str, room: dict[str, Any]) -> None:
        # Another thread can take the lock only if this listener was called outside it.
        other = threading.Thread(target=take_and_release)
        other.start()
        other.join()

    def broken(event_type: str, room: dict[str, Any]) -> None:
        raise RuntimeError("webhook receiver down")

    state.listeners += [broken, probe]
    amy = state.add_agent("amy")
    _, inquiry = state.open_chat()
    bot = sandbox.account("svc", "bot", "livechat-manager")
    body = {"inquiryId": inquiry["_id"], "userId": amy["_id"]}
    assert bot.post("/api/v1/livechat/inquiries.take", json=body).status_code == 200
    assert lock_free == [True, True]  # queued (test thread), taken (server thread)


# -- VoIP extensions (7.x only) -------------------------------------------------------------------


def test_extension_association(launch: Launch) -> None:
    sandbox = launch(V7)
    state = sandbox.state
    state.add_agent("amy")
    state.add_agent("bob", extension="2002")
    state.add_account("not-agent")
    admin = sandbox.account("admin", "admin")
    path = "/api/v1/omnichannel/agent/extension"

    assert admin.post(path, json={"username": "amy", "extension": "1001"}).json() == {"success": True}
    assert admin.get(f"{path}/amy").json()["extension"]["extension"] == "1001"
    in_use = admin.post(path, json={"username": "amy", "extension": "2002"})
    assert (in_use.status_code, in_use.json()) == (
        400,
        {"success": False, "error": "extension already in use 2002"},
    )
    missing = admin.post(path, json={"username": "not-agent", "extension": "3003"})
    assert missing.status_code == 404
    assert missing.json()["error"] == "User not found or does not have livechat-agent role"
    assert admin.delete(f"{path}/amy").json() == {"success": True}
    assert admin.get(f"{path}/amy").json() == {"success": False, "error": "Extension not found"}

    assert launch(V8).account("admin", "admin").get(f"{path}/amy").status_code == 404


# -- rate limits, faults, request log -------------------------------------------------------------


def test_rate_limit_answers_429_with_headers(launch: Launch) -> None:
    sandbox = launch(rate_limit_calls=2)
    manager = sandbox.account("mgr", "livechat-manager")
    path = "/api/v1/livechat/department"

    first, second, third = (manager.get(path) for _ in range(3))
    assert [first.headers["X-RateLimit-Remaining"], second.headers["X-RateLimit-Remaining"]] == ["1", "0"]
    assert third.status_code == 429
    assert third.headers["X-RateLimit-Limit"] == "2" and third.headers["X-RateLimit-Remaining"] == "0"
    assert int(third.headers["X-RateLimit-Reset"]) > time.time() * 1000  # an epoch in ms, in the future
    assert "Retry-After" not in third.headers
    error = third.json()["error"]
    assert re.fullmatch(
        r"Error, too many requests\. Please slow down\. You must wait \d+ seconds "
        r"before trying this endpoint again\. \[error-too-many-requests\]",
        error,
    )
    assert third.json() == {"success": False, "error": error}
    assert manager.get("/api/v1/livechat/users/agent").status_code == 200  # counted per route


def test_rate_limit_bypass_and_window_reset(launch: Launch) -> None:
    sandbox = launch(rate_limit_calls=1, rate_limit_window_ms=50)
    bot = sandbox.account("svc", "bot", "livechat-manager")
    replies = [bot.get("/api/v1/livechat/department") for _ in range(3)]
    assert [reply.status_code for reply in replies] == [200, 200, 200]
    assert "X-RateLimit-Limit" not in replies[0].headers

    manager = sandbox.account("mgr", "livechat-manager")
    assert [manager.get("/api/v1/livechat/department").status_code for _ in range(2)] == [200, 429]
    time.sleep(0.1)  # longer than the 50 ms window
    assert manager.get("/api/v1/livechat/department").status_code == 200


def test_injected_faults_and_their_bodies(launch: Launch) -> None:
    sandbox = launch(rate_limit_enabled=False)
    manager = sandbox.account("mgr", "livechat-manager")
    sandbox.state.inject("/api/v1/livechat/department", status=503, count=2)
    replies = [manager.get("/api/v1/livechat/department") for _ in range(3)]
    assert [reply.status_code for reply in replies] == [503, 503, 200]
    assert replies[0].json() == {"success": False, "error": "Service Unavailable"}

    sandbox.state.inject("/api/v1/livechat/", status=500)
    reply = manager.get("/api/v1/livechat/users/agent")
    assert (reply.status_code, reply.json()) == (500, {"success": False, "error": "Internal server error"})
    assert sandbox.client().get("/api/info").status_code == 200  # outside the prefix
    sandbox.state.clear_faults()
    assert manager.get("/api/v1/livechat/users/agent").status_code == 200


def test_a_delayed_request_does_not_hold_up_others(launch: Launch) -> None:
    sandbox = launch()
    delayed = sandbox.state.inject("/api/v1/livechat/department", status=None, count=1, delay=0.5)
    user_id, token = sandbox.state.add_account("svc", ["bot", "livechat-manager"])

    async def scenario() -> None:
        headers = {"X-User-Id": user_id, "X-Auth-Token": token}
        async with httpx.AsyncClient(base_url=sandbox.url, headers=headers) as client:
            slow = asyncio.create_task(client.get("/api/v1/livechat/department"))
            while delayed.remaining:  # until the server has the slow request in hand
                await asyncio.sleep(0.005)
            fast = await client.get("/api/info")
            assert fast.status_code == 200 and not slow.done()
            assert (await slow).status_code == 200

    asyncio.run(scenario())
    assert sandbox.state.log_lines() == ["GET /api/info > 200", "GET /api/v1/livechat/department > 200"]


def test_request_log_records_every_request(launch: Launch) -> None:
    sandbox = launch()
    state = sandbox.state
    amy = state.add_agent("amy")
    manager_id, token = state.add_account("mgr", ["livechat-manager"])
    manager = sandbox.client(manager_id, token)
    manager.get("/api/v1/livechat/rooms", params={"agents[]": amy["_id"], "open": "true", "count": "1"})
    manager.post("/api/v1/livechat/inquiries.take", json={"inquiryId": "nope", "userId": amy["_id"]})
    sandbox.client().get("/api/v1/me")

    assert state.log_lines() == [
        "GET /api/v1/livechat/rooms > 200",
        "POST /api/v1/livechat/inquiries.take > 400",
        "GET /api/v1/me > 401",
    ]
    rooms, take, anonymous = state.requests()
    assert rooms.query == {"agents[]": [amy["_id"]], "open": "true", "count": "1"}
    assert (rooms.user_id, rooms.body) == (manager_id, None)
    assert take.body == {"inquiryId": "nope", "userId": amy["_id"]}
    assert anonymous.user_id is None and rooms.at <= take.at <= anonymous.at
    assert state.calls("POST", "/api/v1/livechat/inquiries.take") == 1
    state.clear_log()
    assert state.log_lines() == []
