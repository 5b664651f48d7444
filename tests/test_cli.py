import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import redis

from bridge.cli import main
from bridge.embedded import free_port
from tests.processes import INHERITED
from tests.support import fixture_names, load_fixture, recorded_keys, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("command", "env", "variable"),
    [
        (["web"], {}, "ROCKETCHAT_WEBHOOK_TOKEN"),
        (["web"], {"ROCKETCHAT_WEBHOOK_TOKEN": "t"}, "REDIS_URL"),
        (["web"], {"PORT": "http"}, "PORT"),
        (["worker"], {}, "REDIS_URL"),
        (["worker"], {"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL"),
        (["up"], {"ROCKETCHAT_USER_ID": "uid"}, "ROCKETCHAT_AUTH_TOKEN"),
    ],
)
def test_bad_configuration_stops_start_up_naming_the_variable(capsys, command, env, variable):
    assert main(command, env=env) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"omnibridge: configuration error: {variable}")


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, ["REDIS_URL", "ROCKETCHAT_URL", "ROCKETCHAT_USER_ID", "ROCKETCHAT_AUTH_TOKEN"]),
        ({"REDIS_URL": "redis"}, ["ROCKETCHAT_URL", "ROCKETCHAT_USER_ID", "ROCKETCHAT_AUTH_TOKEN"]),
        (
            {"REDIS_URL": "redis", "ROCKETCHAT_URL": "http://127.0.0.1:9"},
            ["ROCKETCHAT_USER_ID", "ROCKETCHAT_AUTH_TOKEN"],
        ),
        ({"REDIS_URL": "redis", "ROCKETCHAT_USER_ID": "uid", "ROCKETCHAT_AUTH_TOKEN": "pat"}, ["ROCKETCHAT_URL"]),
    ],
)
def test_a_worker_without_rocketchat_refuses_to_start_naming_every_missing_variable(
    capsys, redis_url, redis_client, env, missing
):
    env = {name: redis_url if value == "redis" else value for name, value in env.items()}
    assert main(["worker", "--burst"], env=env) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, "one message names them all"
    assert lines[0].startswith(f"omnibridge: configuration error: {missing[0]}")
    named = set(re.findall(r"\b(?:REDIS|ROCKETCHAT)_[A-Z_]+\b", lines[0]))
    assert set(missing) <= named
    assert ("ROCKETCHAT_AUTH_TOKEN" in missing) is ({"ROCKETCHAT_USERNAME", "ROCKETCHAT_PASSWORD"} <= named)
    assert "pat" not in lines[0].split(), "names, never values"
    assert recorded_keys(redis_client) == [], "no worker registered, no job taken"


def test_the_worker_process_exits_2_without_rocketchat(redis_url, redis_client):
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=redis_url)
    process = subprocess.run(
        [sys.executable, "-m", "bridge", "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert process.returncode == 2
    error = process.stderr.strip()
    assert error.startswith("omnibridge: configuration error: ROCKETCHAT_URL, ROCKETCHAT_USER_ID and "), error
    assert "ROCKETCHAT_AUTH_TOKEN" in error and "ROCKETCHAT_USERNAME and ROCKETCHAT_PASSWORD" in error
    assert recorded_keys(redis_client) == []


def test_up_with_a_rocketchat_url_but_no_credentials_refuses_before_starting_anything(capsys):
    assert main(["up"], env={"ROCKETCHAT_URL": "http://127.0.0.1:9"}) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("omnibridge: configuration error: ROCKETCHAT_USER_ID and ROCKETCHAT_AUTH_TOKEN")
    assert captured.out == "", "nothing started"


def test_up_runs_everything_on_an_embedded_redis_and_stops_cleanly():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PORT")}
    env.update(ROCKETCHAT_WEBHOOK_TOKEN="cli-test-token", LOG_LEVEL="WARNING")
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "up", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: _ready(port), timeout=30)
        redis_url = re.search(r"embedded (redis://\S+)", "".join(lines)).group(1)
        answers = [
            httpx.post(
                f"http://127.0.0.1:{port}/webhooks/livechat",
                json=load_fixture(name),
                headers={"X-RocketChat-Livechat-Token": "cli-test-token"},
            )
            for name in fixture_names()
        ]
        assert [a.status_code for a in answers] == [200] * len(answers)
        jobs = [a.json()["job"] for a in answers if "job" in a.json()]
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: all(client.hget(f"rq:job:{j}", "status") == b"finished" for j in jobs), timeout=30)
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=40)
        reader.join(timeout=5)
        process.stdout.close()
    output = "".join(lines)
    assert status == 0, output
    assert f"http://127.0.0.1:{port}/webhooks/livechat" in output
    assert "cli-test-token" not in output
    assert output.rstrip().endswith("omnibridge: stopped")


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    except httpx.TransportError:
        return False


def test_failed_lists_and_requeues_failed_jobs(settings, redis_client, capsys):
    from bridge.jobqueue import enqueue, make_queue
    from workers.worker import build_worker

    queue = make_queue(settings.replace(job_retries=0), redis_client)
    job_id = enqueue(queue, settings.replace(job_retries=0), "workers.jobs.route_chat", {"type": "Nope"})
    build_worker(settings, redis_client).work(burst=True)
    env = {"REDIS_URL": settings.redis_url}
    assert main(["failed"], env=env) == 0
    listed = capsys.readouterr().out
    assert job_id in listed and "KeyError" in listed and listed.rstrip().endswith("1 failed job(s)")
    assert main(["failed", "--requeue"], env=env) == 0
    assert capsys.readouterr().out.rstrip().endswith("1 job(s) requeued")
    assert queue.job_ids == [job_id]
