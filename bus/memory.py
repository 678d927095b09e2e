"""In-memory bus with the same delivery semantics as the durable ones, minus durability.

For fast unit tests of code *using* a bus (invoker, connectors). It keeps the
contract that matters to them: per-key order, in-flight budget, contiguous
commits, redelivery of uncommitted messages to a new subscription, ``deliver_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Sequence

from bus.base import DEFAULT_PARTITIONS, Bus, Message, Outgoing, Subscription, partition_for
from bus.positions import PartitionPositions


class MemoryBus(Bus):
    def __init__(self, partitions: int = DEFAULT_PARTITIONS) -> None:
        self.partitions = partitions
        self.log: dict[tuple[str, int], list[Message]] = defaultdict(list)
        self.committed: dict[tuple[str, str, int], int] = {}
        self._changed = asyncio.Condition()
        self._timers: set[asyncio.TimerHandle] = set()
        self._delayed: dict[str, int] = defaultdict(int)
        self.published = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    async def publish(self, *messages: Outgoing) -> None:
        loop = asyncio.get_running_loop()
        now = time.time()
        for m in messages:
            if m.deliver_at is not None and m.deliver_at > now:
                self._delayed[m.topic] += 1
                handle = loop.call_later(m.deliver_at - now, self._deliver_later, m)
                self._timers.add(handle)
            else:
                self._append(m)
        async with self._changed:
            self._changed.notify_all()

    def _deliver_later(self, m: Outgoing) -> None:
        self._delayed[m.topic] -= 1
        self._append(m)

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def _append(self, m: Outgoing) -> None:
        part = partition_for(m.key, self.partitions, fallback=self.published)
        entries = self.log[(m.topic, part)]
        entries.append(Message(m.topic, part, len(entries), m.key, m.value, dict(m.headers), time.time()))
        self.published += 1

    def messages(self, topic: str) -> list[Message]:
        """Everything published to ``topic`` so far (for tests), partition by partition."""
        return [m for (t, _), entries in sorted(self.log.items()) if t == topic for m in entries]

    def subscribe(self, group: str, topics: Sequence[str], *, max_in_flight: int = 1000) -> Subscription:
        return MemorySubscription(self, group, list(topics), max_in_flight)

    async def lag(self, group: str, topic: str) -> dict[int, int]:
        return {
            p: len(self.log[(topic, p)]) - 1 - self.committed.get((group, topic, p), -1) for p in range(self.partitions)
        }

    async def topics(self) -> list[str]:
        return sorted({topic for topic, _ in self.log})

    async def pending_delayed(self, topic: str) -> int:
        return self._delayed[topic]


class MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, group: str, topics: list[str], max_in_flight: int) -> None:
        self.bus = bus
        self.group = group
        self.topics = topics
        self.max_in_flight = max_in_flight
        self._positions: dict[tuple[str, int], PartitionPositions] = {}
        self._closed = False

    def _position(self, topic: str, part: int) -> PartitionPositions:
        key = (topic, part)
        if key not in self._positions:
            self._positions[key] = PartitionPositions(self.bus.committed.get((self.group, topic, part), -1))
        return self._positions[key]

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self._positions.values())

    def _take(self, budget: int) -> list[Message]:
        out: list[Message] = []
        for topic in self.topics:
            for part in range(self.bus.partitions):
                pos = self._position(topic, part)
                entries = self.bus.log[(topic, part)]
                start = pos.last_delivered + 1
                for message in entries[start : start + budget - len(out)]:
                    pos.delivered(message.offset)
                    out.append(message)
                if len(out) >= budget:
                    return out
        return out

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        deadline = time.monotonic() + timeout
        async with self.bus._changed:
            while not self._closed:
                budget = min(max_messages, self.max_in_flight - self.in_flight)
                batch = self._take(budget) if budget > 0 else []
                if batch:
                    return batch
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self.bus._changed.wait()
        return []

    def ack(self, message: Message) -> None:
        pos = self._position(message.topic, message.partition)
        pos.ack(message.offset)
        if pos.dirty:
            self.bus.committed[(self.group, message.topic, message.partition)] = pos.committed
            pos.dirty = False

        async def notify() -> None:
            async with self.bus._changed:
                self.bus._changed.notify_all()

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(notify())

    async def commit(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True
