"""The sandbox as a product: the sample team, the simulated visitors and agents, `omnibridge sandbox` and
`omnibridge up` without ROCKETCHAT_URL, over real HTTP (a receiving server, the sandbox, the bridge's processes)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from bridge.cli import main
from bridge.sandbox.instance import MessagePoster, SandboxInstance
from bridge.sandbox.livechat import take_inquiry
from bridge.sandbox.simulation import Simulation
from bridge.sandbox.state import SandboxState
from bridge.sandbox.team import SALES, SUPPORT, seed_team
from bridge.sandbox.webhooks import WebhookPoster
from tests.processes import INHERITED, ROOT, free_port
from tests.support import ServerThread, wait_for
from tests.test_sandbox_webhooks import Receiver

TOKEN = "sandbox-up-token-81c2"
AVAILABLE = "/api/v1/omnichannel/agents/available"


class Clock:
    """The simulation's clock, moved by the test: what is due happens at `step()`, not after real seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with ServerThread(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as server:
        receiver.url = f"{server.url}/hook"
        yield receiver


def bodies(receiver: Receiver, room_id: str) -> list[dict[str, object]]:
    return [request.body for request in receiver.requests if request.body["_id"] == room_id]


def run_env(**extra: str) -> dict[str, str]:
    """A minimal environment: nothing of the developer's ROCKETCHAT_* or REDIS_URL leaks in."""
    return {**{name: os.environ[name] for name in INHERITED if name in os.environ}, "PYTHONPATH": str(ROOT), **extra}


# -- the sample team ------------------------------------------------------------------------------


def test_the_sample_team_grows_with_available_agents_alternating_departments() -> None:
    state = SandboxState(seed=1)
    team = seed_team(state, agents=8)
    assert list(team) == ["ana", "bo", "cy", "dee", "eve", "fay", "agent-7", "agent-8"]
    extra = [state.users[team[name]] for name in ("agent-7", "agent-8")]
    assert [(u["status"], u["statusLivechat"], u["livechat"]["maxNumberSimultaneousChat"]) for u in extra] == [
        ("online", "available", 3),
        ("online", "available", 4),
    ]
    assert [link["departmentId"] for link in state.links(agent_id=team["agent-7"])] == [SUPPORT]
    assert [link["departmentId"] for link in state.links(agent_id=team["agent-8"])] == [SALES]
    assert list(seed_team(SandboxState(seed=1), agents=2)) == ["ana", "bo"]


# -- the simulation -------------------------------------------------------------------------------


def test_the_same_seed_opens_the_same_chats() -> None:
    def plans(seed: int) -> list[object]:
        state = SandboxState(seed=seed)
        seed_team(state)
        simulation = Simulation(state, [SALES, SUPPORT], rate_per_minute=60, seed=seed, clock=Clock())
        simulation.step(0.0)
        simulation.step(120.0)
        assert simulation.counts["opened"] == len(simulation.plans) == len(state.inquiries)
        return list(simulation.plans.values())

    first = plans(4)
    assert first == plans(4) and first != plans(5)
    assert 60 < len(first) < 200, "about 60 chats a minute for two minutes"
    assert {plan.department for plan in first} == {SALES, SUPPORT}


def test_agents_answer_then_close_the_chats_they_take_and_each_step_is_posted(
    rc_state: SandboxState, receiver: Receiver
) -> None:
    team = seed_team(rc_state)
    clock = Clock()
    poster = WebhookPoster(rc_state, receiver.url, TOKEN, timeout=2.0, retry_delay=0.05).attach()
    messages = MessagePoster(receiver.url, TOKEN)
    simulation = Simulation(
        rc_state, [SALES, SUPPORT], rate_per_minute=30, seed=9, send_message=messages, clock=clock
    ).attach()
    try:
        simulation.step(0.0)
        clock.now = 30.0
        simulation.step()
        assert poster.drain(5.0)
        opened = list(simulation.plans)
        assert opened and simulation.counts["opened"] == len(opened)

        # The bridge's part, as `POST livechat/inquiries.take` does it: bo serves both departments.
        for inquiry in list(rc_state.inquiries.values()):
            take_inquiry(rc_state, inquiry["_id"], team["bo"])
        assert poster.drain(5.0)
        clock.now = 34.0  # every answer comes within 4 s of the take
        simulation.step()
        assert simulation.counts["answered"] == len(opened)
        clock.now = 50.0  # every chat ends within 16 s of the take
        simulation.step()
        assert poster.drain(5.0)
    finally:
        simulation.detach()
        poster.close(flush=False)
        messages.close()

    assert simulation.counts["closed"] == len(opened)
    assert {request.headers["x-rocketchat-livechat-token"] for request in receiver.requests} == {TOKEN}
    for room_id in opened:
        queued, taken, message, closed = bodies(receiver, room_id)
        assert [queued["type"], taken["type"], message["type"], closed["type"]] == [
            "LivechatSessionQueued",
            "LivechatSessionTaken",
            "Message",
            "LivechatSession",
        ]
        assert message["messages"][0]["agentId"] == team["bo"]  # type: ignore[index]
        assert (closed["closer"], closed["closedBy"]["username"]) == ("user", "bo")  # type: ignore[index]
        assert "open" not in rc_state.rooms[room_id]
        assert rc_state.messages_of(room_id)[-1]["u"]["username"] == "bo"


