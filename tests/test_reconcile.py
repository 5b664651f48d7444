"""Load drift against Rocket.Chat's open rooms, with the double."""

import pytest

from bridge import keys
from bridge.directory import AgentDirectory
from bridge.lease import Leases
from bridge.load import LoadBook
from bridge.reconcile import reconcile_load
from bridge.rocketchat import RocketChat
from tests.team import SALES, seed_team


@pytest.fixture
def parts(rc_settings, rc_state, redis_client):
    team = seed_team(rc_state)
    rc = RocketChat(rc_settings)
    yield team, rc, AgentDirectory(rc_settings, redis_client, lambda: rc), LoadBook(redis_client)
    rc.close()


def test_drift_is_corrected_both_ways(parts, rc_state):
    team, rc, directory, load = parts
    lost_webhook, _ = rc_state.open_chat(department=SALES)
    rc_state.assign(lost_webhook["_id"], "ana")  # the bridge never heard of it
    load.assign("room-closed-while-down", team["bo"])  # closed in Rocket.Chat, the close webhook was lost
    outcome = reconcile_load(rc, load, grace_seconds=0)
    assert "1 rooms added, 1 released" in outcome
    assert load.counts() == {team["ana"]: 1}
    assert rc_state.calls("GET", "/api/v1/livechat/rooms") == 1, "one call for every agent"


def test_a_room_being_routed_or_just_counted_is_not_drift(parts, redis_client):
    team, rc, directory, load = parts
    load.reserve("room-being-taken", [(team["ana"], 2)])
    load.reserve("room-just-taken", [(team["bo"], 3)])
    leases = Leases(redis_client)
    claim = leases.acquire(keys.room_lease("room-being-taken"))
    assert "0 released" in reconcile_load(rc, load, grace_seconds=60)
    assert load.counts() == {team["ana"]: 1, team["bo"]: 1}
    assert "1 released" in reconcile_load(rc, load, grace_seconds=0)
    assert load.counts() == {team["ana"]: 1}
    leases.release(claim)


def test_queued_inquiries_whose_webhooks_were_lost_are_routed(rc_settings, rc_state, redis_client, parts):
    from bridge.reconcile import recover_queued
    from workers import context

    team, *_ = parts
    lost = [rc_state.open_chat(department=SALES)[0] for _ in range(3)]  # no webhook ever reached the bridge
    ctx = context.install(rc_settings, redis_client)
    outcome = recover_queued(ctx.rocketchat(), ctx.router)
    assert outcome.startswith("3 queued in Rocket.Chat, 3 recovered; routed 3")
    assert all(rc_state.rooms[room["_id"]].get("servedBy") for room in lost)
    assert recover_queued(ctx.rocketchat(), ctx.router).startswith("0 queued in Rocket.Chat, 0 recovered")
    assert team


def test_without_view_livechat_manager_the_accounts_queue_is_used(rc_settings, rc_state, redis_client, parts):
    from bridge.reconcile import recover_queued
    from bridge.settings import Secret
    from workers import context

    rc_state.revoke("livechat-manager", "view-livechat-manager")
    room, _ = rc_state.open_chat(department=SALES)
    ctx = context.install(
        rc_settings.replace(rocketchat_auth_token=Secret(rc_settings.rocketchat_auth_token)), redis_client
    )
    assert "1 recovered" in recover_queued(ctx.rocketchat(), ctx.router)
    assert rc_state.log_lines()[:2] == [
        "GET /api/v1/livechat/inquiries.list > 403",
        "GET /api/v1/livechat/inquiries.queuedForUser > 200",
    ]
    assert rc_state.rooms[room["_id"]].get("servedBy")
