"""The live view in a real headless Chromium, against a running bridge (``omnibridge web`` and two workers, the
session's Redis, the Rocket.Chat double posting its webhooks): agents and decisions appear, and change as more
chats are routed. A screenshot is saved to ``$DASHBOARD_SCREENSHOT`` (else into the test's tmp dir).

Chromium is Debian's ``chromium`` driven through its own ``chromium-driver`` (the same build, so their versions
always match), with Selenium told the driver's path so it downloads nothing. Without them this test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from bridge.sandbox.webhooks import WebhookPoster
from tests.conftest import WEBHOOK_TOKEN
from tests.processes import BridgeProcesses
from tests.support import report, wait_for
from tests.team import SALES, SUPPORT, seed_team

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
API_TOKEN = "live-view-api-token-0b7"
WIDTH, HEIGHT = 1280, 800
# On a closed network Chromium must not try to reach anything of its own (updates, sync, QUIC probes).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--window-size={WIDTH},{HEIGHT}",
)


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: install Chromium and its driver with "
            "`apt-get install -y chromium chromium-driver` (Debian packages `chromium chromium-driver`)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    try:
        # The window includes the browser's own frame: grow it so the page itself gets WIDTH x HEIGHT.
        frame = driver.execute_script("return [outerWidth - innerWidth, outerHeight - innerHeight]")
        driver.set_window_size(WIDTH + frame[0], HEIGHT + frame[1])
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def running(
    rc_state, rc_server, service_account, redis_url, tmp_path
) -> Iterator[tuple[BridgeProcesses, dict[str, str]]]:
    team = seed_team(rc_state)
    env = {
        "REDIS_URL": redis_url,
        "ROCKETCHAT_URL": rc_server.url,
        "ROCKETCHAT_USER_ID": service_account.user_id,
        "ROCKETCHAT_AUTH_TOKEN": service_account.token,
        "ROCKETCHAT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "BRIDGE_API_TOKEN": API_TOKEN,
        "TICK_SECONDS": "1",
        "DIRECTORY_TTL_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
    }
    processes = BridgeProcesses(env, tmp_path, workers=2)
    poster: WebhookPoster | None = None
    try:
        processes.start()
        poster = WebhookPoster(rc_state, f"{processes.url}/webhooks/livechat", WEBHOOK_TOKEN, timeout=5.0).attach()
        yield processes, team
        assert poster.drain(10), "webhooks still pending at the end of the test"
    finally:
        if poster is not None:
            poster.close(timeout=5)
        crashed = processes.exited()
        statuses = processes.stop()
    assert not crashed, f"bridge processes died during the test: {crashed}\n{processes.output()}"
    web = statuses.pop("web")
    assert set(statuses.values()) == {0} and web in (0, -signal.SIGTERM), processes.output()


def open_chats(rc_state, departments: list[str]) -> list[str]:
    return [rc_state.open_chat(department=department)[0]["_id"] for department in departments]


def served(rc_state, rooms: list[str]) -> bool:
    with rc_state.lock:
        return all(rc_state.rooms[rid].get("servedBy") for rid in rooms)


def page(driver: webdriver.Chrome) -> dict[str, Any]:
    """What the page shows now, read from its DOM."""
    return driver.execute_script(
        """
        const rows = [...document.querySelectorAll("#agents-body tr[data-agent]")];
        return {
          updates: Number(document.body.dataset.updates || 0),
          state: document.getElementById("state").textContent,
          agents: Object.fromEntries(rows.map((r) => [r.dataset.agent, r.children[2].textContent])),
          decisions: [...document.querySelectorAll("#decisions-list li[data-room]")].map(
            (li) => [li.dataset.room, li.dataset.outcome, li.textContent]),
          bars: document.querySelectorAll("#throughput rect").length,
          waitPoints: document.querySelectorAll("#latency circle").length,
          routedTile: document.querySelector("#tile-routed b").textContent,
          resources: performance.getEntriesByType("resource").map((e) => e.name),
        };
        """
    )


def shown(
    driver: webdriver.Chrome, condition: Callable[[dict[str, Any]], bool], expected: str, timeout: float = 15
) -> dict[str, Any]:
    """Poll the page until what it shows meets ``condition``; returns what it showed then."""
    deadline = time.monotonic() + timeout
    while True:
        seen = page(driver)
        if seen["updates"] and condition(seen):
            return seen
        if time.monotonic() > deadline:
            del seen["resources"]
            raise AssertionError(f"the page did not show {expected} within {timeout} s; it showed {seen}")
        time.sleep(0.2)


def rooms(seen: dict[str, Any], outcome: str = "routed") -> set[str]:
    return {rid for rid, shown_outcome, _ in seen["decisions"] if shown_outcome == outcome}


def total_load(seen: dict[str, Any]) -> int:
    return sum(int(load.split("/")[0]) for load in seen["agents"].values())


@pytest.mark.slow
def test_the_live_view_shows_agents_and_decisions_and_follows_routing(browser, running, rc_state, tmp_path):
    processes, team = running
    first = open_chats(rc_state, [SALES, SUPPORT])
    wait_for(lambda: served(rc_state, first), timeout=20)

    browser.get(f"{processes.url}/?token={API_TOKEN}")
    before = shown(browser, lambda seen: rooms(seen) >= set(first), "the first chats routed")
    assert before["state"].startswith("live"), before["state"]
    assert set(before["agents"]) == set(team)
    assert total_load(before) == 2

    second = open_chats(rc_state, [SALES, SUPPORT, SALES])
    wait_for(lambda: served(rc_state, second), timeout=20)
    after = shown(browser, lambda seen: rooms(seen) >= set(second) and total_load(seen) == 5, "the next chats routed")
    assert after["updates"] > before["updates"] and after["agents"] != before["agents"]
    routed = next(text for rid, outcome, text in after["decisions"] if rid in second and outcome == "routed")
    assert "least_loaded" in routed and "eve: not available for livechat" in routed, routed  # why, and why not
    after = shown(
        browser,
        lambda seen: seen["bars"] > 0 and seen["waitPoints"] > 0,
        "routed chats in its charts (the router records each in bridge.timeline.record_routed)",
    )
    assert 1 <= int(after["routedTile"]) <= 5  # the last minute's count: all five, unless the run was very slow

    assert all(url.startswith(processes.url) for url in after["resources"]), after["resources"]
    problems = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not problems, f"the page logged errors (a Content-Security-Policy refusal shows here): {problems}"

    screenshot = Path(os.environ.get("DASHBOARD_SCREENSHOT") or tmp_path / "live-view.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot))
    report(f"live view screenshot: {screenshot}")


@pytest.mark.slow
def test_the_live_view_of_omnibridge_up_shows_the_sandbox_being_routed(browser, tmp_path):
    """The README's first command, as a newcomer runs it: no Rocket.Chat, no Redis; the page it prints."""
    from tests.processes import free_port
    from tests.test_sandbox_up import Running, run_env

    port = free_port()
    running = Running(["up", "--port", str(port), "--rate", "120", "--seed", "3"], run_env(LOG_LEVEL="WARNING"))
    try:
        found = wait_for(
            lambda: running.alive() and re.search(r"live view: (http://\S+/\?token=\S+)", running.output), timeout=30
        )
        wait_for(lambda: running.alive() and _ready(f"http://127.0.0.1:{port}/readyz"), timeout=30, interval=0.2)
        browser.get(found.group(1))
        first = shown(browser, lambda seen: len(seen["agents"]) == 6 and rooms(seen), "agents and a routed chat", 60)
        assert set(first["agents"]) == {"ana", "bo", "cy", "dee", "eve", "fay"}
        later = shown(browser, lambda seen: rooms(seen) - rooms(first), "chats routed after the first look", 60)
        assert later["updates"] > first["updates"]
        assert all(url.startswith(f"http://127.0.0.1:{port}") for url in later["resources"]), later["resources"]
        screenshot = Path(os.environ.get("DASHBOARD_UP_SCREENSHOT") or tmp_path / "live-view-up.png")
        assert browser.save_screenshot(str(screenshot))
        report(f"live view of omnibridge up: {screenshot}")
    finally:
        status = running.stop()
    assert status == 0, running.output


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
