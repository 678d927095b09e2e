"""The bus contract every implementation (embedded SQLite, in-memory stub, Kafka) keeps.

* ``publish`` is durable when it returns, and all-or-nothing for the messages
  given in one call.
* Messages with the same key land in the same partition and are delivered in
  publish order within a subscription (per-key ordering).
* Delivery is at least once: a subscription resumes after the last *committed*
  position; a message is committed once it and every earlier message of its
  partition were ``ack``-ed. Consumers may finish messages out of order; the
  committed position only moves over a contiguous acked prefix.
* ``deliver_at`` delays a message durably (retries with backoff) without blocking
  the partition behind it: the message enters the log when it is due.
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_PARTITIONS = 8


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, str]
    timestamp: float  # when it entered the log (epoch seconds)


@dataclass(slots=True)
class Outgoing:
    topic: str
    value: bytes
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    deliver_at: float | None = None  # epoch seconds; None or past = now


def partition_for(key: str | None, partitions: int, fallback: int = 0) -> int:
    """Stable key -> partition mapping (crc32), the same in every process and run."""
    if key is None:
        return fallback % partitions
    return zlib.crc32(key.encode("utf-8")) % partitions


class Subscription(abc.ABC):
    """One consumer group's view of some topics."""

    @abc.abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` new messages; waits up to ``timeout`` s for the first one.

        Never returns more than the subscription's in-flight budget allows (messages
        fetched but not yet acked); that is the consumer's back-pressure.
        """

    @abc.abstractmethod
    def ack(self, message: Message) -> None:
        """Mark a message finished; its position is committed asynchronously."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Durably store the committed positions now."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def in_flight(self) -> int:
        """Messages fetched and not yet acked."""


class Bus(abc.ABC):
    # Whether topics can be added while running (the invoker's per-function overflow
    # lanes need it). The embedded bus can; Kafka consumers would have to rebalance.
    dynamic_topics: bool = True

    @abc.abstractmethod
    async def start(self) -> None: ...

    async def ready(self) -> None:
        """Every component has subscribed; start consuming. (Kafka needs this moment.)"""
        return None

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, *messages: Outgoing) -> None:
        """Durably append ``messages`` (atomically) before returning."""

    @abc.abstractmethod
    def subscribe(self, group: str, topics: Sequence[str], *, max_in_flight: int = 1000) -> Subscription: ...

    @abc.abstractmethod
    async def lag(self, group: str, topic: str) -> dict[int, int]:
        """Messages per partition not yet committed by ``group`` (delayed messages excluded)."""

    @abc.abstractmethod
    async def topics(self) -> list[str]:
        """Every topic that has ever had a message."""

    @abc.abstractmethod
    async def pending_delayed(self, topic: str) -> int:
        """Messages waiting for their ``deliver_at``."""
