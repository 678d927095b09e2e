"""DIS streams and DIS triggers against the real Redis on this machine and a real service.

Covered: the stream/records/cursor API and its precise errors; routing by partition key; the
documented event, exactly; batch_size and max_fetch_bytes limits (and the record that can never be
fetched); TRIM_HORIZON vs LATEST on the user guide's A1/A2/A3 example; is_serial vs concurrent;
resuming after a restart from the committed position; a poison batch; trigger config errors and
updates; the DIS async destination.

Every test keeps its Redis keys under a prefix of its own and deletes them afterwards. Nothing
asserts on timing: waits poll for a condition until a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.redis_streams import entry_id
from schemas.events.dis import DISEvent
from tests.integration.conftest import PROJECT, Harness, make_settings, running
from tests.support.recording import read_jsonl
from tests.support.service import ServiceProcess
from tests.support.streams import REDIS, redis_prefix_fixture, streams_settings
from tests.support.waiting import bounded_waits

pytestmark = pytest.mark.integration

WAIT = 40.0
wait_for, wait_until = bounded_waits(WAIT, interval=0.05)
CODE = "DIS"

# Writes {"kind": "start"|"end", "texts": [...], "event": ...} lines to user_data "out". A batch with a
# record starting "BLOCK" waits (at most 8 s) for the file user_data "gate"; one with "POISON" fails;
# one with "SLOW" takes 50 ms.
RECORDER = """
import base64, json, os, time
def handler(event, context):
    texts = [base64.b64decode(r["data"]).decode() for r in event["Message"]["records"]]
    def write(kind):
        fd = os.open(context.getUserData("out"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (json.dumps({"kind": kind, "texts": texts, "event": event}) + "\\n").encode())
        os.close(fd)
    write("start")
    if any(t.startswith("BLOCK") for t in texts):
        gate = context.getUserData("gate")
        deadline = time.time() + 8
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.05)
    if any(t.startswith("SLOW") for t in texts):
        time.sleep(0.05)
    if any(t.startswith("POISON") for t in texts):
        raise ValueError("poison record")
    write("end")
    return "ok"
