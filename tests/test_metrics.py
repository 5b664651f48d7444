import httpx

from bridge import endpoints
from bridge.app import create_app
from bridge.metrics import Metrics
from bridge.rocketchat import RocketChat
from tests.support import ServerThread


def test_counts_from_any_process_are_exposed_by_the_web_process(rc_settings, rc_state, redis_client):
    rc_state.inject("/api/v1/me", status=503, count=1)
    rc = RocketChat(rc_settings, metrics=Metrics(redis_client))
    endpoints.me(rc)
    rc.close()
    Metrics(redis_client).inc("omnibridge_directory_lookups", outcome="stale")
    with ServerThread(create_app(rc_settings)) as web:
        text = httpx.get(f"{web.url}/metrics").text
    assert 'omnibridge_rocketchat_calls_total{route="GET /api/v1/me",status="503"} 1.0' in text
    assert 'omnibridge_rocketchat_calls_total{route="GET /api/v1/me",status="200"} 1.0' in text
    assert 'omnibridge_directory_lookups_total{outcome="stale"} 1.0' in text


def test_metrics_answer_503_without_redis(settings, redis_server):
    with ServerThread(create_app(settings)) as web:
        redis_server.stop()
        assert httpx.get(f"{web.url}/metrics").status_code == 503
