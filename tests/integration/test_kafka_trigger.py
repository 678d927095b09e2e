"""KAFKA / OPENSOURCEKAFKA triggers against a real Kafka-protocol broker (tansu) and a real service.

Covered: the documented event shape and batch sizes, binary payloads, async records with source
coordinates, commits that wait for unfinished records, a poison batch that fails to its
destination while the partition moves on, the >6 MB drop rule, resuming after a restart, the
checkpoint API, start positions, and precise 400s for bad configs.

tansu is not Apache Kafka (memory storage, slow group joins): topics are created by the tests
with unique names, consumer groups use short session timeouts (``CONSUMER_TUNING``), and waits
are generous but nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import connectors.kafka as kafka_connector
from connectors.base import TriggerSpec
from invoker.completion import Completion, CompletionHub
from invoker.envelope import StreamItem
from schemas.records import AsyncStatus
from tests.integration.conftest import Harness, failures_to_function, free_port, make_settings, running
from tests.support.connectors import node_context
from tests.support.recording import BATCH_RECORDER, batch_messages, read_jsonl
from tests.support.waiting import bounded_waits
from triggerbus.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

TUNING = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "fetch_max_wait_ms": 50}
WAIT = 60.0  # generous: tansu group joins take seconds
wait_for, _ = bounded_waits(WAIT)

SINK = "def handler(event, context):\n    return event\n"


@pytest.fixture(autouse=True)
def short_group_timeouts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(kafka_connector, "CONSUMER_TUNING", dict(TUNING))
    yield


# -- helpers ---------------------------------------------------------------------------------------------


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def produce(
    bootstrap: str, topic: str, values: list[bytes], partition: int | None = None
) -> list[tuple[int, int, int]]:
    """Send ``values`` in order; returns (partition, offset, timestamp ms) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        sent = []
        for value in values:
            meta = await producer.send_and_wait(topic, value, partition=partition)
            sent.append((meta.partition, meta.offset, meta.timestamp))
        return sent
    finally:
        await producer.stop()


def committed(checkpoint: dict[str, Any]) -> dict[tuple[str, int], int | None]:
    return {(p["topic"], p["partition"]): p["committed"] for p in checkpoint["partitions"]}


async def wait_committed(h: Harness, urn: str, code: str, trigger_id: str, want: dict[tuple[str, int], int]) -> None:
    async def check() -> bool:
        return committed(await h.get_checkpoint(urn, code, trigger_id)) == want

    await wait_for(check, f"committed offsets {want}")


async def recorder(h: Harness, tmp_path: Path, name: str, **extra: Any) -> tuple[str, Path]:
    """BATCH_RECORDER as function ``name`` (gate file ``tmp_path/<name>.gate``): its URN and output file."""
    return await h.create_recorder(name, BATCH_RECORDER, tmp_path, "gate", **extra)


# -- tests -----------------------------------------------------------------------------------------------


