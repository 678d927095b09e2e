"""Batching for stream triggers: many source records -> one FunctionGraph event.

Stream connectors (Kafka, RabbitMQ, DIS, DDS ...) publish one :class:`StreamItem`
per source record. The batcher groups items per trigger and closes a batch at
whichever comes first: ``batch_size`` items, the batching window (ms since the
batch's first item), or the 6 MB payload cap. The trigger type's *assembler*
turns the items into the documented event, which becomes one durable async
invocation (retries, destinations and records then work as for any invocation).

Items are acked on the bus once the batch invocation is published; the
*source* position is the connector's business and moves only when the
invocation reaches a terminal state (see :mod:`invoker.completion`).

Nothing blocks a partition: an item too large for any batch, or one the
assembler rejects, gets a DISCARD/FAIL record with the reason and is completed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bus.aio import Background, stop_tasks
from bus.base import Bus, Message, Outgoing
from invoker.completion import CompletionHub
from invoker.envelope import (
    DEADLETTER_TOPIC,
    INVOCATIONS_TOPIC,
    STREAM_TOPIC,
    InvocationEnvelope,
    StreamItem,
    new_request_id,
)
from invoker.ingest import ASSEMBLY_FAILED_CODE, OVERSIZED_CODE, reject_items, summarize_sources
from invoker.observer import NOOP, Observer
from invoker.records import RecordStore
from invoker.tracing import parent_and_links
from schemas.records import AsyncStatus

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 6 * 1024 * 1024

Assembler = Callable[[list[StreamItem]], Any]
_ASSEMBLERS: dict[str, Assembler] = {}


def register_assembler(trigger_type: str, assembler: Assembler) -> None:
    """Connectors register how their items become one event (a JSON-able object)."""
    _ASSEMBLERS[trigger_type] = assembler


def assembler_for(trigger_type: str) -> Assembler:
    try:
        return _ASSEMBLERS[trigger_type]
    except KeyError:
        raise LookupError(f"no batch assembler is registered for trigger type {trigger_type}") from None


@dataclass(slots=True)
class _OpenBatch:
    trigger_id: str
    items: list[tuple[Message, StreamItem]] = field(default_factory=list)
    size: int = 0
    opened: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None


class Batcher:
    def __init__(
        self,
        bus: Bus,
        records: RecordStore,
        *,
        completion: CompletionHub | None = None,
        group: str = "batcher",
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_in_flight: int = 20000,
        observer: Observer = NOOP,
    ) -> None:
        self.bus = bus
        self.records = records
        self.completion = completion or CompletionHub()
        self.group = group
        self.max_batch_bytes = max_batch_bytes
        self.max_in_flight = max_in_flight
        self._open: dict[str, _OpenBatch] = {}
        self._flushing = Background()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.rejected = 0
        self.observer = observer

    async def start(self) -> None:
        self._sub = self.bus.subscribe(self.group, [STREAM_TOPIC], max_in_flight=self.max_in_flight)
        self._task = asyncio.create_task(self._loop(), name="batcher")

    async def close(self) -> None:
        await stop_tasks(self._task)
        for batch in self._open.values():
            if batch.timer:
                batch.timer.cancel()
        await self._flushing.stop()  # unfinished batches stay unacked and come back
        await self._sub.close()

    async def _loop(self) -> None:
        while True:
            try:
                messages = await self._sub.fetch(1000, 0.5)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fetching stream items failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                await self._add(message)

    async def _add(self, message: Message) -> None:
        try:
            item = StreamItem.model_validate_json(message.value)
        except ValueError as exc:
            log.error("unreadable stream item at %s/%s: %s", message.partition, message.offset, exc)
            await self.bus.publish(
                Outgoing(DEADLETTER_TOPIC, message.value, headers={"from": STREAM_TOPIC, "reason": str(exc)[:500]})
            )
            self._sub.ack(message)
            return
        if item.size > self.max_batch_bytes:
            await self._reject(
                [(message, item)],
                AsyncStatus.DISCARD,
                OVERSIZED_CODE,
                f"record of {item.size} bytes exceeds the {self.max_batch_bytes}-byte event limit and was dropped",
            )
            return
        batch = self._open.get(item.trigger_id)
        if batch is not None and batch.size + item.size > self.max_batch_bytes:
            self._flush(item.trigger_id)
            batch = None
        if batch is None:
            batch = self._open[item.trigger_id] = _OpenBatch(item.trigger_id)
            if item.window_ms > 0:
                loop = asyncio.get_running_loop()
                batch.timer = loop.call_later(item.window_ms / 1000, self._flush, item.trigger_id, batch)
        batch.items.append((message, item))
        batch.size += item.size
        if len(batch.items) >= max(1, item.batch_size) or item.window_ms <= 0:
            self._flush(item.trigger_id)

    def _flush(self, trigger_id: str, expected: _OpenBatch | None = None) -> None:
        batch = self._open.get(trigger_id)
        if batch is None or (expected is not None and batch is not expected):
            return
        del self._open[trigger_id]
        if batch.timer is not None:
            batch.timer.cancel()
        self._flushing.spawn(self._publish(batch.items))

    async def _publish(self, entries: list[tuple[Message, StreamItem]]) -> None:
        items = [item for _, item in entries]
        first = items[0]
        try:
            event = assembler_for(first.trigger_type)(items)
            payload = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        except Exception as exc:
            await self._reject(
                entries,
                AsyncStatus.FAIL,
                ASSEMBLY_FAILED_CODE,
                f"could not build the {first.trigger_type} event: {exc}",
            )
            return
        # One invocation continues the first traced record's context and links the others'.
        trace, links = parent_and_links(item.trace for item in items)
        envelope = InvocationEnvelope(
            request_id=new_request_id(),
            function_urn=first.function_urn,
            payload=payload,
            trigger_id=first.trigger_id,
            trigger_type=first.trigger_type,
            source=summarize_sources(items),
            item_ids=[item.item_id for item in items],
            trace=trace,
            trace_links=links,
        )
        while True:
            try:
                await self.bus.publish(Outgoing(INVOCATIONS_TOPIC, envelope.to_bytes(), key=envelope.function_urn))
                break
            except Exception:
                log.exception("publishing a batch for trigger %s failed; retrying", first.trigger_id)
                await asyncio.sleep(1.0)
        self.batches += 1
        self.observer.trigger_batch(first.trigger_id, first.trigger_type, first.function_urn, len(items))
        for message, _ in entries:
            self._sub.ack(message)

    async def _reject(
        self, entries: list[tuple[Message, StreamItem]], status: AsyncStatus, code: int, reason: str
    ) -> None:
        """Record why these items will never be invoked, tell the connector, move on."""
        await reject_items(
            self.records,
            self.completion,
            [item for _, item in entries],
            status=status,
            code=code,
            reason=reason,
            observer=self.observer,
        )
        self.rejected += len(entries)
        for message, _ in entries:
            self._sub.ack(message)
