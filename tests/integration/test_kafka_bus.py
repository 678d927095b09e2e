"""The Kafka bus (faust-streaming) against a real Kafka-protocol broker (tansu)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from bus.base import Message, Outgoing, Subscription
from bus.kafka import KafkaBus
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def names() -> tuple[str, str]:
    return f"tb-test-{uuid.uuid4().hex[:8]}", f"topic-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def kafka_bus(
    bootstrap: str, app_id: str, topic: str, *, max_in_flight: int = 1000, topic_prefix: str | None = None
) -> AsyncIterator[tuple[KafkaBus, Subscription]]:
    bus = KafkaBus(
        bootstrap,
        app_id=app_id,
        partitions=4,
        topics=[topic],
        session_timeout_s=6,
        heartbeat_s=1,
        fetch_max_wait_ms=50,
        topic_prefix=topic_prefix,
    )
    await bus.start()
    sub = bus.subscribe("g", [topic], max_in_flight=max_in_flight)
    await bus.ready()
    try:
        yield bus, sub
    finally:
        await bus.close()


async def drain(sub: Subscription, n: int, timeout: float = 40.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(await sub.fetch(200, 0.5))
    return got


async def until(predicate: Callable[[], bool], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_per_key_order_and_headers(kafka_bootstrap: str) -> None:
    app_id, topic = names()
    async with kafka_bus(kafka_bootstrap, app_id, topic) as (bus, sub):
        await bus.publish(
            *[Outgoing(topic, f"{k}{i}".encode(), key=k, headers={"h": k}) for i in range(15) for k in "ab"]
        )
        got = await drain(sub, 30)
        assert len(got) == 30
        for k in "ab":
            assert [m.value.decode() for m in got if m.key == k] == [f"{k}{i}" for i in range(15)]
            assert {m.partition for m in got if m.key == k} and all(m.headers["h"] == k for m in got if m.key == k)


async def test_deployments_sharing_a_cluster_do_not_see_each_others_events(kafka_bootstrap: str) -> None:
    """Each deployment (app id) has its own topics: a new one must not replay an older one's backlog."""
    topic = f"topic-{uuid.uuid4().hex[:8]}"
    first, second = f"tb-test-{uuid.uuid4().hex[:8]}", f"tb-test-{uuid.uuid4().hex[:8]}"
    async with kafka_bus(kafka_bootstrap, first, topic) as (bus, _):
        await bus.publish(Outgoing(topic, b"first's", key="k"))
        assert bus.physical(topic) == f"{first}.{topic}"
    async with kafka_bus(kafka_bootstrap, second, topic) as (bus, sub):
        await bus.publish(Outgoing(topic, b"second's", key="k"))
        got = await drain(sub, 1)
        got += await sub.fetch(10, 1.0)  # anything else would arrive with it
        assert [m.value for m in got] == [b"second's"]
        assert got[0].topic == topic  # consumers see the bus's topic names, not Kafka's


async def test_only_contiguously_acked_offsets_are_committed(kafka_bootstrap: str) -> None:
    app_id, topic = names()
    async with kafka_bus(kafka_bootstrap, app_id, topic) as (bus, sub):
        await bus.publish(*[Outgoing(topic, str(i).encode(), key="same") for i in range(10)])
        got = await drain(sub, 10)
        for m in got[:3]:
            sub.ack(m)
        sub.ack(got[5])  # out of order: 3 and 4 still running
        await asyncio.sleep(0.5)
        await sub.commit()
        # (the committed offset, not lag(): tansu misreports end offsets after batched
        # produces, see docs/testing.md)
        admin, _ = await bus._clients()
        partition = TopicPartition(bus.physical(topic), got[0].partition)
        committed = await admin.list_consumer_group_offsets(app_id, partitions=[partition])
        assert committed[partition].offset == 3  # the next offset to read: 0-2 done, 3 and 4 not
    # a new process of the same group resumes after the contiguous prefix: 3..9 come again
    async with kafka_bus(kafka_bootstrap, app_id, topic) as (bus, sub):
        again = await drain(sub, 7)
        assert [int(m.value) for m in again] == list(range(3, 10))