async def test_events_batches_binary_payloads_and_records(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic_a, topic_b = unique("orders"), unique("payments")
    await create_topics(kafka_bootstrap, [topic_a, topic_b], partitions=2)
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path, "kfk")
        status, trigger = await h.create_trigger(
            urn,
            "OPENSOURCEKAFKA",
            {
                "kafka_connect_address": kafka_bootstrap,
                "topic_ids": [topic_a, topic_b],
                "batch_size": 10,
                "batch_window_ms": 100,
            },
        )
        assert status == 201, trigger
        assert trigger["trigger_status"] == "DISABLED"  # OPENSOURCEKAFKA triggers start disabled
        assert trigger["event_data"]["start_position"] == "LATEST"
        trigger_id = trigger["trigger_id"]
        await h.set_trigger_status(urn, "OPENSOURCEKAFKA", trigger_id, "ACTIVE")

        binary = b"\xff\xfe\x00\x01binary"
        texts_a = [f"a-{i}" for i in range(30)]
        texts_b = [f"b-{i}" for i in range(30)] + ["héllo ✓ 世界"]
        await asyncio.gather(
            produce(
                kafka_bootstrap,
                topic_a,
                [t.encode() for t in texts_a[:15]] + [binary] + [t.encode() for t in texts_a[15:]],
            ),
            produce(kafka_bootstrap, topic_b, [t.encode() for t in texts_b]),
        )
        expected = Counter(texts_a + texts_b)

        async def all_arrived() -> bool:
            got = Counter(batch_messages(out))
            return all(got[m] >= n for m, n in expected.items()) and len(batch_messages(out)) >= 62

        await wait_for(all_arrived, "every produced message")

        events = read_jsonl(out)
        for event in events:
            assert set(event) == {"event_version", "event_time", "trigger_type", "region", "instance_id", "records"}
            assert event["event_version"] == "v1.0"
            assert isinstance(event["event_time"], int) and event["event_time"] > 1_500_000_000
            assert event["trigger_type"] == "KAFKA"
            assert event["region"] == h.server.settings.region
            assert event["instance_id"] == ""  # OPENSOURCEKAFKA without an instance_id
            assert 1 <= sum(len(r["messages"]) for r in event["records"]) <= 10
            topics = [r["topic_id"] for r in event["records"]]
            assert len(topics) == len(set(topics))  # one record per topic
            for record in event["records"]:
                assert set(record) - {"base64_messages"} == {"messages", "topic_id", "instance_id"}
                assert record["topic_id"] in (topic_a, topic_b)
                assert record["instance_id"] == ""
                assert all(isinstance(m, str) for m in record["messages"])
        flagged = [(r, i) for e in events for r in e["records"] for i in r.get("base64_messages", [])]
        assert flagged, "the binary message must arrive flagged"
        assert all(r["topic_id"] == topic_a for r, _ in flagged)
        assert {base64.b64decode(r["messages"][i]) for r, i in flagged} == {binary}
        for topic, texts in ((topic_a, texts_a), (topic_b, texts_b)):
            seen = {m for e in events for r in e["records"] if r["topic_id"] == topic for m in r["messages"]}
            assert set(texts) <= seen  # each message under its own topic

        # every batch is an async record with its source coordinates
        async def all_success() -> list[dict[str, Any]] | None:
            found = await h.invocations(urn, trigger_id=trigger_id)
            return found if found and all(r["status"] == "SUCCESS" for r in found) else None

        found = await wait_for(all_success, "SUCCESS records")
        assert len(found) == len(read_jsonl(out))
        for record in found:
            assert record["trigger_type"] == "OPENSOURCEKAFKA"
            source = record["source"]
            assert source["topic"] in (topic_a, topic_b)
            assert isinstance(source["partition"], int) and isinstance(source["offset"], int)
            assert 1 <= source["count"] <= 10
        # records can be searched by source coordinates
        first = found[0]["source"]
        by_source = await h.invocations(
            urn,
            **{
                "source.topic": first["topic"],
                "source.partition": str(first["partition"]),
                "source.offset": str(first["offset"]),
            },
        )
        assert found[0]["request_id"] in {r["request_id"] for r in by_source}

        # offsets are committed once everything finished
        ends: dict[tuple[str, int], int] = {}
        checkpoint = await h.get_checkpoint(urn, "OPENSOURCEKAFKA", trigger_id)
        assert checkpoint["group"] == f"triggerbus-{trigger_id}"
        for p in checkpoint["partitions"]:
            ends[(p["topic"], p["partition"])] = p["end_offset"]
        assert sum(ends.values()) == 62 and len(ends) == 4
        await wait_committed(h, urn, "OPENSOURCEKAFKA", trigger_id, ends)
        checkpoint = await h.get_checkpoint(urn, "OPENSOURCEKAFKA", trigger_id)
        assert all(p["lag"] == 0 for p in checkpoint["partitions"])

        state = (await h.get_trigger(urn, "OPENSOURCEKAFKA", trigger_id))["state"]
        assert state["consumer_state"] == "running"
        assert state["dropped"] == 0
        assert state["finished"].get("SUCCESS") == 62
        assert {(p["topic"], p["partition"]) for p in state["partitions"]} == set(ends)


