"""The Rocket.Chat client against the double over real HTTP: auth, errors per version, 429, retries, paging."""

import time

import pytest

from bridge import endpoints
from bridge.errors import (
    CredentialsRejected,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestRejected,
    RocketChatUnavailable,
)
from bridge.ratelimits import RateLimits
from bridge.rocketchat import RocketChat, error_type_of
from bridge.settings import Secret
from tests.team import seed_team

AVAILABLE = "/api/v1/omnichannel/agents/available"


@pytest.fixture
def rc(rc_settings):
    client = RocketChat(rc_settings)
    yield client
    client.close()


def test_a_personal_access_token_authenticates(rc, service_account):
    assert endpoints.me(rc)["_id"] == service_account.user_id
    assert endpoints.server_version(rc) == "7.13.9"


def test_username_and_password_log_in_and_log_in_again_once_after_a_401(rc_state, rc_settings):
    user_id, _ = rc_state.add_account("svc", ["bot", "livechat-manager"], password="pw-8c1d")
    settings = rc_settings.replace(
        rocketchat_user_id=None,
        rocketchat_auth_token=Secret(""),
        rocketchat_username="svc",
        rocketchat_password=Secret("pw-8c1d"),
    )
    rc = RocketChat(settings)
    assert endpoints.me(rc)["_id"] == user_id
    rc._token = "expired-token"  # what a server-side logout leaves behind
    assert endpoints.me(rc)["_id"] == user_id
    assert rc_state.log_lines() == [
        "POST /api/v1/login > 200",
        "GET /api/v1/me > 200",
        "GET /api/v1/me > 401",
        "POST /api/v1/login > 200",
        "GET /api/v1/me > 200",
    ]
    rc.close()


@pytest.mark.parametrize("version", ["7.13.9", "8.8.1"])
def test_rejected_credentials_say_which_variables_to_check(rc_settings, rc_state, version):
    rc_state.version = version
    rc = RocketChat(rc_settings.replace(rocketchat_auth_token=Secret("not-the-token")))
    with pytest.raises(CredentialsRejected) as raised:
        endpoints.me(rc)
    assert "ROCKETCHAT_USER_ID/ROCKETCHAT_AUTH_TOKEN" in str(raised.value)
    assert "not-the-token" not in str(raised.value)
    rc.close()


def test_a_wrong_password_is_reported_as_rejected_credentials(rc_state, rc_settings):
    rc_state.add_account("svc", ["bot"], password="right")
    rc = RocketChat(
        rc_settings.replace(
            rocketchat_user_id=None,
            rocketchat_auth_token=Secret(""),
            rocketchat_username="svc",
            rocketchat_password=Secret("wrong"),
        )
    )
    with pytest.raises(CredentialsRejected) as raised:
        endpoints.me(rc)
    assert "ROCKETCHAT_USERNAME/ROCKETCHAT_PASSWORD" in str(raised.value)
    rc.close()


@pytest.mark.parametrize("version", ["7.13.9", "8.8.1"])
def test_a_403_names_the_missing_permission(rc_state, rc_settings, version):
    rc_state.version = version
    user_id, token = rc_state.add_account("plain.agent", ["user", "livechat-agent"])
    rc = RocketChat(rc_settings.replace(rocketchat_user_id=user_id, rocketchat_auth_token=Secret(token)))
    with pytest.raises(PermissionDenied) as raised:
        rc.request("POST", "/api/v1/livechat/room.forward", json={"roomId": "r1", "userId": "u1"})
    assert raised.value.permission.startswith("transfer-livechat-guest")
    assert "transfer-livechat-guest" in str(raised.value)
    assert rc_state.calls("POST", "/api/v1/livechat/room.forward") == 1, "a 403 is permanent: no retry"
    rc.close()


def test_a_plain_user_may_not_list_agents(rc_state, rc_settings):
    user_id, token = rc_state.add_account("nobody", ["user"])
    rc = RocketChat(rc_settings.replace(rocketchat_user_id=user_id, rocketchat_auth_token=Secret(token)))
    with pytest.raises(PermissionDenied) as raised:
        endpoints.livechat_agents(rc)
    assert "edit-omnichannel-contact" in raised.value.permission
    rc.close()


