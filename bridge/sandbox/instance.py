"""One running sandbox, as `omnibridge sandbox` and `omnibridge up` (without ROCKETCHAT_URL) run it.

The same pieces the tests use, put together: a `SandboxState` with the sample team and the bridge's service
account, its `SandboxServer` on 127.0.0.1, a `WebhookPoster` that posts the livechat webhooks to the bridge, and
the `Simulation` of visitors and agents.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from typing import Any

import httpx

from bridge.sandbox.server import SandboxServer
from bridge.sandbox.simulation import Simulation
from bridge.sandbox.state import SandboxState
from bridge.sandbox.team import DEPARTMENTS, SERVICE_ROLES, add_service_account, describe_team, seed_team
from bridge.sandbox.webhooks import WebhookPoster

VERSION = "7.13.9"  # a 7.x server: the bridge reads `omnichannel/agents/available`, as on most deployments

log = logging.getLogger(__name__)


class SandboxInstance:
    def __init__(
        self,
        *,
        port: int = 0,
        agents: int = 6,
        rate_per_minute: float = 30.0,
        seed: int | None = None,
        webhook_url: str | None = None,
        webhook_token: str = "",
        version: str = VERSION,
    ) -> None:
        self.state = SandboxState(version, seed=seed)
        self.team = seed_team(self.state, agents)
        self.account = add_service_account(self.state)
        self.server = SandboxServer(self.state, port=port)
        self.webhook_url = webhook_url
        self.webhook_token_set = bool(webhook_token)
        self.seed = seed
        self.poster = WebhookPoster(self.state, webhook_url, webhook_token) if webhook_url else None
        self.messages = MessagePoster(webhook_url, webhook_token) if webhook_url else None
        self.simulation = Simulation(
            self.state, list(DEPARTMENTS), rate_per_minute=rate_per_minute, seed=seed, send_message=self.messages
        )
        self._traffic_stopped = False

    @property
    def url(self) -> str:
        return self.server.url

    def bridge_env(self) -> dict[str, str]:
        """What a bridge process needs to talk to this sandbox as its service account."""
        return {
            "ROCKETCHAT_URL": self.url,
            "ROCKETCHAT_USER_ID": self.account.user_id,
            "ROCKETCHAT_AUTH_TOKEN": self.account.token,
        }

    def summary(self) -> list[str]:
        """What `omnibridge sandbox` prints: the server, the team, the traffic, the webhooks, the bridge's account."""
        lines = [f"omnibridge sandbox: a simulated Rocket.Chat {self.state.version} on {self.url} (loopback only)"]
        lines += ["team (Sales and Support):", *(f"  {line}" for line in describe_team(self.state))]
        rate = self.simulation.rate_per_minute
        lines.append(f"visitors: about {rate:g} chats per minute (seed {self.seed}); agents answer, then close them")
        if self.webhook_url:
            token = "with" if self.webhook_token_set else "WITHOUT"
            header = "the X-RocketChat-Livechat-Token header (ROCKETCHAT_WEBHOOK_TOKEN)"
            lines.append(f"webhooks: to {self.webhook_url}, {token} {header}")
        else:
            lines.append("webhooks: none (no --webhook-url); a bridge finds queued chats with livechat/inquiries.list")
        lines.append(f"the bridge's service account (roles {', '.join(SERVICE_ROLES)}); for the bridge:")
        lines.append("  " + " ".join(f"{name}={value}" for name, value in self.bridge_env().items()))
        return lines

    def start(self) -> SandboxInstance:
        self.server.start()
        if self.poster is not None:
            self.poster.attach()
        url = self.webhook_url
        # Visitors come once the webhook receiver listens, so the first chats are not posted into the void.
        self.simulation.start(ready=(lambda: _listening(url)) if url else None)
        return self

    def stop_traffic(self) -> None:
        """No more visitors, answers or webhooks (undelivered ones are dropped); the API still answers."""
        if self._traffic_stopped:
            return
        self._traffic_stopped = True
        self.simulation.stop()
        if self.poster is not None:
            self.poster.close(timeout=2.0, flush=False)
        if self.messages is not None:
            self.messages.close()

    def stop(self) -> None:
        self.stop_traffic()
        self.server.stop()


class MessagePoster:
    """Posts an agent's `Message` webhook once, as `WebhookPoster` posts room events (JSON, the token header).

    `WebhookPoster` posts only the room events `SandboxState` emits. A lost agent message only means the bridge's
    no-answer clock keeps running, so one attempt is enough here.
    """

    def __init__(self, url: str, token: str, timeout: float = 5.0) -> None:
        self.url = url
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["X-RocketChat-Livechat-Token"] = token
        self._client = httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)

    def __call__(self, body: dict[str, Any]) -> None:
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            status = self._client.post(self.url, content=content, headers=self._headers).status_code
        except httpx.TransportError as error:
            log.warning("agent message webhook for room %s not delivered: %s", body["_id"], type(error).__name__)
            return
        if status != 200:
            log.warning("agent message webhook for room %s answered %s", body["_id"], status)

    def close(self) -> None:
        self._client.close()


def webhook_url_for(host: str, port: int) -> str:
    """The webhook URL of a web process listening on `host`, as the sandbox reaches it: over loopback only."""
    if host in ("", "0.0.0.0", "::"):
        return f"http://127.0.0.1:{port}/webhooks/livechat"
    if host != "localhost":
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is None or not address.is_loopback:
            raise ValueError(f"the sandbox posts webhooks to loopback only, not to {host}")
        host = f"[{host}]" if address.version == 6 else host
    return f"http://{host}:{port}/webhooks/livechat"


def _listening(url: str) -> bool:
    parsed = httpx.URL(url)
    try:
        with socket.create_connection((parsed.host, parsed.port or 80), timeout=0.5):
            return True
    except OSError:
        return False