def test_a_visitor_nobody_serves_leaves_after_their_patience(rc_state: SandboxState) -> None:
    seed_team(rc_state)
    simulation = Simulation(rc_state, [SALES], rate_per_minute=60, patience_seconds=30, seed=2, clock=Clock())
    simulation.step(0.0)
    simulation.step(10.0)
    early = list(simulation.plans)
    assert early and all(rc_state.rooms[room_id]["open"] for room_id in early)
    simulation.step(45.0)
    assert all(rc_state.rooms[room_id]["closer"] == "visitor" for room_id in early)
    assert simulation.counts["abandoned"] >= len(early)
    assert not any(inquiry["rid"] in early for inquiry in rc_state.inquiries.values())


def test_a_running_sandbox_posts_its_visitors_chats_with_the_token(receiver: Receiver) -> None:
    sandbox = SandboxInstance(rate_per_minute=600, seed=3, webhook_url=receiver.url, webhook_token=TOKEN).start()
    try:
        wait_for(lambda: len(receiver.requests) >= 3, timeout=20)
        me = httpx.get(
            f"{sandbox.url}/api/v1/me",
            headers={"X-User-Id": sandbox.account.user_id, "X-Auth-Token": sandbox.account.token},
        )
    finally:
        sandbox.stop()
    assert set(receiver.types()) == {"LivechatSessionQueued"}
    assert {request.headers["x-rocketchat-livechat-token"] for request in receiver.requests} == {TOKEN}
    assert me.status_code == 200 and "bot" in me.json()["roles"]


# -- the commands ---------------------------------------------------------------------------------


def test_the_sandbox_never_posts_beyond_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandbox", "--webhook-url", "http://192.0.2.10/webhooks/livechat"], env={}) == 1
    assert "loopback" in capsys.readouterr().err
    assert main(["up", "--host", "192.0.2.10"], env={}) == 1
    out, err = capsys.readouterr()
    assert out.startswith("omnibridge: SANDBOX") and "loopback" in err


class Running:
    """A command as a real subprocess, its output collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        assert self.process.stdout is not None
        stdout = self.process.stdout
        self.reader = threading.Thread(target=lambda: self.lines.extend(stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"exited with {self.process.returncode}:\n{self.output}")
        return True

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=40)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.reader.join(timeout=5)
            assert self.process.stdout is not None
            self.process.stdout.close()
        return status


def test_omnibridge_sandbox_serves_the_team_and_posts_webhooks(receiver: Receiver) -> None:
    args = ["sandbox", "--port", "0", "--rate", "600", "--seed", "1", "--webhook-url", receiver.url]
    running = Running(args, run_env(ROCKETCHAT_WEBHOOK_TOKEN=TOKEN))
    try:
        found = wait_for(lambda: running.alive() and re.search(r"ROCKETCHAT_URL=(\S+) .*\n", running.output), 30)
        bridge_env = dict(pair.split("=", 1) for pair in found.group(0).split())  # type: ignore[union-attr]
        answer = httpx.get(
            bridge_env["ROCKETCHAT_URL"] + AVAILABLE,
            headers={
                "X-User-Id": bridge_env["ROCKETCHAT_USER_ID"],
                "X-Auth-Token": bridge_env["ROCKETCHAT_AUTH_TOKEN"],
            },
        )
        wait_for(lambda: "LivechatSessionQueued" in receiver.types(), timeout=20)
    finally:
        status = running.stop()
    assert status == 0, running.output
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"agents", "offset", "count", "total", "success"}
    assert body["total"] == 6 and {agent["username"] for agent in body["agents"]} == {
        "ana",
        "bo",
        "cy",
        "dee",
        "eve",
        "fay",
    }
    assert "ROCKETCHAT_CALLS_PER_MINUTE" not in bridge_env, "the bridge learns the limits from Rocket.Chat"
    assert receiver.requests[0].headers["x-rocketchat-livechat-token"] == TOKEN
    assert TOKEN not in running.output
    assert running.output.rstrip().endswith("omnibridge sandbox: stopped")


def routed(port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return 0.0
    found = re.search(r'omnibridge_routing_decisions_total\{kind="chat",outcome="routed"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
def test_up_without_rocketchat_routes_sandbox_chats_and_stops_cleanly() -> None:
    port = free_port()
    args = ["up", "--port", str(port), "--rate", "180", "--seed", "7", "--strategy", "load_rotation"]
    running = Running(args, run_env(LOG_LEVEL="WARNING"))
    try:
        wait_for(lambda: running.alive() and routed(port) > 0, timeout=60, interval=0.5)
    finally:
        status = running.stop()
    output = running.output
    assert status == 0, output
    assert output.startswith("omnibridge: SANDBOX"), output
    assert "set ROCKETCHAT_URL" in output and "routing strategy load_rotation" in output
    assert f"live view: http://127.0.0.1:{port}/" in output
    assert output.rstrip().endswith("omnibridge: stopped")
