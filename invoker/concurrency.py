"""Per-function concurrency: at most ``max_instance_num`` invocations of a function at once.

Sync callers that find the function at its limit are refused at once (HTTP 429,
``FSS.0429``), as FunctionGraph does; async invocations wait in the queue for a slot.
Waiters are served first come, first served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Gate:
    limit: int
    running: int = 0
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class ConcurrencyLimiter:
    def __init__(self) -> None:
        self._gates: dict[str, _Gate] = {}
        self.rejected: dict[str, int] = {}

    def _gate(self, key: str, limit: int) -> _Gate:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate(limit)
        elif gate.limit != limit:
            gate.limit = limit
            self._hand_over(gate)
        return gate

    @staticmethod
    def _hand_over(gate: _Gate) -> None:
        """Give free slots to waiters, oldest first."""
        while gate.waiters and gate.running < gate.limit:
            waiter = gate.waiters.pop(0)
            if not waiter.done():
                gate.running += 1
                waiter.set_result(None)

    def running(self, key: str) -> int:
        gate = self._gates.get(key)
        return gate.running if gate else 0

    def waiting(self, key: str) -> int:
        gate = self._gates.get(key)
        return len(gate.waiters) if gate else 0

    def try_acquire(self, key: str, limit: int) -> bool:
        gate = self._gate(key, limit)
        if gate.running < gate.limit and not gate.waiters:
            gate.running += 1
            return True
        self.rejected[key] = self.rejected.get(key, 0) + 1
        return False

    async def acquire(self, key: str, limit: int) -> None:
        gate = self._gate(key, limit)
        if gate.running < gate.limit and not gate.waiters:
            gate.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        gate.waiters.append(waiter)
        try:
            await waiter  # _hand_over() counted us in `running` before waking us
        except BaseException:
            if waiter in gate.waiters:
                gate.waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self.release(key)  # we were handed a slot but are going away
            raise

    def release(self, key: str) -> None:
        gate = self._gates[key]
        gate.running -= 1
        self._hand_over(gate)

    @contextlib.asynccontextmanager
    async def slot(self, key: str, limit: int) -> AsyncIterator[None]:
        await self.acquire(key, limit)
        try:
            yield
        finally:
            self.release(key)