async def test_commits_wait_for_unfinished_records(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = unique("slow")
    await create_topics(kafka_bootstrap, [topic])
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path, "slow")
        data = {"kafka_connect_address": kafka_bootstrap, "topic_ids": [topic], "batch_size": 1, "batch_window_ms": 0}
        trigger_id = await h.add_active_trigger(urn, "OPENSOURCEKAFKA", data)
        values = ["m0", "m1", "BLOCK-2"] + [f"m{i}" for i in range(3, 10)]
        await produce(kafka_bootstrap, topic, [v.encode() for v in values], partition=0)

        async def later_ones_done() -> bool:
            got = set(batch_messages(out))
            return {f"m{i}" for i in range(3, 10)} | {"m0", "m1"} <= got

        await wait_for(later_ones_done, "the records after the blocked one")
        assert "BLOCK-2" not in batch_messages(out)  # still running
        # m3..m9 finished, but offset 2 did not: the group may only have committed up to it
        await wait_committed(h, urn, "OPENSOURCEKAFKA", trigger_id, {(topic, 0): 2})
        for _ in range(5):
            await asyncio.sleep(0.2)
            assert committed(await h.get_checkpoint(urn, "OPENSOURCEKAFKA", trigger_id)) == {(topic, 0): 2}
        (tmp_path / "slow.gate").touch()
        await wait_committed(h, urn, "OPENSOURCEKAFKA", trigger_id, {(topic, 0): 10})
        assert Counter(batch_messages(out)) == Counter(values)


async def test_in_flight_records_are_bounded_per_partition(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_connector, "MIN_IN_FLIGHT", 6)  # batch_size 1: at most 6 unfinished records
    topic = unique("bounded")
    await create_topics(kafka_bootstrap, [topic])
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path, "bounded")
        data = {"kafka_connect_address": kafka_bootstrap, "topic_ids": [topic], "batch_size": 1, "batch_window_ms": 0}
        trigger_id = await h.add_active_trigger(urn, "OPENSOURCEKAFKA", data)
        values = [f"BLOCK-{i}" for i in range(30)]  # every invocation waits for the gate
        await produce(kafka_bootstrap, topic, [v.encode() for v in values], partition=0)

        async def paused() -> dict[str, Any] | None:
            state = (await h.get_trigger(urn, "OPENSOURCEKAFKA", trigger_id)).get("state", {})
            parts = state.get("partitions", [])
            return parts[0] if parts and parts[0]["paused"] else None

        partition = await wait_for(paused, "the partition to pause")
        assert partition["in_flight"] == 6
        assert partition["position"] == 6
        for _ in range(3):
            await asyncio.sleep(0.3)
            state = (await h.get_trigger(urn, "OPENSOURCEKAFKA", trigger_id))["state"]
            assert state["partitions"][0]["in_flight"] <= 6
            assert state["partitions"][0]["position"] == 6
        (tmp_path / "bounded.gate").touch()
        await wait_committed(h, urn, "OPENSOURCEKAFKA", trigger_id, {(topic, 0): 30})
        assert Counter(batch_messages(out)) == Counter(values)
        state = (await h.get_trigger(urn, "OPENSOURCEKAFKA", trigger_id))["state"]
        assert state["partitions"][0]["paused"] is False
        assert state["partitions"][0]["lag"] == 0


