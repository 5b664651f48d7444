import pytest

from bridge.errors import ConfigError
from bridge.settings import Secret, Settings


def test_defaults_from_an_empty_environment():
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.port == 8000
    assert settings.host == "127.0.0.1"
    assert settings.webhook_token == ""
    assert settings.max_body_bytes == 2 * 1024 * 1024
    assert settings.dedupe_ttl_seconds == 86_400


def test_every_variable_is_read():
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:6390/2",
            "PORT": "5005",
            "HOST": "0.0.0.0",
            "ROCKETCHAT_URL": "https://chat.example.com/",
            "ROCKETCHAT_USER_ID": "uid",
            "ROCKETCHAT_AUTH_TOKEN": "pat-value",
            "ROCKETCHAT_WEBHOOK_TOKEN": "hook-value",
            "BRIDGE_INSECURE_DEV": "yes",
            "WEBHOOK_MAX_BYTES": "4096",
            "DEDUPE_TTL_SECONDS": "600",
            "LOG_FORMAT": "JSON",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.redis_url == "redis://127.0.0.1:6390/2"
    assert (settings.port, settings.host) == (5005, "0.0.0.0")
    assert settings.rocketchat_url == "https://chat.example.com"
    assert (settings.rocketchat_user_id, settings.rocketchat_auth_token) == ("uid", "pat-value")
    assert settings.webhook_token == "hook-value"
    assert settings.insecure_dev is True
    assert (settings.max_body_bytes, settings.dedupe_ttl_seconds) == (4096, 600)
    assert (settings.log_format, settings.log_level) == ("json", "DEBUG")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("REDIS_URL", "localhost:6379"),
        ("ROCKETCHAT_URL", "ftp://chat.example.com"),
        ("ROCKETCHAT_URL", "chat.example.com"),
        ("BRIDGE_INSECURE_DEV", "maybe"),
        ("WEBHOOK_MAX_BYTES", "12"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_a_malformed_value_names_the_variable_but_not_the_value(variable, value):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: value})
    assert raised.value.variable == variable
    assert str(raised.value).startswith(variable)
    if variable == "REDIS_URL":
        assert value not in str(raised.value)


def test_a_redis_url_with_a_password_is_not_echoed_when_wrong():
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"REDIS_URL": "http://:hunter2-password@cache:6379"})
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"ROCKETCHAT_USER_ID": "uid"}, "ROCKETCHAT_AUTH_TOKEN"),
        ({"ROCKETCHAT_AUTH_TOKEN": "pat"}, "ROCKETCHAT_USER_ID"),
        ({"ROCKETCHAT_USERNAME": "bridge"}, "ROCKETCHAT_PASSWORD"),
        ({"ROCKETCHAT_PASSWORD": "pw"}, "ROCKETCHAT_USERNAME"),
    ],
)
def test_half_a_credential_pair_is_refused(env, missing):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert raised.value.variable == missing


def test_the_web_process_needs_a_webhook_token_unless_insecure_dev_is_set():
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({}).require_webhook_token()
    assert raised.value.variable == "ROCKETCHAT_WEBHOOK_TOKEN"
    Settings.from_env({"BRIDGE_INSECURE_DEV": "1"}).require_webhook_token()
    Settings.from_env({"ROCKETCHAT_WEBHOOK_TOKEN": "x"}).require_webhook_token()


def test_a_worker_needs_redis_rocketchat_and_credentials_all_named_at_once():
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({}).require_worker()
    assert raised.value.variables == ("REDIS_URL", "ROCKETCHAT_URL", "ROCKETCHAT_USER_ID", "ROCKETCHAT_AUTH_TOKEN")
    assert str(raised.value).startswith("REDIS_URL, ROCKETCHAT_URL, ROCKETCHAT_USER_ID and ROCKETCHAT_AUTH_TOKEN are ")
    assert "ROCKETCHAT_USERNAME and ROCKETCHAT_PASSWORD" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(
            {"ROCKETCHAT_URL": "https://chat.example.com", "ROCKETCHAT_USERNAME": "bot", "ROCKETCHAT_PASSWORD": "pw"}
        ).require_worker()
    assert raised.value.variables == ("REDIS_URL",)
    assert str(raised.value).startswith("REDIS_URL is required by a worker")


@pytest.mark.parametrize(
    "credentials",
    [
        {"ROCKETCHAT_USER_ID": "uid", "ROCKETCHAT_AUTH_TOKEN": "pat-value"},
        {"ROCKETCHAT_USERNAME": "bridge", "ROCKETCHAT_PASSWORD": "pw-value"},
    ],
)
def test_a_worker_with_a_full_configuration_may_start(credentials):
    env = {"REDIS_URL": "redis://127.0.0.1:6390/2", "ROCKETCHAT_URL": "https://chat.example.com", **credentials}
    Settings.from_env(env).require_worker()
    Settings.from_env(env).require_rocketchat()


def test_secrets_never_show_in_repr():
    settings = Settings.from_env(
        {
            "ROCKETCHAT_USER_ID": "uid",
            "ROCKETCHAT_AUTH_TOKEN": "pat-secret-value",
            "ROCKETCHAT_USERNAME": "bridge",
            "ROCKETCHAT_PASSWORD": "password-secret-value",
            "ROCKETCHAT_WEBHOOK_TOKEN": "hook-secret-value",
        }
    )
    shown = repr(settings) + str([settings])
    for secret in ("pat-secret-value", "password-secret-value", "hook-secret-value"):
        assert secret not in shown
    assert settings.rocketchat_password == "password-secret-value"
    assert repr(Secret("")) == "Secret('')"


def test_bounds_on_redis_state_have_safe_defaults_and_are_read():
    default = Settings.from_env({})
    assert (default.event_log_routing_max_lines, default.event_log_other_max_lines) == (100_000, 50_000)
    assert default.waiting_max_chats == 10_000
    read = Settings.from_env(
        {"EVENT_LOG_ROUTING_MAX_LINES": "2000", "EVENT_LOG_OTHER_MAX_LINES": "1000", "WAITING_MAX_CHATS": "50"}
    )
    assert (read.event_log_routing_max_lines, read.event_log_other_max_lines, read.waiting_max_chats) == (
        2000,
        1000,
        50,
    )


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"EVENT_LOG_OTHER_MAX_LINES": "0"}, "EVENT_LOG_OTHER_MAX_LINES"),
        ({"EVENT_LOG_ROUTING_MAX_LINES": "lots"}, "EVENT_LOG_ROUTING_MAX_LINES"),
        ({"WAITING_MAX_CHATS": "-1"}, "WAITING_MAX_CHATS"),
        # the routing lane keeps the larger bound: a flood of messages must be refused before a queued chat is
        ({"EVENT_LOG_ROUTING_MAX_LINES": "1000", "EVENT_LOG_OTHER_MAX_LINES": "2000"}, "EVENT_LOG_ROUTING_MAX_LINES"),
    ],
)
def test_bad_bounds_stop_start_up_naming_the_variable(env, variable):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert raised.value.variable == variable
