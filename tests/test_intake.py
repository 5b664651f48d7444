"""Durable intake: webhooks accepted while Redis is down are spooled to disk and replayed, in order, once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bridge.app import create_app
from bridge.jobqueue import make_queue
from bridge.spool import Spool
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, load_fixture, logged_events, wait_for

HEADERS = {"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
NAMES = ["LivechatSessionQueued__basic", "LivechatSessionTaken__basic", "LivechatSession__closed_by_agent"]


def post(server, payload):
    return httpx.post(f"{server.url}/webhooks/livechat", json=payload, headers=HEADERS)


@pytest.fixture
def queue(settings, redis_client):
    return make_queue(settings, redis_client)


def test_events_accepted_during_an_outage_are_replayed_in_order_once(settings, redis_server, queue, redis_client):
    with ServerThread(create_app(settings)) as bridge:
        redis_server.stop()
        answers = [post(bridge, load_fixture(name)) for name in NAMES]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert all(a.json()["spooled"] for a in answers)
        assert post(bridge, load_fixture(NAMES[0])).status_code == 200  # Rocket.Chat redelivers one of them
        spooled = list(Path(settings.spool_dir).glob("*.jsonl"))
        assert len(spooled) == 1 and len(spooled[0].read_text().splitlines()) == 4
        redis_server.start()
        wait_for(lambda: len(logged_events(redis_client)) == 3, timeout=15)
        after = post(bridge, load_fixture("Message__from_visitor"))
    assert after.status_code == 200
    assert [line["type"] for line in logged_events(redis_client)] == [load_fixture(n)["type"] for n in NAMES]
    assert queue.count == 1
    assert list(Path(settings.spool_dir).glob("*.jsonl")) == []


def test_while_a_backlog_exists_new_events_queue_behind_it(settings, redis_server, queue, redis_client):
    spool = Spool(settings.spool_dir, settings.spool_max_bytes)
    from bridge.events import parse_event

    spool.append(parse_event(load_fixture(NAMES[0])).to_dict())  # left by an earlier outage
    spool.close()
    with ServerThread(create_app(settings)) as bridge:
        answer = post(bridge, load_fixture(NAMES[1]))
        assert answer.json().get("spooled") is True, "it must not overtake the spooled event"
        wait_for(lambda: len(logged_events(redis_client)) == 2, timeout=15)
    types = [line["type"] for line in logged_events(redis_client)]
    assert types == ["LivechatSessionQueued", "LivechatSessionTaken"]


def test_a_spool_left_by_a_dead_web_process_is_replayed_by_another(settings, redis_client, queue):
    # A web process spools an event and is killed before Redis returns.
    script = (
        "import sys; from bridge.spool import Spool; from bridge.events import parse_event; import json; "
        "s = Spool(sys.argv[1], 10**9); s.append(parse_event(json.loads(sys.argv[2])).to_dict()); "
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    )
    payload = json.dumps(load_fixture(NAMES[0]))
    subprocess.run(
        [sys.executable, "-c", script, settings.spool_dir, payload],
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert len(list(Path(settings.spool_dir).glob("*.jsonl"))) == 1
    with ServerThread(create_app(settings)):
        wait_for(lambda: len(logged_events(redis_client)) == 1, timeout=15)
    assert list(Path(settings.spool_dir).glob("*.jsonl")) == []


def test_a_line_cut_short_by_a_crash_is_skipped(settings, redis_client):
    directory = Path(settings.spool_dir)
    directory.mkdir(parents=True)
    from bridge.events import parse_event

    whole = json.dumps(parse_event(load_fixture(NAMES[0])).to_dict())
    (directory / "00000000000000000001-1-1.jsonl").write_text(whole + "\n" + whole[:40])
    with ServerThread(create_app(settings)):
        wait_for(lambda: len(logged_events(redis_client)) == 1 and not list(directory.glob("*.jsonl")), timeout=15)


def test_no_room_in_the_spool_is_503(settings, redis_server):
    with ServerThread(create_app(settings.replace(spool_max_bytes=100))) as bridge:
        redis_server.stop()
        assert post(bridge, load_fixture(NAMES[0])).status_code == 503