async def test_poison_batch_fails_to_its_destination_and_the_partition_moves_on(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic = unique("poison")
    await create_topics(kafka_bootstrap, [topic])
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path, "poisoned")
        sink = await h.create_function("sink", SINK)
        await h.set_async_config(urn, failures_to_function(sink, retries=0))
        data = {"kafka_connect_address": kafka_bootstrap, "topic_ids": [topic], "batch_size": 5, "batch_window_ms": 50}
        trigger_id = await h.add_active_trigger(urn, "OPENSOURCEKAFKA", data)

        first = ["m0", "m1", "m2", "POISON-3", "m4"]
        await produce(kafka_bootstrap, topic, [v.encode() for v in first], partition=0)

        async def failed() -> list[dict[str, Any]]:
            return await h.invocations(urn, status="FAIL")

        fail = (await wait_for(failed, "the FAIL record of the poison batch"))[0]
        assert fail["trigger_id"] == trigger_id
        source = fail["source"]
        assert source["topic"] == topic and source["partition"] == 0
        assert source["offset"] <= 3 <= source.get("last_offset", source["offset"])
        detail = await h.wait_terminal(urn, fail["request_id"])
        assert detail["destination"]["status"] == "delivered"
        sink_record = await h.wait_terminal(sink, detail["destination"]["request_id"])
        assert sink_record["status"] == "SUCCESS"
        delivered = json.loads(sink_record["payload"])
        assert delivered["request_context"]["request_id"] == fail["request_id"]
        assert "POISON-3" in json.loads(delivered["request_payload"])["records"][0]["messages"]

        # the partition moves on: later records are processed and everything is committed
        later = [f"n{i}" for i in range(5)]
        await produce(kafka_bootstrap, topic, [v.encode() for v in later], partition=0)

        async def later_done() -> bool:
            return set(later) <= set(batch_messages(out))

        await wait_for(later_done, "records after the poison batch")
        await wait_committed(h, urn, "OPENSOURCEKAFKA", trigger_id, {(topic, 0): 10})
        state = (await h.get_trigger(urn, "OPENSOURCEKAFKA", trigger_id))["state"]
        assert state["finished"].get("FAIL", 0) >= 1


async def test_records_over_6_mb_are_dropped_with_a_record_and_an_audit_entry(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic = unique("big")
    await create_topics(kafka_bootstrap, [topic])
    big = b"x" * (6 * 1024 * 1024 + 512 * 1024)  # 6.5 MB: tansu accepts it (max_request_size raised)
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path, "big")
        data = {"kafka_connect_address": kafka_bootstrap, "topic_ids": [topic], "batch_size": 10, "batch_window_ms": 50}
        trigger_id = await h.add_active_trigger(urn, "OPENSOURCEKAFKA", data)
        await produce(kafka_bootstrap, topic, [b"small-0", big, b"small-2"], partition=0)

        async def discarded() -> list[dict[str, Any]]:
            return await h.invocations(urn, status="DISCARD")

        drop = (await wait_for(discarded, "the DISCARD record"))[0]
        assert drop["trigger_id"] == trigger_id
        assert drop["error_code"] == 4413
        assert drop["source"]["topic"] == topic
        assert drop["source"]["partition"] == 0
        assert drop["source"]["offset"] == 1
        assert drop["source"]["size"] == len(big)
        message = drop["error_message"]
        assert f"{topic}/0@1" in message and str(len(big)) in message
        assert "FunctionGraph drops Kafka records over 6 MB" in message

        async def small_ones() -> bool:
            return sorted(batch_messages(out)) == ["small-0", "small-2"]

        await wait_for(small_ones, "the small records")
        await wait_committed(h, urn, "OPENSOURCEKAFKA", trigger_id, {(topic, 0): 3})
        audit = [a for a in await h.service.store.audit_log(200) if a["action"] == "kafkaRecordDropped"]
        assert len(audit) == 1
        assert audit[0]["resource"] == trigger_id
        assert audit[0]["detail"]["topic"] == topic
        assert audit[0]["detail"]["partition"] == 0
        assert audit[0]["detail"]["offset"] == 1
        assert audit[0]["detail"]["size"] == len(big)
        assert audit[0]["detail"]["request_id"] == drop["request_id"]
        state = (await h.get_trigger(urn, "OPENSOURCEKAFKA", trigger_id))["state"]
        assert state["dropped"] == 1