"""
NOOP = "def handler(event, context):\n    return 'ok'\n"


# -- helpers ---------------------------------------------------------------------------------------------


prefix = redis_prefix_fixture("dis")


def ended(path: Path) -> list[dict[str, Any]]:
    return [line for line in read_jsonl(path) if line["kind"] == "end"]


def texts(path: Path, kind: str = "end") -> list[str]:
    return [t for line in read_jsonl(path) if line["kind"] == kind for t in line["texts"]]


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


async def create_stream(h: Harness, name: str, partitions: int = 1, **extra: Any) -> dict[str, Any]:
    body = {"stream_name": name, "partition_count": partitions, **extra}
    async with h.http.post(f"/v2/{PROJECT}/streams", json=body) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
        return dict(answer)


async def put(h: Harness, stream: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with h.http.post(f"/v2/{PROJECT}/records", json={"stream_name": stream, "records": records}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        assert body["failed_record_count"] == 0
        return list(body["records"])


async def put_texts(h: Harness, stream: str, values: list[str], key: str = "k") -> list[str]:
    placed = await put(h, stream, [{"data": b64(v), "partition_key": key} for v in values])
    return [p["sequence_number"] for p in placed]


async def trigger(h: Harness, urn: str, event_data: dict[str, Any]) -> str:
    """A DIS trigger of ``urn`` (asserting 201): its id."""
    return str((await h.add_trigger(urn, CODE, event_data))["trigger_id"])


def polling(stream: str, **extra: Any) -> dict[str, Any]:
    """DIS trigger event_data: ``stream`` from TRIM_HORIZON, polled every 50 ms, and ``extra``."""
    return {
        "stream_name": stream,
        "sharditerator_type": "TRIM_HORIZON",
        "polling_interval": 50,
        "polling_unit": "ms",
        **extra,
    }


async def wait_committed(h: Harness, urn: str, trigger_id: str, want: dict[str, str | None]) -> None:
    async def check() -> bool:
        shards = (await h.get_checkpoint(urn, CODE, trigger_id))["shards"]
        return {s["shard_id"]: s["committed_sequence_number"] for s in shards} == want

    await wait_for(check, f"committed positions {want}")


async def recorder(h: Harness, tmp_path: Path, name: str) -> tuple[str, Path, Path]:
    """RECORDER as function ``name``: its URN, output file and gate file (``tmp_path/<name>.gate``)."""
    urn, out = await h.create_recorder(name, RECORDER, tmp_path, "gate")
    return urn, out, tmp_path / f"{name}.gate"


def shard0(partitions: int = 1) -> dict[str, str | None]:
    return {f"shardId-{i:010d}": None for i in range(partitions)}


def decode_cursor(cursor: str) -> dict[str, Any]:
    return dict(json.loads(base64.b64decode(cursor + "=" * (-len(cursor) % 4))))


async def read_shard(h: Harness, stream: str, shard: str, cursor_type: str, **extra: str) -> list[dict[str, Any]]:
    params = {"stream-name": stream, "partition-id": shard, "cursor-type": cursor_type, **extra}
    async with h.http.get(f"/v2/{PROJECT}/cursors", params=params) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    async with h.http.get(f"/v2/{PROJECT}/records", params={"partition-cursor": body["partition_cursor"]}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return list(body["records"])


# -- the API ---------------------------------------------------------------------------------------------


async def test_stream_api_and_its_precise_errors(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        created = await create_stream(h, "clicks", partitions=3, data_duration=48)
        assert created["stream_name"] == "clicks" and len(created["stream_id"]) == 32
        async with h.http.post(f"/v2/{PROJECT}/streams", json={"stream_name": "clicks", "partition_count": 1}) as r:
            assert r.status == 409 and "already exists" in (await r.json())["error_msg"]
        bad_streams: list[tuple[dict[str, Any], str]] = [
            ({"stream_name": "x y", "partition_count": 1}, "stream_name"),
            ({"stream_name": "s", "partition_count": 0}, "partition_count"),
            ({"stream_name": "s", "partition_count": 51}, "partition_count"),
            ({"stream_name": "s", "partition_count": "2"}, "partition_count"),
            ({"stream_name": "s", "partition_count": 1, "data_duration": 12}, "data_duration"),
            ({"partition_count": 1}, "stream_name"),
        ]
        for body, field in bad_streams:
            async with h.http.post(f"/v2/{PROJECT}/streams", json=body) as resp:
                error = await resp.json()
                assert resp.status == 400, (body, error)
                assert error["error_code"] == "FSS.0400" and field in error["error_msg"], (body, error)

        async with h.http.get(f"/v2/{PROJECT}/streams") as resp:
            listing = await resp.json()
        assert listing["total_number"] == 1 and listing["stream_names"] == ["clicks"]
        assert listing["stream_info_list"][0]["partition_count"] == 3
        assert listing["stream_info_list"][0]["retention_period"] == 48

        placed = await put(h, "clicks", [{"data": b64("one"), "partition_key": "user-1"}])
        async with h.http.get(f"/v2/{PROJECT}/streams/clicks") as resp:
            described = await resp.json()
        assert [p["partition_id"] for p in described["partitions"]] == [f"shardId-{i:010d}" for i in range(3)]
        busy = next(p for p in described["partitions"] if p["partition_id"] == placed[0]["partition_id"])
        number = placed[0]["sequence_number"]
        assert busy["sequence_number_range"] == f"[{number} : {number}]"

        big = b64(b"x" * (1024 * 1024 + 1))
        bad_puts: list[tuple[dict[str, Any], int, str]] = [
            ({"stream_name": "nope", "records": [{"data": b64("a")}]}, 404, "does not exist"),
            ({"stream_name": "clicks", "records": []}, 400, "records"),
            ({"stream_name": "clicks", "records": [{"data": "not base64!"}]}, 400, "records[0].data"),
            ({"stream_name": "clicks", "records": [{"data": b64("a")}, {"data": big}]}, 413, "records[1].data"),
            (
                {"stream_name": "clicks", "records": [{"data": b64("a"), "partition_id": "shardId-0000000007"}]},
                400,
                "records[0].partition_id",
            ),
            ({"stream_name": "clicks", "records": [{"data": b64("a")}] * 501}, 400, "records"),
            ({"stream_name": "clicks", "records": [{"data": b64("a"), "partition_key": "k" * 257}]}, 400, "key"),
        ]
        for body, status, words in bad_puts:
            async with h.http.post(f"/v2/{PROJECT}/records", json=body) as resp:
                error = await resp.json()
                assert resp.status == status, (status, error)
                assert words in error["error_msg"], error
        # a refused put stores nothing, not even its valid records
        async with h.http.get(f"/v2/{PROJECT}/streams/clicks") as resp:
            ranges = [p["sequence_number_range"] for p in (await resp.json())["partitions"]]
        assert sorted(ranges).count("[ : ]") == 2

        async with h.http.delete(f"/v2/{PROJECT}/streams/clicks") as resp:
            assert resp.status == 204
        async with h.http.delete(f"/v2/{PROJECT}/streams/clicks") as resp:
            assert resp.status == 404
        keys = [k async for k in h.service.dis.backend.redis.scan_iter(match=f"{prefix}:dis:*")]
        assert keys == []  # the shards' data went with the stream


async def test_puts_route_by_partition_key_and_read_back_by_cursor(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "orders", partitions=4)
        placed = await put(
            h,
            "orders",
            [{"data": b64(f"order-{i}"), "partition_key": f"customer-{i % 3}"} for i in range(12)]
            + [
                {"data": b64("pinned"), "partition_id": "shardId-0000000003"},
                {"data": b64("by-number"), "partition_id": "2"},
            ],
        )
        by_key: dict[int, set[str]] = {}
        for i, p in enumerate(placed[:12]):
            by_key.setdefault(i % 3, set()).add(p["partition_id"])
        assert all(len(shards) == 1 for shards in by_key.values())  # one key, one shard
        assert placed[12]["partition_id"] == "shardId-0000000003"
        assert placed[13]["partition_id"] == "shardId-0000000002"
        shard = placed[0]["partition_id"]
        mine = [(i, p["sequence_number"]) for i, p in enumerate(placed) if p["partition_id"] == shard]
        numbers = [int(n) for _, n in mine]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)

        everything = await read_shard(h, "orders", shard, "TRIM_HORIZON")
        assert [r["sequence_number"] for r in everything] == [n for _, n in mine]
        assert base64.b64decode(everything[0]["data"]).decode() == "order-0"
        assert everything[0]["partition_key"] == "customer-0"
        second = mine[1][1]
        at = await read_shard(h, "orders", shard, "AT_SEQUENCE_NUMBER", **{"starting-sequence-number": second})
        assert [r["sequence_number"] for r in at] == [n for _, n in mine[1:]]
        after = await read_shard(h, "orders", shard, "AFTER_SEQUENCE_NUMBER", **{"starting-sequence-number": second})
        assert [r["sequence_number"] for r in after] == [n for _, n in mine[2:]]
        assert await read_shard(h, "orders", shard, "LATEST") == []

        async with h.http.get(f"/v2/{PROJECT}/records", params={"partition-cursor": "garbage"}) as resp:
            assert resp.status == 400 and "partition-cursor" in (await resp.json())["error_msg"]
        params = {"stream-name": "orders", "partition-id": "shardId-0000000009", "cursor-type": "LATEST"}
        async with h.http.get(f"/v2/{PROJECT}/cursors", params=params) as resp:
            assert resp.status == 400 and "partition" in (await resp.json())["error_msg"]
        params = {"stream-name": "orders", "partition-id": shard, "cursor-type": "SOMEWHERE"}
        async with h.http.get(f"/v2/{PROJECT}/cursors", params=params) as resp:
            assert resp.status == 400 and "cursor-type" in (await resp.json())["error_msg"]


# -- the trigger -----------------------------------------------------------------------------------------


async def test_event_is_the_documented_shape(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "dis-swtest")
        values = ["welcome", "using", "FunctionStage", "service"]
        placed = await put(h, "dis-swtest", [{"data": b64(v), "partition_key": "shardId_0000000000"} for v in values])
        urn, out, _ = await recorder(h, tmp_path, "shape")
        data = polling("dis-swtest", batch_size=10)
        trigger_id = await trigger(h, urn, data)

        [line] = await wait_until(lambda: ended(out), "the event")
        event = line["event"]
        numbers = [p["sequence_number"] for p in placed]
        assert set(event) == {"ShardID", "Message", "Tag", "StreamName"}
        assert event["ShardID"] == "shardId-0000000000"
        assert event["StreamName"] == "dis-swtest" and event["Tag"] == "latest"
        assert set(event["Message"]) == {"next_partition_cursor", "records", "millis_behind_latest"}
        assert event["Message"]["records"] == [
            {"partition_key": "shardId_0000000000", "data": b64(v), "sequence_number": n}
            for v, n in zip(values, numbers, strict=True)
        ]
        assert event["Message"]["millis_behind_latest"] == "0"
        cursor = decode_cursor(event["Message"]["next_partition_cursor"])
        assert cursor["getIteratorParam"] == {
            "stream-name": "dis-swtest",
            "partition-id": "shardId-0000000000",
            "cursor-type": "TRIM_HORIZON",
            "starting-sequence-number": str(int(numbers[-1]) + 1),
        }
        assert DISEvent.model_validate(event).dump() == event  # the model's documented form, key for key

        await wait_committed(h, urn, trigger_id, {"shardId-0000000000": numbers[-1]})
        [record] = await h.invocations(urn)
        assert record["trigger_id"] == trigger_id and record["status"] == "SUCCESS"
        assert record["source"] == {
            "stream_name": "dis-swtest",
            "shard_id": "shardId-0000000000",
            "sequence_number": numbers[0],
            "last_sequence_number": numbers[-1],
            "count": 4,
        }

        # the cursor in the event works with GetRecords: it reads on after the batch
        [following] = await put(h, "dis-swtest", [{"data": b64("next"), "partition_key": "x"}])
        params = {"partition-cursor": event["Message"]["next_partition_cursor"]}
        async with h.http.get(f"/v2/{PROJECT}/records", params=params) as resp:
            after = (await resp.json())["records"]
        assert [base64.b64decode(r["data"]).decode() for r in after] == ["next"]
        await wait_committed(h, urn, trigger_id, {"shardId-0000000000": following["sequence_number"]})


async def test_batch_size_and_max_fetch_bytes_limits(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "counted")
        await put_texts(h, "counted", [f"r{i}" for i in range(7)])
        urn, out, _ = await recorder(h, tmp_path, "counted")
        base = {"sharditerator_type": "TRIM_HORIZON", "polling_interval": 50, "polling_unit": "ms"}
        await trigger(h, urn, {"stream_name": "counted", "batch_size": 3, **base})
        await wait_until(lambda: len(texts(out)) == 7, "seven records")
        assert [line["texts"] for line in ended(out)] == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]

        # by bytes: 40-byte records, at most 100 bytes a fetch; a 150-byte record can never be fetched
        await create_stream(h, "sized")
        values = ["a" * 40, "b" * 40, "c" * 40, "X" * 150, "d" * 40, "e" * 99, "f" * 100]
        numbers = await put_texts(h, "sized", values)
        sized, sized_out, _ = await recorder(h, tmp_path, "sized")
        trigger_id = await trigger(h, sized, {"stream_name": "sized", "max_fetch_bytes": 100, **base})

        async def discarded() -> list[dict[str, Any]]:
            return [r for r in await h.invocations(sized) if r["status"] == "DISCARD"]

        dropped = await wait_for(discarded, "the DISCARD records")
        await wait_until(lambda: len(texts(sized_out)) == 5, "the fetchable records")
        assert [line["texts"] for line in ended(sized_out)] == [
            ["a" * 40, "b" * 40],
            ["c" * 40],
            ["d" * 40],
            ["e" * 99],
        ]
        dropped = await wait_for(lambda: _n_discarded(h, sized, 2), "both records not smaller than the limit")
        by_number = {d["source"]["sequence_number"]: d for d in dropped}
        assert set(by_number) == {numbers[3], numbers[6]}
        assert by_number[numbers[3]]["error_code"] == 4413
        assert by_number[numbers[3]]["source"]["size"] == 150
        assert "max_fetch_bytes 100" in by_number[numbers[3]]["error_message"]
        await wait_committed(h, sized, trigger_id, {"shardId-0000000000": numbers[-1]})
        audit = [a for a in await h.service.store.audit_log(200) if a["action"] == "disRecordDiscarded"]
        assert sorted(a["detail"]["sequence_number"] for a in audit) == sorted([numbers[3], numbers[6]])
        state = (await h.get_trigger(sized, CODE, trigger_id))["state"]
        assert state["discarded"] == 2


async def _n_discarded(h: Harness, urn: str, n: int) -> list[dict[str, Any]] | None:
    found = [r for r in await h.invocations(urn) if r["status"] == "DISCARD"]
    return found if len(found) == n else None


async def test_trim_horizon_and_latest_on_the_docs_a1_a2_a3_example(tmp_path: Path, prefix: str) -> None:
    """User guide FAQ: A1, A2, A3 uploaded; N days later A1 has expired, A2 and A3 have not.
    TRIM_HORIZON reads from A2; LATEST reads only what comes next."""
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "a-records", data_duration=24)
        [a1] = await put_texts(h, "a-records", ["A1"])
        await asyncio.sleep(0.02)
        a2, a3 = await put_texts(h, "a-records", ["A2", "A3"])
        a1_ms, a2_ms = (int(entry_id(n).split("-")[0]) for n in (a1, a2))
        assert a2_ms - a1_ms >= 2  # the setup: A1 is older than A2 by more than a millisecond
        # 24 h later than "just before A2": A1 is past the retention, A2 and A3 are not
        backend = h.service.dis.backend
        backend.clock = lambda: (a2_ms - 0.5) / 1000 + 24 * 3600

        horizon_urn, horizon_out, _ = await recorder(h, tmp_path, "horizon")
        latest_urn, latest_out, _ = await recorder(h, tmp_path, "latest")
        base = {"stream_name": "a-records", "polling_interval": 50, "polling_unit": "ms"}
        await trigger(h, horizon_urn, {**base, "sharditerator_type": "TRIM_HORIZON"})
        latest_id = await trigger(h, latest_urn, {**base, "sharditerator_type": "LATEST"})
        await wait_until(lambda: texts(horizon_out), "the TRIM_HORIZON event")
        assert texts(horizon_out) == ["A2", "A3"]
        # GetRecords with a TRIM_HORIZON cursor agrees
        read = await read_shard(h, "a-records", "shardId-0000000000", "TRIM_HORIZON")
        assert [r["sequence_number"] for r in read] == [a2, a3]

        # LATEST started at A3 (pinned when enabled), so it sees only A4
        await wait_committed(h, latest_urn, latest_id, {"shardId-0000000000": a3})
        [a4] = await put_texts(h, "a-records", ["A4"])
        await wait_until(lambda: texts(latest_out), "the LATEST event")
        await wait_until(lambda: texts(horizon_out) == ["A2", "A3", "A4"], "A4 on TRIM_HORIZON")
        assert texts(latest_out) == ["A4"]
        await wait_committed(h, latest_urn, latest_id, {"shardId-0000000000": a4})

        # the retention sweep removes A1 for good (until then it was only unreadable)
        stream = await h.service.store.get_dis_stream(PROJECT, "a-records")
        key = f"{prefix}:dis:{stream.stream_id}:0"
        assert await backend.redis.xlen(key) == 4
        assert await backend.trim_expired() == 1
        remaining = [i.decode() for i, _ in await backend.redis.xrange(key)]
        assert remaining == [entry_id(n) for n in (a2, a3, a4)]


async def test_serial_waits_for_the_previous_batch_and_concurrent_does_not(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "work")
        serial_urn, serial_out, serial_gate = await recorder(h, tmp_path, "serial")
        conc_urn, conc_out, conc_gate = await recorder(h, tmp_path, "concurrent")
        base = polling("work", batch_size=1)
        await trigger(h, serial_urn, {**base, "is_serial": True})
        conc_id = await trigger(h, conc_urn, {**base, "is_serial": "false", "concurrency": 3})
        await put_texts(h, "work", ["BLOCK-0", "m1", "m2"])

        # the concurrent trigger runs m1 and m2 while its BLOCK-0 batch is still running ...
        await wait_until(lambda: sorted(texts(conc_out)) == ["m1", "m2"], "m1, m2 (concurrent)")
        assert texts(conc_out, "start").count("BLOCK-0") == 1 and "BLOCK-0" not in texts(conc_out)
        # ... the serial one has not even fetched m1: its BLOCK-0 batch has not finished
        assert texts(serial_out, "start") == ["BLOCK-0"]
        state = (await h.get_trigger(conc_urn, CODE, conc_id))["state"]
        assert state["shards"][0]["in_flight"] == 1  # BLOCK-0; its position waits for it
        assert (await h.get_checkpoint(conc_urn, CODE, conc_id))["shards"][0]["committed_sequence_number"] is None

        serial_gate.touch()
        conc_gate.touch()
        await wait_until(lambda: texts(serial_out) == ["BLOCK-0", "m1", "m2"], "serial order")
        order = [(line["kind"], line["texts"][0]) for line in read_jsonl(serial_out)]
        assert order == [
            ("start", "BLOCK-0"),
            ("end", "BLOCK-0"),
            ("start", "m1"),
            ("end", "m1"),
            ("start", "m2"),
            ("end", "m2"),
        ]
        last = (await h.get_checkpoint(conc_urn, CODE, conc_id))["shards"][0]["latest_sequence_number"]
        await wait_committed(h, conc_urn, conc_id, {"shardId-0000000000": last})


async def test_restart_resumes_from_the_committed_position(tmp_path: Path, prefix: str) -> None:
    out_urn: str
    base = polling("resume", batch_size=2)
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "resume")
        out_urn, out, gate = await recorder(h, tmp_path, "resume")
        trigger_id = await trigger(h, out_urn, base)
        first = await put_texts(h, "resume", ["f0", "f1"])
        await wait_committed(h, out_urn, trigger_id, {"shardId-0000000000": first[-1]})
        await put_texts(h, "resume", ["BLOCK-2", "f3"])
        await wait_until(lambda: "BLOCK-2" in texts(out, "start"), "the blocked batch running")
    # the service stopped with BLOCK-2's batch unfinished; its position stays before it
    async with running(streams_settings(tmp_path, prefix)) as h:
        [down] = (await h.get_checkpoint(out_urn, CODE, trigger_id))["shards"]
        assert down["committed_sequence_number"] == first[-1]
        later = await put_texts(h, "resume", ["f4", "f5"])
        gate.touch()
        await wait_committed(h, out_urn, trigger_id, {"shardId-0000000000": later[-1]})
        done = Counter(texts(out))
        assert done["f0"] == 1 and done["f1"] == 1  # committed before the stop: never read again
        assert all(done[t] >= 1 for t in ("BLOCK-2", "f3", "f4", "f5"))  # read again after the restart
        starts = [line for line in read_jsonl(out) if line["kind"] == "start" and "BLOCK-2" in line["texts"]]
        assert len(starts) >= 2  # once before the stop, again after it


async def test_poison_batch_fails_after_its_retries_and_the_shard_moves_on(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "poison")
        urn, out, _ = await recorder(h, tmp_path, "poisoned")
        await h.set_async_config(urn, {"max_async_retry_attempts": 1})
        trigger_id = await trigger(
            h,
            urn,
            polling("poison", batch_size=2),
        )
        numbers = await put_texts(h, "poison", ["p0", "POISON-1"])

        async def failed() -> list[dict[str, Any]]:
            return await h.invocations(urn, status="FAIL")

        [fail] = await wait_for(failed, "the FAIL record")
        assert fail["source"]["sequence_number"] == numbers[0]
        assert fail["source"]["last_sequence_number"] == numbers[1]
        assert texts(out, "start").count("POISON-1") == 2  # the first attempt and one retry
        later = await put_texts(h, "poison", ["n2", "n3"])
        await wait_until(lambda: texts(out) == ["n2", "n3"], "the records after the poison")
        await wait_committed(h, urn, trigger_id, {"shardId-0000000000": later[-1]})
        state = (await h.get_trigger(urn, CODE, trigger_id))["state"]
        assert state["finished"] == {"FAIL": 1, "SUCCESS": 1}


async def test_trigger_config_errors_updates_and_checkpoints(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "cfg")
        urn, out, _ = await recorder(h, tmp_path, "cfg")
        good = polling("cfg", batch_size=1)
        bad: list[tuple[dict[str, Any], str]] = [
            ({**good, "stream_name": "missing"}, "DIS stream 'missing' does not exist"),
            ({**good, "sharditerator_type": "AT_TIMESTAMP"}, "sharditerator_type"),
            ({**good, "polling_interval": 0}, "polling_interval"),
            ({**good, "polling_unit": "h"}, "polling_unit"),
            ({**good, "batch_size": 10001}, "batch_size"),
            ({**good, "max_fetch_bytes": 0}, "max_fetch_bytes"),
            ({**good, "max_fetch_bytes": 4 * 1024 * 1024 + 1}, "max_fetch_bytes"),
            ({**good, "concurrency": 81}, "concurrency"),
            ({**good, "is_serial": "maybe"}, "is_serial"),
        ]
        for data, words in bad:
            status, error = await h.create_trigger(urn, CODE, data)
            assert status == 400, (data, error)
            assert error["error_code"] == "FSS.0400" and words in error["error_msg"], (data, error)

        trigger_id = await trigger(h, urn, good)
        await put_texts(h, "cfg", ["c0", "c1", "c2"])
        await wait_until(lambda: len(ended(out)) == 3, "three single-record batches")
        # editable as documented: batch size, polling period, serial; not the stream or start position
        status, error = await h.update_trigger(urn, CODE, trigger_id, {"event_data": {"stream_name": "other"}})
        assert status == 400 and "stream_name" in error["error_msg"], error
        status, body = await h.update_trigger(urn, CODE, trigger_id, {"event_data": {"batch_size": 5}})
        assert status == 200 and body["event_data"]["batch_size"] == 5, body
        numbers = await put_texts(h, "cfg", ["c3", "c4", "c5"])
        await wait_until(lambda: len(texts(out)) == 6, "the records after the update")
        assert ended(out)[-1]["texts"] == ["c3", "c4", "c5"]
        await wait_committed(h, urn, trigger_id, {"shardId-0000000000": numbers[-1]})

        # the checkpoint moves only while the trigger is disabled; TRIM_HORIZON replays everything
        async with h.http.put(
            h.fgs(f"/triggers/{urn}/{CODE}/{trigger_id}/checkpoint"), json={"position": "LATEST"}
        ) as r:
            assert r.status == 409
        status, body = await h.update_trigger(urn, CODE, trigger_id, {"trigger_status": "DISABLED"})
        assert status == 200, body
        path = h.fgs(f"/triggers/{urn}/{CODE}/{trigger_id}/checkpoint")
        wrong_bodies: list[tuple[dict[str, Any], str]] = [
            ({}, "either"),
            ({"position": "OLDEST"}, "position"),
            ({"shards": [{"shard_id": "shardId-0000000005", "sequence_number": "1"}]}, "shard_id"),
            ({"shards": [{"shard_id": "shardId-0000000000", "sequence_number": "x"}]}, "digits"),
        ]
        for wrong, words in wrong_bodies:
            async with h.http.put(path, json=wrong) as resp:
                error = await resp.json()
                assert resp.status == 400 and words in error["error_msg"], (wrong, error)
        async with h.http.put(
            path, json={"shards": [{"shard_id": "shardId-0000000000", "sequence_number": numbers[1]}]}
        ) as resp:
            moved = await resp.json()
            assert resp.status == 200, moved
        assert moved["shards"][0]["committed_sequence_number"] == str(int(numbers[1]) - 1)
        status, body = await h.update_trigger(urn, CODE, trigger_id, {"trigger_status": "ACTIVE"})
        assert status == 200, body
        await wait_until(lambda: len(texts(out)) == 8, "c4 and c5 again")
        assert ended(out)[-1]["texts"] == ["c4", "c5"]


async def test_without_redis_dis_is_refused_clearly(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path / "data")) as h:
        urn = await h.create_function("no-redis", NOOP)
        data = {"stream_name": "s", "sharditerator_type": "LATEST", "polling_interval": 1}
        status, error = await h.create_trigger(urn, CODE, data)
        assert status == 503 and "TRIGGERBUS_STREAMS_REDIS" in error["error_msg"], error
        async with h.http.post(f"/v2/{PROJECT}/streams", json={"stream_name": "s", "partition_count": 1}) as resp:
            assert resp.status == 503
        config = {
            "destination_config": {"on_success": {"destination": "DIS", "param": json.dumps({"stream_name": "s"})}}
        }
        async with h.http.put(h.fgs(f"/functions/{urn}/async-invoke-config"), json=config) as resp:
            assert resp.status == 400 and "DIS" in (await resp.json())["error_msg"]


async def test_dis_destination_puts_each_outcome_once(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "outcomes", partitions=2)
        urn = await h.create_function("producer", "def handler(event, context):\n    return {'got': event}\n")
        config = {
            "destination_config": {
                "on_success": {"destination": "DIS", "param": json.dumps({"stream_name": "outcomes"})}
            }
        }
        await h.set_async_config(urn, config)
        request_id = await h.invoke_async(urn, {"n": 1})

        async def delivered() -> dict[str, Any] | None:
            record = await h.record(urn, request_id)
            return record if record.get("destination", {}).get("status") == "delivered" else None

        record = await wait_for(delivered, "the destination delivery")
        assert "DIS stream outcomes" in record["destination"]["location"]
        found = []
        for shard in ("shardId-0000000000", "shardId-0000000001"):
            found += await read_shard(h, "outcomes", shard, "TRIM_HORIZON")
        [put_record] = found
        assert put_record["partition_key"] == request_id
        outcome = json.loads(base64.b64decode(put_record["data"]))
        assert outcome["request_context"]["request_id"] == request_id
        assert outcome["response_context"]["status_code"] == 200
        assert json.loads(outcome["request_payload"]) == {"n": 1}

        # delivering the same outcome again (a redelivered task) finds the first put
        again = await h.service.dis.put_once(
            PROJECT, "outcomes", b"again", partition_key=request_id, dedupe_key=f"destination/{request_id}"
        )
        assert again[1] == put_record["sequence_number"]
        total = sum(
            [
                len(await read_shard(h, "outcomes", s, "TRIM_HORIZON"))
                for s in ("shardId-0000000000", "shardId-0000000001")
            ]
        )
        assert total == 1


async def test_redis_down_is_a_503_and_leaves_nothing_behind(tmp_path: Path, prefix: str) -> None:
    dead = "redis://127.0.0.1:1/0"  # nothing listens there
    async with running(make_settings(tmp_path / "data", streams_redis=dead, streams_prefix=prefix)) as h:
        async with h.http.post(f"/v2/{PROJECT}/streams", json={"stream_name": "s", "partition_count": 1}) as resp:
            error = await resp.json()
            assert resp.status == 503 and "Redis at 127.0.0.1:1" in error["error_msg"], error
        async with h.http.get(f"/v2/{PROJECT}/streams") as resp:
            assert (await resp.json())["total_number"] == 0  # the half-made stream was taken back


async def test_a_service_without_redis_still_starts_and_names_the_missing_setting(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "kept")
        urn = await h.create_function("kept", NOOP)
        trigger_id = await trigger(
            h, urn, {"stream_name": "kept", "sharditerator_type": "LATEST", "polling_interval": 1}
        )
    async with running(make_settings(tmp_path / "data")) as h:  # the same data, no TRIGGERBUS_STREAMS_REDIS
        shown = await h.get_trigger(urn, CODE, trigger_id)
        assert shown["trigger_status"] == "ACTIVE"
        assert "TRIGGERBUS_STREAMS_REDIS" in shown["state"]["last_error"], shown


async def test_sigkilled_service_resumes_from_the_committed_positions(tmp_path: Path, prefix: str) -> None:
    """A real crash mid-stream: nothing committed is read again, nothing unfinished is lost."""
    out = tmp_path / "killed.jsonl"
    first = [f"SLOW-{i}" for i in range(300)]
    second = [f"late-{i}" for i in range(50)]
    streams = {"TRIGGERBUS_STREAMS_REDIS": REDIS, "TRIGGERBUS_STREAMS_PREFIX": prefix}
    with ServiceProcess(tmp_path / "data", tmp_path / "service.log", **streams) as service:
        await service.wait_healthy(timeout=WAIT)
        async with service.harness() as h:
            await create_stream(h, "crash")
            urn = await h.create_function("killed", RECORDER, user_data={"out": str(out), "gate": "-"}, timeout=60)
            trigger_id = await trigger(h, urn, polling("crash", polling_interval=20, batch_size=5))
            numbers = dict(zip(first, await put_texts(h, "crash", first), strict=True))
            await wait_until(lambda: len(texts(out)) >= 50, "the first batches")
            service.kill()
        done_before = set(texts(out))
        assert len(done_before) < len(first), "the kill came too late to interrupt anything"

        await service.start_healthy(timeout=WAIT)
        async with service.harness() as h:
            shards = (await h.get_checkpoint(urn, CODE, trigger_id))["shards"]
            committed_at_restart = shards[0]["committed_sequence_number"]
            late = await put_texts(h, "crash", second)
            # the embedded store is this process's alone: it reads on from the committed position at once
            await wait_committed(h, urn, trigger_id, {"shardId-0000000000": late[-1]})
        got = Counter(texts(out))
        assert set(got) == set(first + second)  # nothing lost
        assert all(got[t] == 1 for t in second)  # put after the crash: read once
        assert committed_at_restart is not None  # positions committed before the crash survived it
        committed = [t for t in first if int(numbers[t]) <= int(committed_at_restart)]
        assert committed and all(got[t] == 1 for t in committed)  # committed before the crash: never run again
        print(json.dumps({"done_before_kill": len(done_before), "duplicates": sum(got.values()) - len(got)}))
        assert service.terminate(timeout=30) == 0


async def test_records_that_expired_unread_are_audited_but_idle_time_is_not(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        await create_stream(h, "lapsed")
        urn, out, _ = await recorder(h, tmp_path, "lapsed")
        [x1] = await put_texts(h, "lapsed", ["x1"])
        data = {"stream_name": "lapsed", "sharditerator_type": "LATEST", "polling_interval": 50, "polling_unit": "ms"}
        trigger_id = await trigger(h, urn, data)  # its position: x1
        backend = h.service.dis.backend

        def move_clock_past(number: str) -> float:
            """24 h after the record: it is just outside the retention. Returns when the clock moved."""
            ms = int(entry_id(number).split("-")[0])
            backend.clock = lambda: (ms + 1) / 1000 + 24 * 3600
            return time.time()

        async def fetched_since(moment: float) -> bool:
            shard = (await h.get_trigger(urn, CODE, trigger_id))["state"]["shards"][0]
            last = shard["last_fetch_time"]
            return last is not None and datetime.fromisoformat(last).timestamp() > moment

        async def expired_audits() -> list[dict[str, Any]]:
            return [a for a in await h.service.store.audit_log(200) if a["action"] == "disRecordsExpired"]

        # idle for "24 h": the position is behind the horizon, but no record was put after it
        moved = move_clock_past(x1)
        await wait_for(lambda: fetched_since(moved), "a fetch after the clock moved")
        assert await expired_audits() == []
        assert (await h.get_trigger(urn, CODE, trigger_id))["state"]["expired_gaps"] == 0

        # put while the trigger is disabled, expired before it is enabled again: gone, and said so
        status, body = await h.update_trigger(urn, CODE, trigger_id, {"trigger_status": "DISABLED"})
        assert status == 200, body
        await asyncio.sleep(0.005)  # x2 gets a later millisecond than the current horizon
        [x2] = await put_texts(h, "lapsed", ["x2"])
        move_clock_past(x2)
        status, body = await h.update_trigger(urn, CODE, trigger_id, {"trigger_status": "ACTIVE"})
        assert status == 200, body
        [entry] = await wait_for(expired_audits, "the audit entry of the expired record")
        assert entry["resource"] == trigger_id
        assert entry["detail"]["stream_name"] == "lapsed" and entry["detail"]["shard_id"] == "shardId-0000000000"
        assert entry["detail"]["after_sequence_number"] == x1
        assert int(x2) < int(entry["detail"]["horizon_sequence_number"])
        assert (await h.get_trigger(urn, CODE, trigger_id))["state"]["expired_gaps"] == 1
        [x3] = await put_texts(h, "lapsed", ["x3"])
        await wait_committed(h, urn, trigger_id, {"shardId-0000000000": x3})
        assert texts(out) == ["x3"]  # x2 expired unread; x1 came before the trigger
