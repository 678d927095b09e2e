"""The DIS and LTS events the connectors build (golden JSON), and their pure pieces.

* DIS: a fetch of the records of the documented sample (``tests/fixtures/golden/dis.json``) becomes
  that sample byte for byte once serialized like the invoker sends it; the batch limits
  (``batch_size``, ``max_fetch_bytes``, 4 MB, the 6 MB event) and shard routing.
* LTS: the logs of the HW template (``lts_hw_decoded.json``) become an event whose ``data`` decodes
  to it, as compact UTF-8 JSON; the 75 KB packing and the split of a bigger log.
* The id mapping between Redis entry ids and DIS sequence numbers.

The integration tests (``tests/integration/test_dis.py``, ``test_lts.py``) run the same code
against Redis and a real service.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.base import TriggerSpec
from connectors.dis import (
    MAX_EVENT_BYTES,
    build_event,
    resolve_config,
    shard_for_key,
    shard_index,
    take_batch,
)
from connectors.lts import EVENT_LIMIT, Packer, build_log, payload_base, split_text
from connectors.lts import build_event as build_lts_event
from connectors.redis_streams import Entry, entry_id, next_id, sequence_number
from schemas.errors import FSSError
from schemas.events.lts import LTSEvent

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
URN = "urn:fss:local:proj1:function:default:f:latest"


def golden(name: str) -> Any:
    return json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def entry(id_: str, data: bytes, key: str = "k") -> Entry:
    return Entry(id_, {"k": key.encode(), "d": data})


# -- ids -------------------------------------------------------------------------------------------------


def test_sequence_numbers_are_entry_ids_as_ordered_digits() -> None:
    ids = ["0-0", "0-1", "1700000000000-0", "1700000000000-7", "1700000000001-0"]
    numbers = [sequence_number(i) for i in ids]
    assert numbers[:2] == ["0", "1"]
    assert numbers[2] == "1700000000000000000"
    assert [int(n) for n in numbers] == sorted(int(n) for n in numbers)
    assert [entry_id(n) for n in numbers] == ids
    assert next_id("1700000000000-7") == "1700000000000-8"
    with pytest.raises(ValueError, match="sequence part"):
        sequence_number("5-1000000")
    with pytest.raises(ValueError, match="digits"):
        entry_id("12a")


# -- DIS -------------------------------------------------------------------------------------------------


def test_dis_event_of_the_documented_records_is_the_golden_sample() -> None:
    sample = golden("dis")
    records = [
        entry(entry_id(r["sequence_number"]), base64.b64decode(r["data"]), r["partition_key"])
        for r in sample["Message"]["records"]
    ]
    event = build_event(
        "dis-swtest", "shardId-0000000000", records, cursor_type="TRIM_HORIZON", tip=None, now_ms=1509606392191
    )
    # serialized as the event reaches the function: exactly the sample's JSON
    assert event.dump_json() == compact(sample)


def test_dis_event_says_how_far_behind_the_newest_record_it_is() -> None:
    records = [entry("1700000000000-0", b"a"), entry("1700000000100-3", b"b")]
    event = build_event("s", "shardId-0000000001", records, cursor_type="LATEST", tip="1700000002600-0", now_ms=1)
    dumped = event.dump()
    assert dumped["Message"]["millis_behind_latest"] == "2500"
    assert [r["sequence_number"] for r in dumped["Message"]["records"]] == [
        "1700000000000000000",
        "1700000000100000003",
    ]
    cursor = json.loads(base64.b64decode(dumped["Message"]["next_partition_cursor"] + "=="))
    assert cursor["getIteratorParam"]["starting-sequence-number"] == "1700000000100000004"
    assert cursor["getIteratorParam"]["cursor-type"] == "LATEST"


def test_take_batch_applies_batch_size_and_bytes() -> None:
    entries = [entry(f"1-{i}", b"x" * 40) for i in range(7)]
    by_count = take_batch(entries, record_limit=3, byte_limit=4 * 1024 * 1024, single_limit=None, more=False)
    assert [e.id for e in by_count.records] == ["1-0", "1-1", "1-2"] and by_count.full
    by_bytes = take_batch(entries, record_limit=10000, byte_limit=100, single_limit=100, more=False)
    assert len(by_bytes.records) == 2 and by_bytes.full  # 3 x 40 > 100
    all_of_them = take_batch(entries, record_limit=10, byte_limit=1000, single_limit=None, more=False)
    assert len(all_of_them.records) == 7 and not all_of_them.full
    hit_read_count = take_batch(entries, record_limit=7, byte_limit=1000, single_limit=None, more=True)
    assert hit_read_count.full  # the read stopped at its count: more may be waiting


def test_a_record_not_smaller_than_max_fetch_bytes_is_never_fetched() -> None:
    big, small = entry("1-1", b"y" * 100), entry("1-0", b"x" * 10)
    first = take_batch([big, small], record_limit=10, byte_limit=100, single_limit=100, more=False)
    assert first.oversized is big and first.records == [] and first.full
    behind = take_batch([small, big], record_limit=10, byte_limit=100, single_limit=100, more=False)
    assert behind.records == [small] and behind.oversized is None and behind.full
    exactly_below = take_batch([entry("1-2", b"z" * 99)], record_limit=10, byte_limit=100, single_limit=100, more=False)
    assert len(exactly_below.records) == 1


def test_the_event_stays_under_6_mb_even_when_base64_grows_4_mb_of_data() -> None:
    # 4,190,000 bytes (under 4 MB), but 5.6 MB as Base64 plus the JSON of 10,000 records: over 6 MB
    entries = [entry(f"1-{i}", b"\xff" * 419) for i in range(10000)]
    take = take_batch(entries, record_limit=10000, byte_limit=4 * 1024 * 1024, single_limit=None, more=False)
    assert take.full and 9000 < len(take.records) < 10000
    event = build_event("s", "shardId-0000000000", take.records, cursor_type="LATEST", tip=None, now_ms=0)
    assert len(event.dump_json().encode()) <= MAX_EVENT_BYTES


def test_shards_by_partition_key_hash_and_by_name() -> None:
    assert {shard_for_key("customer-1", 4) for _ in range(3)} == {shard_for_key("customer-1", 4)}
    assert {shard_for_key(f"key-{i}", 4) for i in range(200)} == {0, 1, 2, 3}
    assert shard_for_key("anything", 1) == 0
    assert shard_index("shardId-0000000003", 4) == 3 and shard_index("2", 4) == 2
    assert shard_index("shardId-0000000004", 4) is None and shard_index("shard-1", 4) is None


def spec(**event_data: Any) -> TriggerSpec:
    return TriggerSpec("t1", URN, "DIS", event_data, 0.0)


def test_dis_trigger_config_defaults_and_errors() -> None:
    cfg = resolve_config(spec(stream_name="s", sharditerator_type="latest", polling_interval=30))
    assert (cfg.cursor_type, cfg.interval_s, cfg.serial, cfg.project_id) == ("LATEST", 30.0, True, "proj1")
    assert cfg.byte_limit == 4 * 1024 * 1024 and cfg.record_limit == 10000
    ms = resolve_config(spec(stream_name="s", sharditerator_type="TRIM_HORIZON", polling_interval=250,
                             polling_unit="ms", is_serial="false", batch_size=50))  # fmt: skip
    assert (ms.interval_s, ms.serial, ms.record_limit, ms.concurrency) == (0.25, False, 50, 10)
    for data, words in (
        ({"max_fetch_bytes": 0}, "max_fetch_bytes"),
        ({"polling_interval": 90_000}, "polling_interval"),
        ({"concurrency": 0}, "concurrency"),
        ({"stream_name": "bad name"}, "stream_name"),
    ):
        base = {"stream_name": "s", "sharditerator_type": "LATEST", "polling_interval": 1, **data}
        with pytest.raises(FSSError, match=words):
            resolve_config(spec(**base))


# -- LTS -------------------------------------------------------------------------------------------------

GROUP = "97a9d284-4448-11e8-8fa4-286ed488ce70"
TOPIC = "1a9675a7-784d-11e8-9f70-286ed488ce70"
OWNER = "6280e170bd934f60a4d851cf5ca05129"


def test_lts_event_of_the_template_logs_decodes_to_the_template() -> None:
    decoded = golden("lts_hw_decoded")
    packer = Packer(payload_base(OWNER, GROUP, TOPIC), "0-0")
    for i, log in enumerate(decoded["logs"]):
        assert packer.add(f"5-{i}", log, now=0.0) == []
    [packed] = packer.close()
    assert (packed.first_id, packed.last_id, packed.commit_to) == ("5-0", "5-2", "5-2")
    event = build_lts_event(packed, OWNER, GROUP, TOPIC).dump()
    assert list(event) == ["lts"] and list(event["lts"]) == ["data"]
    raw = base64.b64decode(event["lts"]["data"])
    assert raw == compact(decoded).encode()  # the template's payload, compact, keys in its order
    assert LTSEvent.model_validate(event).decoded().dump() == decoded


def test_build_log_has_the_template_keys_and_takes_labels() -> None:
    log = build_log("hello", 1530009653059, {"hostName": "ecs-1", "hostIP": "10.0.0.1", "path": "/var/log/a"}, 7)
    assert list(log) == ["message", "time", "host_name", "ip", "path", "log_uid", "line_no"]
    assert (log["host_name"], log["ip"], log["path"], log["line_no"]) == ("ecs-1", "10.0.0.1", "/var/log/a", 7)


def test_packer_closes_an_event_before_it_passes_75_kb() -> None:
    base = payload_base(OWNER, GROUP, TOPIC)
    packer = Packer(base, "0-0")
    log = {"message": "x" * 9000, "time": 1}
    closed = []
    for i in range(20):
        closed += packer.add(f"1-{i}", log, now=float(i))
    size_of = len(compact(log).encode())
    per_event = (EVENT_LIMIT - base + 1) // (size_of + 1)
    assert [len(p.logs) for p in closed] == [per_event] * (20 // per_event)
    for packed in closed:
        assert len(compact({"logs": packed.logs, "owner": OWNER, "log_group_id": GROUP, "log_topic_id": TOPIC})) <= (
            EVENT_LIMIT
        )
    assert closed[0].commit_to == f"1-{per_event - 1}"
    opened = 20 // per_event * per_event  # the open batch's first log came at that "time"
    assert packer.opened_at == float(opened)
    assert not packer.due(now=opened + 0.5, window_s=1.0) and packer.due(now=opened + 1.0, window_s=1.0)
    [rest] = packer.close()
    assert len(rest.logs) == 20 % per_event and packer.close() == []


def test_a_log_over_75_kb_is_split_and_its_pieces_commit_only_at_the_last() -> None:
    base = payload_base(OWNER, GROUP, TOPIC)
    packer = Packer(base, "0-0")
    assert packer.add("2-0", {"message": "small", "time": 1}, now=0.0) == []
    message = ('q"\\✓\n' * 50_000) + "END"
    out = packer.add("2-1", {"message": message, "time": 2}, now=0.0)
    small, *pieces = out
    assert small.logs == [{"message": "small", "time": 1}] and small.commit_to == "2-0"
    assert len(pieces) >= 3
    assert "".join(p.logs[0]["message"] for p in pieces) == message
    assert [p.logs[0]["split_index"] for p in pieces] == list(range(len(pieces)))
    assert all(p.logs[0]["split_count"] == len(pieces) for p in pieces)
    assert [p.commit_to for p in pieces] == ["2-0"] * (len(pieces) - 1) + ["2-1"]
    for piece in pieces:
        payload = {"logs": piece.logs, "owner": OWNER, "log_group_id": GROUP, "log_topic_id": TOPIC}
        assert len(compact(payload).encode()) <= EVENT_LIMIT


def test_split_text_pieces_fit_their_budget_and_join_back() -> None:
    text = 'ab\u0001"✓' * 3000
    pieces = list(split_text(text, 1000))
    assert "".join(pieces) == text
    assert all(len(compact(p).encode()) - 2 <= 1000 for p in pieces)
    assert all(len(compact(p).encode()) - 2 > 990 for p in pieces[:-1])  # filled, not just cut short
    assert list(split_text("", 10)) == [""]