def test_agents_available_needs_the_admin_only_voip_permission(rc_state, rc_settings):
    user_id, token = rc_state.add_account("manager", ["user", "livechat-manager"])
    rc = RocketChat(rc_settings.replace(rocketchat_user_id=user_id, rocketchat_auth_token=Secret(token)))
    with pytest.raises(PermissionDenied) as raised:
        endpoints.available_agents(rc)
    assert raised.value.permission == "manage-agent-extension-association"
    rc.close()


def test_agents_available_is_404_on_8x(rc_state, rc):
    rc_state.version = "8.8.1"
    with pytest.raises(NotFound):
        endpoints.available_agents(rc)


def test_a_429_is_not_waited_out_it_says_when_to_come_back(rc_state, rc_settings):
    rc_state.rate_limit_calls, rc_state.rate_limit_window_ms = 2, 1500
    user_id, token = rc_state.add_account("limited", ["user", "livechat-manager"])  # no bot role: rate limited
    rc = RocketChat(rc_settings.replace(rocketchat_user_id=user_id, rocketchat_auth_token=Secret(token)))
    endpoints.me(rc)
    endpoints.me(rc)
    started = time.monotonic()
    with pytest.raises(RateLimited) as raised:
        endpoints.me(rc)
    assert time.monotonic() - started < 0.5, "the client does not sleep until the reset"
    assert 0.5 < raised.value.retry_after <= 2.5, "retry_after comes from X-RateLimit-Reset"
    assert "bot role" in str(raised.value)
    time.sleep(raised.value.retry_after)
    endpoints.me(rc)
    assert rc_state.log_lines() == ["GET /api/v1/me > 200"] * 2 + ["GET /api/v1/me > 429", "GET /api/v1/me > 200"]
    rc.close()


def test_a_limit_learned_from_the_headers_is_kept_by_every_process_without_a_429(rc_state, rc_settings, redis_client):
    rc_state.rate_limit_calls, rc_state.rate_limit_window_ms = 2, 1500
    user_id, token = rc_state.add_account("limited", ["user", "livechat-manager"])
    settings = rc_settings.replace(rocketchat_user_id=user_id, rocketchat_auth_token=Secret(token))
    first, second = (
        RocketChat(settings, limits=RateLimits(redis_client)),
        RocketChat(settings, limits=RateLimits(redis_client)),
    )
    endpoints.me(first)  # the probe: learns "2 per window, 1 left"
    endpoints.me(second)
    with pytest.raises(RateLimited) as raised:
        endpoints.me(first)  # none left: not sent at all
    assert raised.value.status is None, "refused here, not by Rocket.Chat"
    assert rc_state.log_lines() == ["GET /api/v1/me > 200"] * 2
    time.sleep(raised.value.retry_after)
    endpoints.me(second)  # a new window: probed and learned again
    assert rc_state.log_lines() == ["GET /api/v1/me > 200"] * 3
    first.close()
    second.close()


def test_a_429_anyway_blocks_the_route_for_every_process(rc_state, rc_settings, redis_client):
    rc_state.rate_limit_calls, rc_state.rate_limit_window_ms = 1, 1000
    user_id, token = rc_state.add_account("limited", ["user", "livechat-manager"])
    settings = rc_settings.replace(rocketchat_user_id=user_id, rocketchat_auth_token=Secret(token))
    first, second = (
        RocketChat(settings, limits=RateLimits(redis_client)),
        RocketChat(settings, limits=RateLimits(redis_client)),
    )
    other_client = RocketChat(settings)  # another client of the same account and IP, which the bridge cannot see
    endpoints.me(other_client)
    with pytest.raises(RateLimited) as raised:
        endpoints.me(first)  # a 429: blocks the route for every process until its reset
    assert raised.value.status == 429
    with pytest.raises(RateLimited):
        endpoints.me(second)  # not sent
    assert rc_state.log_lines() == ["GET /api/v1/me > 200", "GET /api/v1/me > 429"]
    for client in (first, second, other_client):
        client.close()


