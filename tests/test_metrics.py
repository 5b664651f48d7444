import httpx

from bridge import endpoints
from bridge.app import create_app
from bridge.metrics import Metrics
from bridge.rocketchat import RocketChat
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, load_fixture


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics").text


def test_counts_from_any_process_are_exposed_by_the_web_process(rc_settings, rc_state, redis_client):
    rc_state.inject("/api/v1/me", status=503, count=1)
    worker_side = Metrics(redis_client)
    rc = RocketChat(rc_settings, metrics=worker_side)
    endpoints.me(rc)
    rc.close()
    worker_side.inc("omnibridge_directory_lookups", outcome="stale")
    worker_side.observe("omnibridge_routing_wait_seconds", 0.3)
    worker_side.flush()
    with ServerThread(create_app(rc_settings)) as web:
        text = scrape(web.url)
    assert 'omnibridge_rocketchat_calls_total{route="GET /api/v1/me",status="503"} 1.0' in text
    assert 'omnibridge_rocketchat_calls_total{route="GET /api/v1/me",status="200"} 1.0' in text
    assert 'omnibridge_directory_lookups_total{outcome="stale"} 1.0' in text
    assert 'omnibridge_routing_wait_seconds_bucket{le="0.25"} 0.0' in text
    assert 'omnibridge_routing_wait_seconds_bucket{le="0.5"} 1.0' in text
    assert "omnibridge_routing_wait_seconds_count 1.0" in text


def test_webhooks_are_counted_by_type_and_status_without_a_redis_call_each(settings, redis_client):
    with ServerThread(create_app(settings)) as web:
        headers = {"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
        for _ in range(3):
            httpx.post(
                f"{web.url}/webhooks/livechat", json=load_fixture("LivechatSessionQueued__basic"), headers=headers
            )
        httpx.post(f"{web.url}/webhooks/livechat", content=b"{}", headers=headers)
        httpx.post(f"{web.url}/webhooks/livechat", json={}, headers={})
        text = scrape(web.url)  # a scrape flushes this process's counters first
    assert 'omnibridge_webhooks_total{status="200",type="LivechatSessionQueued"} 3.0' in text
    assert 'omnibridge_webhooks_total{status="400",type="invalid"} 1.0' in text
    assert 'omnibridge_webhooks_total{status="403",type="unknown"} 1.0' in text
    assert "omnibridge_chats_waiting 0.0" in text
    assert 'omnibridge_jobs{queue="bridge",state="queued"} 1.0' in text
    assert 'omnibridge_jobs{queue="bridge-voice",state="queued"} 0.0' in text


def test_unknown_types_are_counted_under_one_fixed_label(settings, redis_client):
    hostile = ['Evil"} 1e9\nomnibridge_webhooks_total{type="x', "LivechatSessionOnHold", "x" * 5000]
    with ServerThread(create_app(settings)) as web:
        headers = {"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
        for event_type in hostile:
            answer = httpx.post(f"{web.url}/webhooks/livechat", json={"type": event_type}, headers=headers)
            assert answer.json()["outcome"] == "ignored"
        text = scrape(web.url)
    assert 'omnibridge_webhooks_total{status="200",type="unknown"} 3.0' in text
    assert "Evil" not in text and "OnHold" not in text and "xxxx" not in text, "the sender's type is never a label"


def test_metrics_answer_503_without_redis(settings, redis_server):
    with ServerThread(create_app(settings)) as web:
        redis_server.stop()
        assert httpx.get(f"{web.url}/metrics").status_code == 503


def test_increments_survive_a_failed_flush(redis_client, redis_server):
    metrics = Metrics(redis_client, auto_flush=False)
    metrics.inc("omnibridge_reservations", result="reserved")
    redis_server.stop()
    metrics.flush()
    redis_server.start()
    metrics.flush()
    assert Metrics(redis_client).totals() == {("omnibridge_reservations", (("result", "reserved"),)): 1.0}


def test_the_rate_limits_learned_from_rocketchat_are_shown_per_route(rc_settings, rc_state, redis_client):
    from bridge.ratelimits import RateLimits
    from bridge.settings import Secret

    limited_id, limited_token = rc_state.add_account("limited", ["user", "livechat-manager"])  # no bot role
    limited = RocketChat(
        rc_settings.replace(rocketchat_user_id=limited_id, rocketchat_auth_token=Secret(limited_token)),
        limits=RateLimits(redis_client),
    )
    endpoints.me(limited)
    bot = RocketChat(rc_settings, limits=RateLimits(redis_client))
    endpoints.inquiry_for_room(bot, "no-such-room")
    for client in (limited, bot):
        client.close()
    with ServerThread(create_app(rc_settings)) as server:
        text = scrape(server.url)
    assert 'omnibridge_rocketchat_rate_limit{route="GET /api/v1/me"} 10.0' in text
    assert 'omnibridge_rocketchat_rate_limit_remaining{route="GET /api/v1/me"} 9.0' in text
    assert 'omnibridge_rocketchat_rate_limit{route="GET /api/v1/livechat/inquiries.getOne"} -1.0' in text


def test_metrics_are_open_by_default_and_need_the_bearer_token_once_one_is_set(settings, redis_client):
    from bridge import logs
    from bridge.settings import Secret

    with ServerThread(create_app(settings)) as web:
        assert httpx.get(f"{web.url}/metrics").status_code == 200, "unauthenticated by default, as Prometheus scrapes"

    token = "metrics-token-3f9c2a71"
    guarded = settings.replace(metrics_token=Secret(token))
    with ServerThread(create_app(guarded)) as web:
        missing = httpx.get(f"{web.url}/metrics")
        other_scheme = httpx.get(f"{web.url}/metrics", headers={"Authorization": f"Basic {token}"})
        wrong = httpx.get(f"{web.url}/metrics", headers={"Authorization": "Bearer not-the-token"})
        prefix = httpx.get(f"{web.url}/metrics", headers={"Authorization": f"Bearer {token[:-1]}"})
        right = httpx.get(f"{web.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    for refused in (missing, other_scheme):
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json() == {"ok": False, "error": "Authorization: Bearer <METRICS_TOKEN> is required"}
    for refused in (wrong, prefix):
        assert refused.status_code == 403 and refused.json() == {"ok": False, "error": "wrong metrics token"}
    assert right.status_code == 200 and "omnibridge_chats_waiting" in right.text
    assert token not in missing.text + wrong.text
    # A secret: never in the settings' repr, masked in logs.
    assert token not in repr(guarded)
    assert token in logs.secrets_of(guarded)


def test_the_metrics_token_is_read_from_the_environment():
    from bridge.settings import Settings

    assert not Settings.from_env({}).metrics_token
    assert Settings.from_env({"METRICS_TOKEN": " t0ken-for-prometheus "}).metrics_token == "t0ken-for-prometheus"
