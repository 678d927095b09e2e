"""The per-function retry budget (invoker/retry_budget.py) on a fake clock, and the Retry-After cap."""

from __future__ import annotations

import random

import pytest

from invoker.retry import RetryPolicy
from invoker.retry_budget import RetryBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def granted(budget: RetryBudget, key: str, asked: int) -> int:
    return sum(budget.allow_retry(key) for _ in range(asked))


def test_the_floor_allows_a_few_retries_without_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_retries=3, window_s=10, clock=FakeClock())
    assert granted(budget, "f", 10) == 3
    assert budget.exhausted == {"f": 7}


def test_retries_are_a_fraction_of_recent_invocations_plus_the_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_retries=3, window_s=10, clock=FakeClock())
    for _ in range(100):
        budget.invocation_started("f")
    assert budget.allowance("f") == pytest.approx(23)
    # A burst of 100 failures, each wanting 3 retries: 23 granted, the other 277 refused.
    assert granted(budget, "f", 300) == 23
    assert "retry budget exhausted: 23 retries in the last 10 s" in budget.describe("f")
    assert "allowed 3 + 0.2 x 100 invocations" in budget.describe("f")


def test_budgets_are_per_function() -> None:
    budget = RetryBudget(ratio=0.0, min_retries=2, window_s=10, clock=FakeClock())
    assert granted(budget, "bad", 50) == 2
    assert granted(budget, "good", 2) == 2  # the failing function did not spend this one's budget


def test_the_budget_refills_as_the_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, min_retries=1, window_s=10, clock=clock)
    for _ in range(10):
        budget.invocation_started("f")
    assert granted(budget, "f", 20) == 6
    clock.now += 5  # still inside the window: nothing is returned
    assert granted(budget, "f", 20) == 0
    clock.now += 6  # the invocations and the granted retries left the window: only the floor
    assert budget.allowance("f") == 1
    assert granted(budget, "f", 20) == 1
    for _ in range(4):
        budget.invocation_started("f")
    assert granted(budget, "f", 20) == 2  # 1 + 0.5 x 4 = 3 in all, 1 already granted


def test_a_steady_failing_function_gets_ratio_of_its_traffic() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_retries=0, window_s=10, clock=clock)
    total = 0
    for _ in range(60):  # a minute of 100 invocations per second, all wanting retries
        for _ in range(100):
            budget.invocation_started("f")
        total += granted(budget, "f", 300)
        clock.now += 1
    assert total == pytest.approx(0.1 * 6000, abs=1)


def test_a_negative_ratio_turns_the_budget_off() -> None:
    budget = RetryBudget(ratio=-1, min_retries=0, window_s=10, clock=FakeClock())
    assert not budget.enabled
    assert granted(budget, "f", 1000) == 1000


def test_memory_per_function_is_bounded_by_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries=0, window_s=10, clock=clock)
    for _ in range(1000):
        budget.invocation_started("f")
        budget.allow_retry("f")
        clock.now += 1
    assert len(budget._windows["f"].buckets) <= 11


def test_retry_after_is_honoured_up_to_its_cap() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=300.0, retry_after_cap_s=120.0, rng=random.Random(3))
    assert policy.delay(1, retry_after_s=42.0) == 42.0
    assert policy.delay(1, retry_after_s=10**6) == 120.0  # a function cannot park an event for days
    assert policy.delay(1, retry_after_s=0.0) <= 1.0  # a past or zero Retry-After: normal backoff