def test_an_account_that_bypasses_the_limit_is_learned_as_unlimited(rc, rc_state, redis_client):
    limits = RateLimits(redis_client)
    rc.limits = limits
    endpoints.me(rc)
    assert limits.known() == {"GET /api/v1/me": {"mode": "unlimited"}}


def test_server_errors_are_retried_with_backoff(rc_state, rc):
    rc_state.inject("/api/v1/me", status=503, count=2)
    endpoints.me(rc)
    assert rc_state.log_lines() == ["GET /api/v1/me > 503", "GET /api/v1/me > 503", "GET /api/v1/me > 200"]


def test_retries_are_bounded(rc_state, rc):
    rc_state.inject("/api/v1/me", status=500)
    with pytest.raises(RocketChatUnavailable) as raised:
        endpoints.me(rc)
    assert "after 4 attempts" in str(raised.value)
    assert rc_state.calls("GET", "/api/v1/me") == 4


def test_a_timeout_is_not_retried_since_rocketchat_may_have_applied_it(rc_state, rc_settings):
    rc_state.inject("/api/v1/me", status=None, count=1, delay=1.5)
    rc = RocketChat(rc_settings.replace(rocketchat_timeout=1.0))
    with pytest.raises(RocketChatUnavailable) as raised:
        endpoints.me(rc)
    assert "may have applied it" in str(raised.value)
    assert endpoints.me(rc)["username"] == "omnibridge"
    rc.close()


def test_a_400_keeps_rocketchats_error_type(rc_state, rc):
    with pytest.raises(RequestRejected) as raised:
        rc.request(
            "POST",
            "/api/v1/livechat/inquiries.take",
            json={"inquiryId": "nope", "userId": rc.settings.rocketchat_user_id},
        )
    assert raised.value.error_type == "error-not-found"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {"success": False, "error": "Inquiry not found [error-not-found]", "errorType": "error-not-found"},
            "error-not-found",
        ),
        (
            {
                "success": False,
                "error": "User does not have the permissions required for this action [error-forbidden]",
            },
            "error-forbidden",
        ),
        ({"success": False, "error": "error-invalid-room"}, "error-invalid-room"),
        ({"success": False, "error": "The user is invalid"}, None),
        ({"status": "error", "message": "You must be logged in to do this."}, None),
    ],
)
def test_error_type_is_read_from_every_body_shape(body, code):
    assert error_type_of(body) == code


def test_agents_available_pages_until_total_without_trusting_count(rc_state, rc):
    for n in range(130):
        rc_state.add_agent(f"agent{n:03}")
    agents = endpoints.available_agents(rc)
    assert len(agents) == 130 and len({a.id for a in agents}) == 130
    # Rocket.Chat does not enforce count here: the first page already held all 130.
    assert rc_state.calls("GET", AVAILABLE) == 1


def test_livechat_users_agent_pages_when_count_is_enforced(rc_state, rc):
    for n in range(130):
        rc_state.add_agent(f"agent{n:03}")
    assert len(endpoints.livechat_agents(rc)) == 130
    assert rc_state.calls("GET", "/api/v1/livechat/users/agent") == 2


def test_department_members(rc_state, rc):
    ids = seed_team(rc_state)
    members = endpoints.department_members(rc)
    assert sorted(members["dept-sales"]) == sorted([ids["ana"], ids["bo"], ids["eve"]])
    assert sorted(members["dept-support"]) == sorted([ids["bo"], ids["cy"], ids["dee"], ids["fay"]])


def test_the_documented_agent_shape_is_accepted_too():
    # The public docs page shows {"agent": {...}}; the real answer is {"agents": [...], offset, count, total}.
    documented = {
        "agent": {"_id": "a1", "username": "ana", "livechat": {"maxNumberSimultaneousChat": "5"}},
        "success": True,
    }
    assert endpoints.page_items(documented, "agents") == [documented["agent"]]
    assert endpoints.page_items({"agents": [], "total": 0}, "agents") == []
    assert endpoints.page_items({"success": True}, "agents") is None
