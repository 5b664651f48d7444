"""Decision records are bounded (README, *Configuration* and the bad-input table): size per decision, decisions per
record, records per kind, and a shorter retention for records of requests that did nothing. Real Redis."""

from __future__ import annotations

import json

import httpx
import pytest

from bridge import keys
from bridge.app import create_app
from bridge.decisions import PER_RECORD, RECENT, DecisionLog, bounded
from bridge.errors import ConfigError
from bridge.settings import Secret, Settings
from tests.support import ServerThread

DAY = 86_400
HOUR = 3600


def candidate(number: int) -> dict:
    return {
        "id": f"agent{number:04d}xxxxxxxxx",
        "username": f"agent-{number}",
        "load": 1,
        "capacity": 3,
        "excluded": None,
    }


def test_a_huge_decision_is_cut_to_the_size_cap_and_says_what_it_left_out(redis_client):
    log = DecisionLog(redis_client, DAY, max_bytes=4096)
    entry = log.record(
        "chat",
        "room1",
        {
            "kind": "chat",
            "outcome": "waiting",
            "detail": "x" * 10_000,
            "candidates": [candidate(n) for n in range(500)],
            "attempts": [{"agent_id": f"a{n}", "result": "error"} for n in range(5)],
        },
    )
    (stored,) = redis_client.lrange(keys.decisions("chat", "room1"), 0, -1)
    assert len(stored) <= 4096
    assert json.loads(stored) == entry
    assert entry["detail"] == "x" * 500 + "..."
    assert 0 < len(entry["candidates"]) < 500
    assert entry["candidates"] == [candidate(n) for n in range(len(entry["candidates"]))], "the first ones are kept"
    assert entry["candidates_omitted"] == 500 - len(entry["candidates"])
    assert len(entry["attempts"]) == 5 and "attempts_omitted" not in entry
    assert (entry["outcome"], entry["room_id"], entry["record_kind"]) == ("waiting", "room1", "chat")


def test_a_decision_whose_core_alone_is_too_big_keeps_only_the_core():
    entry = {f"field{n}": "y" * 400 for n in range(40)} | {"outcome": "routed", "agent_username": "z" * 1000}
    text = bounded(entry, 2048)
    assert len(text) <= 2048
    assert json.loads(text) == {"outcome": "routed", "agent_username": "z" * 100 + "...", "truncated": True}


def test_small_decisions_are_stored_as_they_are(redis_client):
    decision = {"kind": "chat", "outcome": "routed", "candidates": [candidate(1)], "attempts": []}
    entry = DecisionLog(redis_client, DAY).record("chat", "room1", decision)
    assert {k: entry[k] for k in decision} == decision
    assert "candidates_omitted" not in entry and "truncated" not in entry


def test_a_record_keeps_its_last_decisions_and_the_recent_list_is_capped(redis_client):
    log = DecisionLog(redis_client, DAY)
    for kind, kept in PER_RECORD.items():
        for number in range(kept + 5):
            log.record(kind, "r1", {"outcome": "waiting", "n": number})
        assert [d["n"] for d in log.read(kind, "r1")] == list(range(5, kept + 5))
    for number in range(RECENT):
        log.record("external", "-", {"outcome": "answered", "n": number})
    assert redis_client.llen(keys.recent_decisions()) == RECENT


def test_records_past_the_cap_are_deleted_closest_to_expiry_first_and_per_kind(redis_client):
    log = DecisionLog(redis_client, DAY, noop_retention_seconds=HOUR, max_records=5)
    for number in range(3):
        log.record("chat", f"kept{number}", {"outcome": "routed"})
    log.record("chat", "gone1", {"outcome": "gone"})  # did nothing: expires in an hour, so it goes first
    log.record("chat", "kept3", {"outcome": "routed"})
    log.record("chat", "kept4", {"outcome": "routed"})
    assert log.count("chat") == 5
    assert log.for_room("gone1") == []
    assert all(log.for_room(f"kept{n}") for n in range(5))
    log.record("chat", "kept5", {"outcome": "routed"})
    assert log.for_room("kept0") == [] and log.for_room("kept5"), "then the oldest"
    assert log.count("chat") == 5

    # A flood of another kind deletes only its own kind's records.
    for number in range(50):
        log.record("external", f"dept{number}", {"outcome": "no agent"})
    assert log.count("external") == 5
    assert len(redis_client.keys("ob:decisions:external:*")) == 5
    assert all(log.for_room(f"kept{n}") for n in range(1, 6))
    assert log.count("chat") == 5


