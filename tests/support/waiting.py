"""Bounded waits for integration tests: poll a condition until it holds or a deadline passes.

Nothing in the tests asserts on timing; they wait for a condition instead, and a condition that
never holds fails the test with what it waited for (and the last value it saw).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any


async def wait_for(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Await ``check()`` every ``interval`` s until it returns something truthy, and return that.

    It is called at least once, and once more after the deadline passes; if it never holds, an
    AssertionError names ``what`` and the last value it returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


def sync_check(condition: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    """A synchronous condition (reading a file a function writes) as a check for :func:`wait_for`."""

    async def run() -> Any:
        return condition()

    return run


async def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """:func:`wait_for` with a synchronous condition."""
    return await wait_for(sync_check(condition), what, timeout, interval)


def bounded_waits(timeout: float, interval: float = 0.1) -> tuple[partial[Awaitable[Any]], partial[Awaitable[Any]]]:
    """A module's own :func:`wait_for` and :func:`wait_until`, with its default ``timeout`` and ``interval``
    (a call may still pass ``timeout=``): ``wait_for, wait_until = bounded_waits(40.0)``."""
    waits = {"timeout": timeout, "interval": interval}
    return partial(wait_for, **waits), partial(wait_until, **waits)
