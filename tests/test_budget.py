import threading
import time

import pytest
import redis

from bridge.budget import CallBudget
from bridge.errors import BudgetExhausted


def test_only_the_budget_is_granted_however_many_processes_ask_at_once(redis_url):
    granted = []

    def ask():
        connection = redis.Redis.from_url(redis_url)  # one connection each, as separate processes would have
        budget = CallBudget(connection, calls_per_minute=5)
        granted.append(budget.try_take("GET /api/v1/omnichannel/agents/available") == 0.0)
        connection.close()

    threads = [threading.Thread(target=ask) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 5


def test_routes_have_separate_budgets(redis_client):
    budget = CallBudget(redis_client, calls_per_minute=1)
    assert budget.try_take("GET /a") == 0.0
    assert budget.try_take("GET /b") == 0.0
    wait = budget.try_take("GET /a")
    assert 59.0 < wait <= 60.0


def test_take_refuses_to_wait_longer_than_allowed(redis_client):
    budget = CallBudget(redis_client, calls_per_minute=1)
    budget.take("GET /a", max_wait=0)
    with pytest.raises(BudgetExhausted) as raised:
        budget.take("GET /a", max_wait=5)
    assert "GET /a" in str(raised.value)


def test_a_429_blocks_the_route_for_everyone_until_reset(redis_client):
    budget = CallBudget(redis_client, calls_per_minute=100)
    reset_ms = int(time.time() * 1000) + 400
    assert 0.2 < budget.block_until("GET /a", reset_ms) <= 0.4
    assert 0.0 < budget.try_take("GET /a") <= 0.4
    slept = []
    budget.sleep = lambda s: (slept.append(s), time.sleep(s))
    budget.take("GET /a", max_wait=2)
    assert slept and budget.try_take("GET /b") == 0.0


def test_zero_means_no_budget(redis_client):
    budget = CallBudget(redis_client, calls_per_minute=0)
    assert all(budget.try_take("GET /a") == 0.0 for _ in range(100))
    assert redis_client.dbsize() == 0
