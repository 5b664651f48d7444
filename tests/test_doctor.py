import pytest

from bridge.cli import main
from bridge.settings import Secret


def env_of(settings, user_id=None, token=None):
    return {
        "REDIS_URL": settings.redis_url,
        "ROCKETCHAT_URL": settings.rocketchat_url,
        "ROCKETCHAT_USER_ID": user_id or settings.rocketchat_user_id,
        "ROCKETCHAT_AUTH_TOKEN": token or settings.rocketchat_auth_token,
    }


def rows(output):
    table = {}
    for line in output.splitlines()[1:-1]:
        if "  PASS  " in line or "  FAIL  " in line or "  WARN  " in line or "  SKIP  " in line:
            name, _, rest = line.partition("  ")
            table[name.strip()] = rest.split()[0]
    return table


@pytest.mark.parametrize("version", ["7.13.9", "8.8.1"])
def test_doctor_passes_with_the_documented_service_account(rc_settings, rc_state, capsys, version):
    rc_state.version = version
    assert main(["doctor"], env=env_of(rc_settings)) == 0
    output = capsys.readouterr().out
    assert output.rstrip().endswith("all checks passed")
    assert f"version {version}" in output
    assert "routes answered without X-RateLimit headers" in output, "learned from the answers, not from the roles"
    assert rc_settings.rocketchat_auth_token not in output


def test_doctor_names_each_missing_permission_of_a_plain_agent_account(rc_settings, rc_state, capsys):
    user_id, token = rc_state.add_account("plain.agent", ["user", "livechat-agent"])
    assert main(["doctor"], env=env_of(rc_settings, user_id, token)) == 1
    output = capsys.readouterr().out
    table = rows(output)
    assert table["view-l-room (take inquiries)"] == "PASS"
    assert table["transfer-livechat-guest (forward)"] == "FAIL"
    assert table["view-livechat-rooms (load check)"] == "FAIL"
    assert table["view-livechat-manager (queued inquiries)"] == "FAIL"
    assert table["manage-agent-extension-association (agents/available, voice)"] == "FAIL"
    assert table["rate limits"] == "WARN"
    assert "GET /api/v1/livechat/inquiries.getOne 10 per window (9 left" in output, "what X-RateLimit-* said"
    for permission in (
        "transfer-livechat-guest",
        "view-livechat-rooms",
        "view-livechat-manager",
        "manage-agent-extension-association",
    ):
        assert f"fix: grant the permission {permission}" in output
    assert output.rstrip().endswith("4 check(s) failed")


def test_doctor_reports_rejected_credentials(rc_settings, capsys):
    assert main(["doctor"], env=env_of(rc_settings, token="wrong-token-value")) == 1
    output = capsys.readouterr().out
    assert rows(output)["credentials"] == "FAIL"
    assert "ROCKETCHAT_USER_ID/ROCKETCHAT_AUTH_TOKEN" in output
    assert "wrong-token-value" not in output


def test_doctor_reports_unreachable_services(settings, capsys):
    env = {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "ROCKETCHAT_URL": "http://127.0.0.1:1",
        "ROCKETCHAT_USER_ID": "u",
        "ROCKETCHAT_AUTH_TOKEN": Secret("t"),
    }
    assert main(["doctor"], env=env) == 1
    table = rows(capsys.readouterr().out)
    assert table == {"Redis": "FAIL", "Rocket.Chat": "FAIL"}


def test_doctor_passes_with_an_admin_account(rc_settings, rc_state, capsys):
    user_id, token = rc_state.add_account("admin.user", ["user", "admin"])
    assert main(["doctor"], env=env_of(rc_settings, user_id, token)) == 0
    output = capsys.readouterr().out
    assert "routes answered without X-RateLimit headers" in output and output.rstrip().endswith("all checks passed")