async def test_delayed_messages_do_not_block_and_arrive_on_time(kafka_bootstrap: str) -> None:
    app_id, topic = names()
    async with kafka_bus(kafka_bootstrap, app_id, topic) as (bus, sub):
        start = time.time()
        await bus.publish(
            Outgoing(topic, b"in-7s", key="k", deliver_at=start + 7.0),
            Outgoing(topic, b"in-2s", key="k", deliver_at=start + 2.0),
            Outgoing(topic, b"now", key="k"),
        )
        arrivals: dict[bytes, float] = {}
        deadline = time.monotonic() + 40
        while len(arrivals) < 3 and time.monotonic() < deadline:
            for m in await sub.fetch(10, 0.2):
                arrivals[m.value] = time.time() - start
                sub.ack(m)
        assert set(arrivals) == {b"now", b"in-2s", b"in-7s"}
        assert arrivals[b"now"] < 2.0
        assert 2.0 <= arrivals[b"in-2s"] < 7.0
        assert arrivals[b"in-7s"] >= 7.0


async def test_back_pressure_bounds_in_flight(kafka_bootstrap: str) -> None:
    app_id, topic = names()
    async with kafka_bus(kafka_bootstrap, app_id, topic, max_in_flight=5) as (bus, sub):
        await bus.publish(*[Outgoing(topic, str(i).encode(), key=str(i)) for i in range(20)])
        first = await drain(sub, 5, timeout=30)
        assert len(first) == 5
        assert await sub.fetch(10, 1.0) == []  # nothing more until something is acked
        for m in first:
            sub.ack(m)
        rest: list[Message] = []
        deadline = time.monotonic() + 30
        while len(rest) < 15 and time.monotonic() < deadline:
            batch = await sub.fetch(10, 0.5)
            assert sub.in_flight <= 5
            for m in batch:
                sub.ack(m)
            rest.extend(batch)
        assert sorted(int(m.value) for m in first + rest) == list(range(20))


async def test_members_share_partitions_and_take_over_from_a_killed_one(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id, topic = names()
    out = tmp_path / "member.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    other = subprocess.Popen(
        [sys.executable, "-m", "tests.support.kafka_member", kafka_bootstrap, app_id, topic, str(out)],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        async with kafka_bus(kafka_bootstrap, app_id, topic) as (bus, sub):
            mine: list[Message] = []

            async def pull() -> None:
                while True:
                    for m in await sub.fetch(100, 0.2):
                        mine.append(m)
                        sub.ack(m)

            puller = asyncio.create_task(pull())

            def theirs() -> list[str]:
                return out.read_text().splitlines() if out.exists() else []

            # Publish until both members have received something: the group has settled.
            sent = 0
            deadline = time.monotonic() + 90
            while not (mine and theirs()):
                assert time.monotonic() < deadline, "the two members never shared the work"
                await bus.publish(*[Outgoing(topic, f"{sent + i}".encode(), key=f"k{sent + i}") for i in range(8)])
                sent += 8
                await asyncio.sleep(1.0)
            shared_a = {m.partition for m in mine}
            shared_b = {int(line.split()[0]) for line in theirs()}
            other.send_signal(signal.SIGKILL)
            other.wait(timeout=10)
            await bus.publish(*[Outgoing(topic, f"{sent + i}".encode(), key=f"k{sent + i}") for i in range(100)])
            sent += 100

            def values() -> set[int]:
                return {int(m.value) for m in mine} | {int(line.split()[2]) for line in theirs()}

            await until(lambda: values() >= set(range(sent)), timeout=90)
            puller.cancel()
            assert shared_a and shared_b
            assert {m.partition for m in mine} == {0, 1, 2, 3}  # the survivor took over every partition
            duplicates = len(mine) + len(theirs()) - len(values())
            print(f"sent {sent}, duplicates after takeover: {duplicates}")
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(timeout=10)


async def test_broadcast_reaches_every_process(kafka_bootstrap: str) -> None:
    # (two Faust apps of one group in one process keep rebalancing: give each its own group,
    # on the same topics, as two processes of one deployment have)
    (app_a, topic), (app_b, _) = names(), names()
    broadcast = f"bcast-{uuid.uuid4().hex[:6]}"
    heard: dict[str, list[bytes]] = {"a": [], "b": []}
    async with (
        kafka_bus(kafka_bootstrap, app_a, topic, topic_prefix=app_a) as (bus_a, _),
        kafka_bus(kafka_bootstrap, app_b, topic, topic_prefix=app_a) as (bus_b, _),
    ):
        bus_a.listen_broadcast(broadcast, lambda m: heard["a"].append(m.value))
        bus_b.listen_broadcast(broadcast, lambda m: heard["b"].append(m.value))
        await asyncio.sleep(3)  # both listeners positioned at the end
        await bus_a.publish(*[Outgoing(broadcast, str(i).encode(), key=str(i)) for i in range(10)])
        await until(lambda: len(heard["a"]) == 10 and len(heard["b"]) == 10)
        assert sorted(heard["a"]) == sorted(heard["b"])