async def test_restart_resumes_and_checkpoints_can_be_read_and_moved(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = unique("resume")
    await create_topics(kafka_bootstrap, [topic], partitions=2)
    code = "OPENSOURCEKAFKA"
    data = {"kafka_connect_address": kafka_bootstrap, "topic_ids": [topic], "batch_size": 10, "batch_window_ms": 50}
    first = [f"first-{i}" for i in range(10)]
    second = [f"second-{i}" for i in range(6)]
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path, "resume")
        trigger_id = await h.add_active_trigger(urn, code, data)
        for i, value in enumerate(first):
            await produce(kafka_bootstrap, topic, [value.encode()], partition=i % 2)

        async def first_done() -> bool:
            return set(first) <= set(batch_messages(out))

        await wait_for(first_done, "the first messages")
        await wait_committed(h, urn, code, trigger_id, {(topic, 0): 5, (topic, 1): 5})

    # the service is down: these wait in Kafka
    between_ms = int(time.time() * 1000)
    await asyncio.sleep(0.05)
    sent_second = []
    for i, value in enumerate(second):
        sent_second += await produce(kafka_bootstrap, topic, [value.encode()], partition=i % 2)

    async with running(make_settings(tmp_path / "data")) as h:

        async def second_done() -> bool:
            return set(second) <= set(batch_messages(out))

        await wait_for(second_done, "the messages produced while the service was down")
        await wait_committed(h, urn, code, trigger_id, {(topic, 0): 8, (topic, 1): 8})
        assert Counter(batch_messages(out)) == Counter(first + second)  # nothing lost, nothing replayed

        # checkpoint API: moving offsets needs the trigger disabled
        status, error = await h.put_checkpoint(urn, code, trigger_id, {"partitions": []})
        assert status == 409, error
        assert "disable" in error["error_msg"]
        await h.set_trigger_status(urn, code, trigger_id, "DISABLED")
        bad_bodies: list[tuple[dict[str, Any], str]] = [
            ({}, "either"),
            ({"partitions": [{"topic": "other", "partition": 0, "offset": 0}]}, "not one of the trigger's topic_ids"),
            ({"partitions": [{"topic": topic, "partition": 7, "offset": 0}]}, "has no partition 7"),
            ({"partitions": [{"topic": topic, "partition": 0, "offset": -1}]}, "must be an integer >= 0"),
            ({"partitions": [{"topic": topic, "partition": 0, "offset": 99}]}, "outside the partition's offsets 0-8"),
            ({"timestamp": "yesterday"}, "epoch milliseconds"),
        ]
        for body, message in bad_bodies:
            status, error = await h.put_checkpoint(urn, code, trigger_id, body)
            assert status == 400, (body, error)
            assert error["error_code"] == "FSS.0400"
            assert message in error["error_msg"], (body, error)

        # a timestamp resolves per partition to the first record at or after it
        status, moved = await h.put_checkpoint(urn, code, trigger_id, {"timestamp": between_ms})
        assert status == 200, moved
        first_after: dict[int, int] = {}
        for partition, offset, _ in sent_second:
            first_after.setdefault(partition, offset)
        assert committed(moved) == {(topic, p): o for p, o in first_after.items()}

        # back to 0 everywhere: everything is delivered again once re-enabled
        body = {"partitions": [{"topic": topic, "partition": p, "offset": 0} for p in (0, 1)]}
        status, moved = await h.put_checkpoint(urn, code, trigger_id, body)
        assert status == 200, moved
        assert committed(moved) == {(topic, 0): 0, (topic, 1): 0}
        assert all(p["lag"] == 8 for p in moved["partitions"])
        audit = [a for a in await h.service.store.audit_log(200) if a["action"] == "setTriggerCheckpoint"]
        assert len(audit) == 2 and audit[0]["resource"] == trigger_id
        await h.set_trigger_status(urn, code, trigger_id, "ACTIVE")

        async def redelivered() -> bool:
            counts = Counter(batch_messages(out))
            return all(counts[m] >= 2 for m in first + second)

        await wait_for(redelivered, "the redelivered messages")
        await wait_committed(h, urn, code, trigger_id, {(topic, 0): 8, (topic, 1): 8})


