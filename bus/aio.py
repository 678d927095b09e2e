"""Small asyncio helpers every long-running component uses to stop cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def stop_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` and wait until they are really done.

    Cancels again while a task is still running: a cancellation can be swallowed (the
    task caught it, or Python 3.11's ``wait_for`` raced), and ``close()`` must not hang.
    """
    live = [t for t in tasks if t is not None and not t.done()]
    for task in live:
        task.cancel()
    while live:
        _, pending = await asyncio.wait(live, timeout=1.0)
        for task in pending:
            task.cancel()
        live = list(pending)
    for finished in tasks:
        if finished is not None and finished.done() and not finished.cancelled():
            finished.exception()  # retrieved: no "exception was never retrieved" noise


class Background:
    """Fire-and-forget tasks (one per message being handled) that stop together."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        await stop_tasks(*self._tasks)
