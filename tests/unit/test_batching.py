"""Stream batching: batch size, window, the 6 MB cap, and records for what cannot be batched."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bus.base import Outgoing
from bus.memory import MemoryBus
from invoker.batching import Batcher, register_assembler
from invoker.completion import Completion, CompletionHub
from invoker.envelope import INVOCATIONS_TOPIC, STREAM_TOPIC, InvocationEnvelope, StreamItem
from schemas.events.kafka import KafkaEvent
from schemas.records import AsyncStatus
from triggerbus.store.sqlite import SQLiteStore

URN = "urn:fss:local:p:function:default:f:latest"


def kafka_assembler(items: list[StreamItem]) -> dict:
    by_topic: dict[str, list[str]] = {}
    for item in items:
        by_topic.setdefault(item.data["topic"], []).append(item.data["message"])
    return KafkaEvent.build("local", "inst-1", list(by_topic.items()), event_time=1576737962).dump()


def broken_assembler(items: list[StreamItem]) -> dict:
    raise ValueError("field 'topic' missing")


register_assembler("TEST_KAFKA", kafka_assembler)
register_assembler("TEST_BROKEN", broken_assembler)


@dataclass
class Rig:
    bus: MemoryBus
    store: SQLiteStore
    batcher: Batcher
    completions: list[Completion]

    async def send(self, n: int, *, batch_size: int = 10, window_ms: int = 200, size: int = 10,
                   trigger_type: str = "TEST_KAFKA", start: int = 0) -> None:  # fmt: skip
        messages = [
            Outgoing(
                STREAM_TOPIC,
                StreamItem(
                    item_id=f"i{start + i}",
                    trigger_id="trig",
                    trigger_type=trigger_type,
                    function_urn=URN,
                    data={"topic": "orders", "message": f"m{start + i}"},
                    size=size,
                    source={"topic": "orders", "partition": 0, "offset": start + i},
                    batch_size=batch_size,
                    window_ms=window_ms,
                )
                .model_dump_json()
                .encode(),
                key="trig",
            )
            for i in range(n)
        ]
        await self.bus.publish(*messages)

    def batches(self) -> list[InvocationEnvelope]:
        return [InvocationEnvelope.from_bytes(m.value) for m in self.bus.messages(INVOCATIONS_TOPIC)]


@pytest.fixture
async def rig(store: SQLiteStore) -> AsyncIterator[Rig]:
    bus = MemoryBus(partitions=1)
    hub = CompletionHub()
    completions: list[Completion] = []
    hub.listen("trig", completions.append)
    batcher = Batcher(bus, store, completion=hub, max_batch_bytes=1000)
    await batcher.start()
    yield Rig(bus, store, batcher, completions)
    await batcher.close()


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_batch_size_closes_a_batch_into_one_documented_event(rig: Rig) -> None:
    await rig.send(25, batch_size=10, window_ms=10_000)
    await wait_for(lambda: len(rig.batches()) == 2)
    first = rig.batches()[0]
    event = json.loads(first.payload)
    assert event["trigger_type"] == "KAFKA"
    assert event["records"][0]["messages"] == [f"m{i}" for i in range(10)]
    assert event["records"][0]["topic_id"] == "orders"
    assert first.item_ids == [f"i{i}" for i in range(10)]
    assert first.trigger_id == "trig"
    assert first.source == {"topic": "orders", "partition": 0, "offset": 0, "last_offset": 9, "count": 10}
    await asyncio.sleep(0.2)
    assert len(rig.batches()) == 2  # the last 5 wait for the window


async def test_window_closes_a_partial_batch(rig: Rig) -> None:
    started = time.monotonic()
    await rig.send(3, batch_size=100, window_ms=300)
    await wait_for(lambda: len(rig.batches()) == 1)
    assert time.monotonic() - started >= 0.25
    assert len(json.loads(rig.batches()[0].payload)["records"][0]["messages"]) == 3


async def test_byte_cap_splits_batches(rig: Rig) -> None:
    await rig.send(10, batch_size=100, window_ms=300, size=300)  # cap 1000 bytes -> 3 per batch
    await wait_for(lambda: sum(len(b.item_ids) for b in rig.batches()) == 10)
    assert [len(b.item_ids) for b in rig.batches()] == [3, 3, 3, 1]


async def test_items_are_acked_only_after_their_batch_is_published(rig: Rig) -> None:
    await rig.send(5, batch_size=100, window_ms=400)
    await asyncio.sleep(0.2)
    assert rig.bus.committed.get((rig.batcher.group, STREAM_TOPIC, 0), -1) == -1
    await wait_for(lambda: len(rig.batches()) == 1)
    await wait_for(lambda: rig.bus.committed.get((rig.batcher.group, STREAM_TOPIC, 0)) == 4)


async def test_an_oversized_record_is_recorded_and_completed_not_lost_silently(rig: Rig) -> None:
    await rig.send(1, size=5000)
    await rig.send(2, batch_size=2, start=1)
    await wait_for(lambda: len(rig.completions) == 1 and len(rig.batches()) == 1)
    completion = rig.completions[0]
    assert completion.status is AsyncStatus.DISCARD
    assert completion.item_ids == ("i0",)
    record = await rig.store.get_record(completion.request_id)
    assert record is not None
    assert record.status is AsyncStatus.DISCARD
    assert record.error_code == 4413
    assert "5000 bytes exceeds the 1000-byte event limit" in record.error_message
    assert record.source["offset"] == 0
    assert rig.batches()[0].item_ids == ["i1", "i2"]  # the partition moved on


async def test_an_assembler_failure_becomes_a_fail_record(rig: Rig) -> None:
    await rig.send(2, batch_size=2, trigger_type="TEST_BROKEN")
    await wait_for(lambda: len(rig.completions) == 1)
    record = await rig.store.get_record(rig.completions[0].request_id)
    assert record is not None
    assert record.status is AsyncStatus.FAIL
    assert "could not build the TEST_BROKEN event: field 'topic' missing" in record.error_message
    assert rig.batches() == []


async def test_unknown_trigger_type_is_reported(rig: Rig) -> None:
    await rig.send(1, batch_size=1, trigger_type="NO_SUCH")
    await wait_for(lambda: len(rig.completions) == 1)
    record = await rig.store.get_record(rig.completions[0].request_id)
    assert record is not None and "no batch assembler is registered for trigger type NO_SUCH" in record.error_message