async def test_start_positions_and_dms_instances(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = unique("start")
    await create_topics(kafka_bootstrap, [topic])
    old = [f"old-{i}" for i in range(5)]
    await produce(kafka_bootstrap, topic, [v.encode() for v in old[:3]], partition=0)
    await asyncio.sleep(0.05)  # the TIMESTAMP trigger starts strictly after old-2
    sent = await produce(kafka_bootstrap, topic, [v.encode() for v in old[3:]], partition=0)
    settings = make_settings(tmp_path / "data", kafka_instances={"dms-instance-1": kafka_bootstrap})
    async with running(settings) as h:
        base = {"topic_ids": [topic], "batch_size": 10, "batch_window_ms": 50}
        plans: dict[str, tuple[str, dict[str, Any]]] = {
            "earliest": ("OPENSOURCEKAFKA", {"kafka_connect_address": kafka_bootstrap, "start_position": "earliest"}),
            "latest": ("OPENSOURCEKAFKA", {"kafka_connect_address": kafka_bootstrap}),
            "since": (
                "OPENSOURCEKAFKA",
                {
                    "kafka_connect_address": kafka_bootstrap,
                    "start_position": "TIMESTAMP",
                    "start_timestamp": sent[0][2],
                },
            ),
            "dms": ("KAFKA", {"instance_id": "dms-instance-1", "start_position": "EARLIEST"}),
        }
        outs: dict[str, Path] = {}
        for name, (code, extra) in plans.items():
            urn, outs[name] = await recorder(h, tmp_path, name)
            status, trigger = await h.create_trigger(urn, code, {**base, **extra})
            assert status == 201, trigger
            await h.set_trigger_status(urn, code, trigger["trigger_id"], "ACTIVE")
        new = [f"new-{i}" for i in range(5)]
        await produce(kafka_bootstrap, topic, [v.encode() for v in new], partition=0)
        want = {
            "earliest": old + new,
            "latest": new,
            "since": old[3:] + new,
            "dms": old + new,
        }

        async def all_done() -> bool:
            return all(set(want[name]) <= set(batch_messages(outs[name])) for name in want)

        await wait_for(all_done, "every trigger's messages")
        await asyncio.sleep(1.0)  # anything extra would have shown up by now
        for name, expected in want.items():
            assert sorted(batch_messages(outs[name])) == sorted(expected), name
        for event in read_jsonl(outs["dms"]):
            assert event["instance_id"] == "dms-instance-1"
            assert all(r["instance_id"] == "dms-instance-1" for r in event["records"])


class CompletingIngest:
    """Stands in for a service process's bus + invoker: every published item finishes shortly after."""

    def __init__(self, completion: CompletionHub) -> None:
        self.completion = completion
        self.seen: Counter[tuple[int, int]] = Counter()

    async def publish(self, items: list[StreamItem]) -> None:
        for item in items:
            self.seen[(item.source["partition"], item.source["offset"])] += 1
        done = Completion(str(uuid.uuid4()), items[0].trigger_id, tuple(i.item_id for i in items), AsyncStatus.SUCCESS)
        asyncio.get_running_loop().call_later(0.02, self.completion.receive, done)

    async def reject(self, items: list[StreamItem], **kw: Any) -> str:
        raise AssertionError("nothing is rejected here")


def connector_process(store: SQLiteStore, name: str) -> tuple[kafka_connector.KafkaConnector, CompletingIngest]:
    completion = CompletionHub()
    ingest = CompletingIngest(completion)
    return kafka_connector.KafkaConnector(node_context(store, name, completion, ingest=ingest)), ingest


async def test_two_consumers_of_one_trigger_split_partitions_and_hand_them_over(
    kafka_bootstrap: str, store: SQLiteStore
) -> None:
    """Connector level: two "processes" run the same trigger (one consumer group); one stops."""
    topic = unique("split")
    await create_topics(kafka_bootstrap, [topic], partitions=4)
    spec = TriggerSpec(
        trigger_id=str(uuid.uuid4()),
        function_urn="urn:fss:local:proj1:function:default:split:latest",
        trigger_type="OPENSOURCEKAFKA",
        event_data={"kafka_connect_address": kafka_bootstrap, "topic_ids": [topic], "start_position": "EARLIEST"},
        created=time.time(),
    )
    a, seen_a = connector_process(store, "process-a")
    b, seen_b = connector_process(store, "process-b")

    async def produce_round(n: int) -> set[tuple[int, int]]:
        sent = set()
        for i in range(40):
            partition, offset, _ = (await produce(kafka_bootstrap, topic, [f"r{n}-{i}".encode()], partition=i % 4))[0]
            sent.add((partition, offset))
        return sent

    async def covered(sent: set[tuple[int, int]]) -> bool:
        return sent <= set(seen_a.seen) | set(seen_b.seen)

    def assigned(connector: kafka_connector.KafkaConnector) -> set[int]:
        return {p["partition"] for p in connector.status(spec.trigger_id).get("partitions", [])}

    try:
        await a.activate(spec)
        sent = await produce_round(1)
        await wait_for(lambda: covered(sent), "round 1 through process A")
        await b.activate(spec)

        async def split() -> bool:
            return bool(assigned(a)) and bool(assigned(b)) and assigned(a) | assigned(b) == {0, 1, 2, 3}

        await wait_for(split, "the partitions split over A and B")
        assert not assigned(a) & assigned(b)
        sent |= await produce_round(2)
        await wait_for(lambda: covered(sent), "round 2 through A and B")
        await a.deactivate(spec.trigger_id)

        async def b_has_all() -> bool:
            return assigned(b) == {0, 1, 2, 3}

        await wait_for(b_has_all, "B taking over every partition")
        sent |= await produce_round(3)
        await wait_for(lambda: covered(sent), "round 3 through B")
        await wait_committed_direct(b, spec, {(topic, p): 30 for p in range(4)})
        total = sum(seen_a.seen.values()) + sum(seen_b.seen.values())
        # at least once: nothing lost; duplicates are allowed but a clean handover should have none
        assert total - len(sent) == 0, f"{total - len(sent)} duplicate deliveries"
    finally:
        await a.close()
        await b.close()


async def wait_committed_direct(
    connector: kafka_connector.KafkaConnector, spec: TriggerSpec, want: dict[tuple[str, int], int]
) -> None:
    async def check() -> bool:
        return committed(await connector.get_checkpoint(spec)) == want

    await wait_for(check, f"committed offsets {want}")


async def test_invalid_configs_get_precise_400s(tmp_path: Path, kafka_bootstrap: str) -> None:
    settings = make_settings(tmp_path / "data", kafka_instances={"known-instance": kafka_bootstrap})
    async with running(settings) as h:
        urn = await h.create_function("cfg", SINK)
        good = {"kafka_connect_address": kafka_bootstrap, "topic_ids": ["t1"]}
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("OPENSOURCEKAFKA", {**good, "kafka_connect_address": "broker:notaport"}, "kafka_connect_address"),
            ("OPENSOURCEKAFKA", {**good, "kafka_connect_address": "a:9092,,b:9092"}, "empty entry"),
            ("OPENSOURCEKAFKA", {"topic_ids": ["t1"]}, "kafka_connect_address"),
            ("KAFKA", {"instance_id": "nope", "topic_ids": ["t1"]}, "unknown Kafka instance 'nope'"),
            ("OPENSOURCEKAFKA", {**good, "batch_size": 0}, "batch_size"),
            ("OPENSOURCEKAFKA", {**good, "batch_size": 1001}, "batch_size"),
            ("OPENSOURCEKAFKA", {**good, "start_position": "MIDDLE"}, "start_position: must be one of LATEST"),
            ("OPENSOURCEKAFKA", {**good, "start_position": "TIMESTAMP"}, "start_timestamp: is required"),
            ("OPENSOURCEKAFKA", {**good, "start_timestamp": 5}, "only applies to start_position TIMESTAMP"),
            ("OPENSOURCEKAFKA", {**good, "batch_window_ms": 300001}, "batch_window_ms: must be between 0 and 300000"),
            ("OPENSOURCEKAFKA", {**good, "topic_ids": []}, "topic_ids"),
            ("OPENSOURCEKAFKA", {**good, "topic_ids": ["bad topic!"]}, "not a valid Kafka topic name"),
            ("OPENSOURCEKAFKA", {**good, "topic_ids": ["t1", "t1"]}, "listed twice"),
            ("OPENSOURCEKAFKA", {**good, "kafka_user": "u"}, "kafka_password"),
            (
                "OPENSOURCEKAFKA",
                {**good, "kafka_user": "u", "kafka_password": "p", "kafka_sasl_mechanism": "GSSAPI"},
                "kafka_sasl_mechanism: must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
            ),
        ]
        for code, data, message in cases:
            status, error = await h.create_trigger(urn, code, data)
            assert status == 400, (data, error)
            assert error["error_code"] == "FSS.0400"
            assert message in error["error_msg"], (data, error)
        # valid ones: a DMS instance from the service's map; SASL credentials are never returned
        status, trigger = await h.create_trigger(urn, "KAFKA", {"instance_id": "known-instance", "topic_ids": ["t1"]})
        assert status == 201, trigger
        secret = {**good, "kafka_user": "u", "kafka_password": "s3cret-pw", "kafka_sasl_mechanism": "SCRAM-SHA-512"}
        status, trigger = await h.create_trigger(urn, "OPENSOURCEKAFKA", secret)
        assert status == 201, trigger
        assert trigger["event_data"]["kafka_password"] == "******"
        assert "s3cret-pw" not in json.dumps(trigger)

        # brokers nobody listens on: the trigger backs off and says why; checkpoints answer 503
        dead = f"127.0.0.1:{free_port()}"
        status, trigger = await h.create_trigger(urn, "OPENSOURCEKAFKA", {**good, "kafka_connect_address": dead})
        assert status == 201, trigger
        trigger_id = trigger["trigger_id"]
        await h.set_trigger_status(urn, "OPENSOURCEKAFKA", trigger_id, "ACTIVE")

        async def backing_off() -> dict[str, Any] | None:
            state = (await h.get_trigger(urn, "OPENSOURCEKAFKA", trigger_id)).get("state", {})
            return state if state.get("last_error") else None

        state = await wait_for(backing_off, "the connection error in the trigger state")
        assert state["consumer_state"] in ("starting", "backoff")
        assert "KafkaConnectionError" in state["last_error"] and state["last_error_time"]
        async with h.http.get(h.fgs(f"/triggers/{urn}/OPENSOURCEKAFKA/{trigger_id}/checkpoint")) as resp:
            error = await resp.json()
            assert resp.status == 503, error
            assert dead in error["error_msg"]
        await h.set_trigger_status(urn, "OPENSOURCEKAFKA", trigger_id, "DISABLED")