def test_records_of_requests_that_did_nothing_expire_sooner(redis_client):
    log = DecisionLog(redis_client, 7 * DAY, noop_retention_seconds=HOUR)

    def ttl(kind: str, record_id: str) -> int:
        return int(redis_client.ttl(keys.decisions(kind, record_id)))

    log.record("external", "d1", {"outcome": "no agent"})
    log.record("voice", "v1", {"outcome": "failed"})
    log.record("voice", "v2", {"outcome": "no agent"})
    log.record("chat", "r1", {"outcome": "gone"})
    for kind, record_id in [("external", "d1"), ("voice", "v1"), ("voice", "v2"), ("chat", "r1")]:
        assert HOUR - 5 <= ttl(kind, record_id) <= HOUR, (kind, record_id)

    log.record("external", "d2", {"outcome": "answered"})
    log.record("voice", "v3", {"outcome": "assigned"})
    log.record("chat", "r2", {"outcome": "waiting"})
    log.record("chat", "r2", {"outcome": "gone"})  # it waited (explained why): not a request that did nothing
    log.record("external", "d2", {"outcome": "no agent"})
    log.record("external", "d1", {"outcome": "answered"})  # a no-op record that then did something
    for kind, record_id in [("external", "d2"), ("voice", "v3"), ("chat", "r2"), ("external", "d1")]:
        assert ttl(kind, record_id) > 7 * DAY - 5, (kind, record_id)
    scores = dict(redis_client.zrange(keys.decision_index("external"), 0, -1, withscores=True))
    assert scores[b"d2"] - scores[b"d1"] < 5, "the index orders records by expiry"


def test_ids_that_are_not_ids_are_keyed_by_a_digest(redis_client):
    log = DecisionLog(redis_client, DAY)
    log.record("chat", "r" * 10_240, {"outcome": "gone"})
    (key,) = redis_client.keys("ob:decisions:chat:*")
    assert key.startswith(b"ob:decisions:chat:~") and len(key) == len("ob:decisions:chat:~") + 40
    assert log.for_room("r" * 10_240)[0]["outcome"] == "gone"


def test_the_settings_and_their_bounds(redis_client):
    read = Settings.from_env
    assert (read({}).decision_noop_retention_seconds, read({}).decision_max_records) == (3600, 100_000)
    assert read({}).decision_max_bytes == 8192
    configured = read(
        {"DECISION_NOOP_RETENTION_SECONDS": "120", "DECISION_MAX_RECORDS": "500", "DECISION_MAX_BYTES": "4096"}
    )
    log = DecisionLog.from_settings(redis_client, configured)
    assert (log.noop_retention, log.max_records, log.max_bytes) == (120, 500, 4096)
    for name, value in [
        ("DECISION_MAX_BYTES", "100"),
        ("DECISION_MAX_RECORDS", "0"),
        ("DECISION_NOOP_RETENTION_SECONDS", "1"),
    ]:
        with pytest.raises(ConfigError, match=name):
            read({name: value})


def test_an_external_service_flood_of_random_departments_stays_bounded(settings, redis_client):
    """The issue's flood (8,490 random departmentId, each a record kept 7 days), scaled down: records of queries
    that did nothing expire within the hour and their number is capped."""
    configured = settings.replace(external_queue_token=Secret("flood-token"), decision_max_records=100)
    with ServerThread(create_app(configured)) as server, httpx.Client(base_url=server.url) as client:
        for number in range(300):
            response = client.get(
                "/external-queue",
                params={"departmentId": f"dept{number}"},
                headers={"X-RocketChat-Secret-Token": "flood-token"},
            )
            assert response.json() == {}
    records = redis_client.keys("ob:decisions:external:*")
    assert len(records) == 100
    assert max(redis_client.ttl(key) for key in records) <= configured.decision_noop_retention_seconds
