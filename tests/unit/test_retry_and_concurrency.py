"""Retry backoff and per-function concurrency gates."""

from __future__ import annotations

import asyncio
import random

import pytest

from invoker.concurrency import ConcurrencyLimiter
from invoker.retry import RetryPolicy
from invoker.runtime.base import ErrorCategory, InvocationError


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=300.0, rng=random.Random(1))
    for attempt, expected in ((1, 1), (2, 2), (3, 4), (4, 8), (10, 300), (30, 300)):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert min(delays) >= expected / 2
        assert max(delays) <= expected
        assert len({round(d, 6) for d in delays}) > 100  # jittered, not lock-step


def test_retry_after_wins_when_longer() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=300.0, rng=random.Random(2))
    assert policy.delay(1, retry_after_s=42.0) == 42.0
    assert policy.delay(1, retry_after_s=0.1) <= 1.0


def test_should_retry_counts_attempts_and_skips_cancels() -> None:
    policy = RetryPolicy()
    error = InvocationError(ErrorCategory.CODE_EXCEPTION, "x")
    assert policy.should_retry(error, attempts_made=1, max_retries=1)
    assert not policy.should_retry(error, attempts_made=2, max_retries=1)
    assert not policy.should_retry(error, attempts_made=1, max_retries=0)
    assert not policy.should_retry(InvocationError(ErrorCategory.CANCELED, "x"), 1, 3)


async def test_try_acquire_refuses_over_the_limit() -> None:
    gates = ConcurrencyLimiter()
    assert gates.try_acquire("f", 2)
    assert gates.try_acquire("f", 2)
    assert not gates.try_acquire("f", 2)
    assert gates.rejected == {"f": 1}
    gates.release("f")
    assert gates.try_acquire("f", 2)


async def test_waiters_are_served_in_order_and_limits_hold() -> None:
    gates = ConcurrencyLimiter()
    order: list[int] = []
    running = 0
    peak = 0

    async def job(i: int) -> None:
        nonlocal running, peak
        async with gates.slot("f", 3):
            order.append(i)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(job(i) for i in range(20)))
    assert peak == 3
    assert order == list(range(20))
    assert gates.running("f") == 0


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    gates = ConcurrencyLimiter()
    await gates.acquire("f", 1)
    waiter = asyncio.create_task(gates.acquire("f", 1))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gates.release("f")
    assert gates.running("f") == 0
    assert gates.try_acquire("f", 1)


async def test_raising_the_limit_wakes_waiters() -> None:
    gates = ConcurrencyLimiter()
    await gates.acquire("f", 1)
    waiter = asyncio.create_task(gates.acquire("f", 1))
    await asyncio.sleep(0)
    assert not waiter.done()
    assert not gates.try_acquire("f", 2)  # a waiter is queued: newcomers do not jump it
    await asyncio.sleep(0)
    assert waiter.done()
    assert gates.running("f") == 2
