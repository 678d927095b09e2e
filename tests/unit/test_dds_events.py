"""DDS / GAUSSMONGO connector logic without a server: golden events built from change-stream
documents, Extended JSON of every BSON type, resume-token reading, the history-lost classification
(with PyMongo's real error class) and policy plans, positions, credentials and the prefetch bounds.
The last tests run the history-lost recovery against mongod's answers (286 for a too-old start time,
13 for the oplog), which SecantusDB does not give: fakes stand in for the server, the store is real."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex
from bson.timestamp import Timestamp
from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure, ServerSelectionTimeoutError

from bus.memory import MemoryBus
from connectors.base import ConnectorContext, TriggerSpec
from connectors.dds import (
    MAX_EVENT_BYTES,
    DDSConnector,
    _Halt,
    _Prefetch,
    _Read,
    _Runner,
    build_event,
    describe_error,
    record_bytes,
    resolve_config,
)
from connectors.mongo_stream import (
    HistoryLostPolicy,
    MongoTarget,
    OpenMode,
    Position,
    RecoveryStep,
    extended_json,
    is_position_lost,
    recovery_plan,
    resolve_target,
    split_credentials,
    to_mongo_change,
    token_cluster_time,
)
from invoker.completion import CompletionHub
from schemas.errors import FSSError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
HW_TOKEN = {
    "_data": "825D8C2F4D0000001529295A100474039A3412A64BA89041DC952357FB4446645F696400645D8C2F8E5BECCB6CF5370D6A0004"
}
GM_TOKEN = {
    "_data": "825F61DE940000000129295A1004A2D9AE61206C43A5AF47CAF7C5C00C5946645F696400645F61DE944778DB5FCDED3F870004"
}
# A SecantusDB token: hex of a BSON document {s: seq, t: Timestamp, n: namespace, k: document key}.
SECANTUS_TOKEN = {
    "_data": "360000001073000600000011740006000000aacf046b026e0007000000"
    "6462312e633100036b000e000000105f696400010000000000"
}


def golden(name: str) -> Any:
    return json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))


def change_doc(
    operation: str, token: dict[str, Any], full: dict[str, Any] | None, db: str, coll: str
) -> dict[str, Any]:
    """A change-stream document as PyMongo decodes it."""
    doc: dict[str, Any] = {
        "_id": token,
        "operationType": operation,
        "clusterTime": token_cluster_time(token),
        "wallTime": dt.datetime(2019, 9, 26, 3, 23, 57),
        "ns": {"db": db, "coll": coll},
        "documentKey": {"_id": (full or {}).get("_id", 1)},
    }
    if full is not None or operation in ("update",):
        doc["fullDocument"] = full
    return doc


# -- golden events -------------------------------------------------------------------------------------


def test_dds_event_from_a_change_matches_the_huawei_template() -> None:
    full = {"_id": ObjectId("5d8c2f8e5beccb6cf5370d6a"), "name": "dds", "age": 52.0}
    change = change_doc("insert", HW_TOKEN, full, "functiongraph", "person")
    event = build_event(
        "DDS", "xx-xxxxx-1", "e6065860-f7b8-4cca-80bd-24ef2a3bb748", [to_mongo_change(change, "person")]
    )
    expected = golden("dds_hw")
    size = event["records"][0]["dds"]["size_bytes"]
    assert size == str(len(bson.encode(change)))  # the BSON size of the change document
    expected["records"][0]["dds"]["size_bytes"] = size
    assert event == expected
    assert list(event["records"][0]) == list(expected["records"][0])  # documented key order
    assert list(event["records"][0]["dds"]) == ["size_bytes", "token", "full_document", "ns"]


def test_gaussmongo_event_from_a_change_matches_the_template() -> None:
    full = {"_id": ObjectId("5f61de944778db5fcded3f87"), "zhangsan": "zhangsan"}
    change = change_doc("insert", GM_TOKEN, full, "zhangsan", "zhangsan")
    event = build_event(
        "GAUSSMONGO", "cn-north-1", "51153d19-2b7d-402c-9a79-757163258a36", [to_mongo_change(change, "zhangsan")]
    )
    expected = golden("gaussmongo_built")  # the template with JSON strings as json.dumps writes them
    expected["records"][0]["gauss_mongo"]["size_bytes"] = str(len(bson.encode(change)))
    assert event == expected
    template = golden("gaussmongo_hw")  # same content as the console template, string spacing aside
    body, template_body = event["records"][0]["gauss_mongo"], template["records"][0]["gauss_mongo"]
    for key in ("full_document", "ns", "token"):
        assert json.loads(body[key]) == json.loads(template_body[key])
    assert json.loads(event["vernier"]) == json.loads(template["vernier"])
    assert event["records"][0]["event_name"] == template["records"][0]["event_name"] == '"insert"'


def test_every_bson_type_in_canonical_extended_json() -> None:
    full = {
        "_id": ObjectId("65f0c0ffee00000000000001"),
        "double": 52.0,
        "negzero": -0.0,
        "nan": float("nan"),
        "inf": float("-inf"),
        "int32": 7,
        "int64": Int64(9007199254740993),
        "decimal": Decimal128("19.99"),
        "string": "héllo ✓",
        "bool": True,
        "null": None,
        "date": dt.datetime(2024, 2, 29, 12, 30, 15, 123000, tzinfo=dt.UTC),
        "before_1970": dt.datetime(1969, 7, 20, 20, 17, 40, tzinfo=dt.UTC),
        "binary": Binary(b"\x00\x01\xfe", 0),
        "uuid": Binary.from_uuid(uuid.UUID("12345678-1234-5678-1234-567812345678")),
        "regex": Regex("^a.*z$", "i"),
        "timestamp": Timestamp(1700000000, 3),
        "min": MinKey(),
        "max": MaxKey(),
        "code": Code("return 1"),
        "array": [1, "two", [3.5]],
        "doc": {"nested": {"deep": Int64(1)}},
    }
    assert extended_json(full) == {
        "_id": {"$oid": "65f0c0ffee00000000000001"},
        "double": {"$numberDouble": "52.0"},
        "negzero": {"$numberDouble": "-0.0"},
        "nan": {"$numberDouble": "NaN"},
        "inf": {"$numberDouble": "-Infinity"},
        "int32": {"$numberInt": "7"},
        "int64": {"$numberLong": "9007199254740993"},
        "decimal": {"$numberDecimal": "19.99"},
        "string": "héllo ✓",
        "bool": True,
        "null": None,
        "date": {"$date": {"$numberLong": "1709209815123"}},
        "before_1970": {"$date": {"$numberLong": "-14182940000"}},
        "binary": {"$binary": {"base64": "AAH+", "subType": "00"}},
        "uuid": {"$binary": {"base64": "EjRWeBI0VngSNFZ4EjRWeA==", "subType": "04"}},
        "regex": {"$regularExpression": {"pattern": "^a.*z$", "options": "i"}},
        "timestamp": {"$timestamp": {"t": 1700000000, "i": 3}},
        "min": {"$minKey": 1},
        "max": {"$maxKey": 1},
        "code": {"$code": "return 1"},
        "array": [{"$numberInt": "1"}, "two", [{"$numberDouble": "3.5"}]],
        "doc": {"nested": {"deep": {"$numberLong": "1"}}},
    }
    # and it survives both event forms
    change = change_doc("insert", HW_TOKEN, full, "db", "c")
    dds = build_event("DDS", "r", "t", [to_mongo_change(change, "c")])
    gm = build_event("GAUSSMONGO", "r", "t", [to_mongo_change(change, "c")])
    assert dds["records"][0]["dds"]["full_document"] == extended_json(full)
    assert json.loads(gm["records"][0]["gauss_mongo"]["full_document"]) == extended_json(full)


def test_operations_without_a_document_and_batches() -> None:
    deleted = change_doc("delete", HW_TOKEN, None, "db", "c")
    vanished = change_doc("update", GM_TOKEN, None, "db", "c")  # updateLookup found nothing (deleted since)
    dropped = {"_id": SECANTUS_TOKEN, "operationType": "drop", "ns": {"db": "db"}}
    changes = [to_mongo_change(c, "c") for c in (deleted, vanished, dropped)]
    event = build_event("DDS", "local", "trigger-1", changes)
    records = event["records"]
    assert [r["event_name"] for r in records] == ["delete", "update", "drop"]
    assert [r["dds"]["full_document"] for r in records] == [None, None, None]
    assert records[2]["dds"]["ns"] == {"db": "db", "coll": "c"}  # a drop names the trigger's collection
    assert [r["dds"]["token"] for r in records] == [HW_TOKEN, GM_TOKEN, SECANTUS_TOKEN]
    gm = build_event("GAUSSMONGO", "local", "trigger-1", changes)
    assert [r["event_name"] for r in gm["records"]] == ['"delete"', '"update"', '"drop"']
    assert gm["records"][0]["gauss_mongo"]["full_document"] is None
    assert json.loads(gm["vernier"]) == SECANTUS_TOKEN  # the batch's last token


def test_record_bytes_bounds_the_event() -> None:
    change = to_mongo_change(change_doc("insert", HW_TOKEN, {"_id": 1, "s": "x" * 1000}, "db", "c"), "c")
    event = build_event("DDS", "local", "t", [change] * 10)
    assert len(json.dumps(event, separators=(",", ":"))) <= 10 * record_bytes(change)
    assert record_bytes(change) < MAX_EVENT_BYTES


# -- resume tokens and positions ----------------------------------------------------------------------


def test_cluster_time_read_from_tokens() -> None:
    assert token_cluster_time(HW_TOKEN) == Timestamp(0x5D8C2F4D, 0x15)  # mongod KeyString form
    assert token_cluster_time(GM_TOKEN) == Timestamp(0x5F61DE94, 1)
    assert token_cluster_time(SECANTUS_TOKEN) == Timestamp(0x6B04CFAA, 6)  # BSON form
    for opaque in (None, {}, {"_data": "zz"}, {"_data": "00"}, {"_data": 5}, {"other": "825D"}):
        assert token_cluster_time(opaque) is None


def test_positions_round_trip_and_reopen_where_they_say() -> None:
    change = Position(HW_TOKEN, Timestamp(5, 6), "change")
    assert change.open_kwargs() == {"resume_after": HW_TOKEN}
    after_drop = Position(HW_TOKEN, None, "change", OpenMode.START_AFTER)
    assert after_drop.open_kwargs() == {"start_after": HW_TOKEN}
    at_time = Position(None, Timestamp(1700000000, 0), "time")
    assert at_time.open_kwargs() == {"start_at_operation_time": Timestamp(1700000000, 0)}
    assert Position(None, None, "start").open_kwargs() == {}
    for position in (change, after_drop, at_time):
        stored = json.loads(json.dumps(position.to_json()))  # what the store keeps
        back = Position.from_json(stored)
        assert back.open_kwargs() == position.open_kwargs()
        assert back.kind == position.kind and back.mode is position.mode
        assert back.same_place(position)
    assert change.to_json()["cluster_time"] == {"t": 5, "i": 6, "iso": "1970-01-01T00:00:05Z"}
    assert not change.same_place(None)


# -- history lost: the server's real errors, the policies ------------------------------------------------


def failure(code: int, message: str, labels: list[str] | None = None) -> OperationFailure:
    """An error exactly as PyMongo raises it from a server reply."""
    details: dict[str, Any] = {"ok": 0.0, "errmsg": message, "code": code}
    if labels:
        details["errorLabels"] = labels
    return OperationFailure(message, code=code, details=details)


def test_position_lost_errors_are_the_ones_servers_send() -> None:
    lost = [
        failure(286, "Resume of change stream was not possible, as the resume point may no longer be in the oplog."),
        failure(280, "cannot resume stream; the resume token was not found.", ["NonResumableChangeStreamError"]),
        failure(260, "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate"),
        failure(9, "resume token is not a valid resume token"),  # SecantusDB, an undecodable token
        failure(9, "resume token string was not a valid hex string"),
    ]
    for exc in lost:
        assert is_position_lost(exc, resuming=True), exc
        assert not is_position_lost(exc, resuming=False), exc  # no position given: not about ours
    not_lost: list[BaseException] = [
        failure(9, "Failed to parse: pipeline"),
        failure(13, "not authorized on db to execute command"),
        failure(18, "Authentication failed."),
        failure(11600, "interrupted at shutdown", ["ResumableChangeStreamError"]),
        failure(43, "cursor id 5 not found"),
        AutoReconnect("connection closed"),
        NetworkTimeout("timed out"),
        ServerSelectionTimeoutError("no servers"),
        ValueError("286"),
    ]
    for other in not_lost:
        assert not is_position_lost(other, resuming=True), other


def test_recovery_plans() -> None:
    lost_at = Timestamp(1700000000, 4)
    assert recovery_plan(HistoryLostPolicy.FAIL, lost_at) == []
    assert recovery_plan(HistoryLostPolicy.RESUME_LATEST, lost_at) == [RecoveryStep("latest")]
    assert recovery_plan(HistoryLostPolicy.RESUME_FROM_TIME, lost_at) == [
        RecoveryStep("time", lost_at),
        RecoveryStep("oldest"),
        RecoveryStep("latest"),
    ]
    # an opaque token: no time to start from, the oldest change still there is the next best
    assert recovery_plan(HistoryLostPolicy.RESUME_FROM_TIME, None) == [RecoveryStep("oldest"), RecoveryStep("latest")]
    assert HistoryLostPolicy("resume_from_time") is HistoryLostPolicy.RESUME_FROM_TIME


# -- where the database is, and its password -----------------------------------------------------------


def test_credentials_leave_the_uri() -> None:
    uri = "mongodb://rw%40user:p%3Ass@10.0.0.5:8635,10.0.0.6:8635/db?authSource=admin&replicaSet=replica"
    clean, user, password = split_credentials(uri)
    assert clean == "mongodb://10.0.0.5:8635,10.0.0.6:8635/db?authSource=admin&replicaSet=replica"
    assert (user, password) == ("rw@user", "p:ss")
    assert split_credentials("mongodb://h:1/") == ("mongodb://h:1/", None, None)
    assert split_credentials("mongodb://only@h:1/") == ("mongodb://h:1/", "only", None)


def test_targets_from_event_data_and_the_instance_map() -> None:
    data = {"instance_id": "i-1", "db_name": "shop", "collection_name": "orders", "db_user": "rw", "db_password": "pw1"}
    target = resolve_target(data, {"i-1": "mongodb://u:uri-pw@10.0.0.5:8635/?replicaSet=rs"})
    assert target.uri == "mongodb://10.0.0.5:8635/?replicaSet=rs"
    assert (target.username, target.password, target.source) == ("rw", "pw1", "instance_id")
    assert target.address == "10.0.0.5:8635" and target.namespace == "shop.orders"
    assert "pw1" not in repr(target)
    direct = resolve_target({**data, "connection_uri": "mongodb://h:1/"}, {})
    assert direct.source == "connection_uri" and direct.uri == "mongodb://h:1/"
    with pytest.raises(FSSError) as refused:
        resolve_target({**data, "instance_id": "i-2"}, {"i-1": "mongodb://h:1"})
    assert refused.value.message.startswith("event_data.instance_id: unknown MongoDB instance 'i-2'")
    assert "i-1" in refused.value.message
    with pytest.raises(FSSError) as no_user:
        resolve_target({**data, "db_user": None, "connection_uri": "mongodb://h:1/"}, {})
    assert no_user.value.message == "event_data.db_user: is required when a db_password is given"


def test_errors_never_show_the_password() -> None:
    target = MongoTarget("mongodb://h:1/", "db", "c", "app", "Sup3r-secret")
    exc = failure(18, "Authentication failed for app with Sup3r-secret")
    text = describe_error(target, exc)
    assert "Sup3r-secret" not in text and "******" in text
    assert text.startswith("OperationFailure 18: Authentication failed")


# -- the prefetch between reader and deliverer -------------------------------------------------------


def change_read(size: int) -> _Read:
    return _Read("change", change={"operationType": "insert"}, size=size)


async def test_prefetch_bounds_count_and_bytes_and_keeps_order() -> None:
    prefetch = _Prefetch(max_items=3, max_bytes=100)
    for size in (10, 20, 30):
        await prefetch.put(change_read(size))
    blocked = asyncio.create_task(prefetch.put(change_read(5)))  # the 4th waits for room
    await asyncio.sleep(0.05)
    assert not blocked.done() and len(prefetch) == 3
    first = await prefetch.get(None)
    assert first is not None and first.size == 10
    await asyncio.wait_for(blocked, 1)
    assert [(await prefetch.get(0)).size for _ in range(3)] == [20, 30, 5]  # type: ignore[union-attr]
    assert await prefetch.get(0) is None  # nothing there, no waiting
    assert await prefetch.get(0.05) is None  # nothing within the timeout

    await prefetch.put(change_read(80))
    by_bytes = asyncio.create_task(prefetch.put(change_read(30)))  # 80 + 30 > 100 bytes
    await asyncio.sleep(0.05)
    assert not by_bytes.done()
    await prefetch.get(0)
    await asyncio.wait_for(by_bytes, 1)
    await prefetch.get(0)
    await asyncio.wait_for(prefetch.put(change_read(500)), 1)  # alone, an oversized change still passes
    assert (await prefetch.get(0)).size == 500  # type: ignore[union-attr]


async def test_prefetch_keeps_only_the_newest_idle_token() -> None:
    prefetch = _Prefetch(max_items=2, max_bytes=100)
    await prefetch.put(change_read(1))
    for n in range(5):  # an idle stream reports its token every getMore
        await asyncio.wait_for(prefetch.put(_Read("idle", token={"_data": f"0{n}"})), 1)
    assert len(prefetch) == 2
    await prefetch.get(0)
    idle = await prefetch.get(0)
    assert idle is not None and idle.token == {"_data": "04"}


# -- the policy run against mongod's answers (fakes stand in for the server; its errors are real) -----


class FakeStream:
    resume_token = {"_data": "825F61DE940000000129"}

    async def close(self) -> None:
        return None


class MongodLikeCollection:
    """Answers like mongod once history is lost: a start time older than the oplog is refused too."""

    def __init__(self) -> None:
        self.opened: list[dict[str, Any]] = []

    async def watch(self, **kwargs: Any) -> FakeStream:
        self.opened.append(kwargs)
        if "start_at_operation_time" in kwargs or "resume_after" in kwargs:
            raise failure(
                286, "Resume of change stream was not possible, as the resume point may no longer be in the oplog."
            )
        return FakeStream()


class NoOplogAccess:
    """A client whose user may not read local.oplog.rs."""

    def __getitem__(self, name: str) -> Any:
        return self

    async def find_one(self, *args: Any, **kwargs: Any) -> Any:
        raise failure(13, 'not authorized on local to execute command { find: "oplog.rs" }')


class RecordingIngest:
    def __init__(self) -> None:
        self.rejected: list[dict[str, Any]] = []

    async def reject(self, items: list[Any], *, status: Any, code: int, reason: str) -> str:
        self.rejected.append({"status": status, "code": code, "reason": reason, "source": items[0].source})
        return f"gap-{len(self.rejected)}"


def runner_for(store: Any, policy: str) -> tuple[_Runner, RecordingIngest]:
    ingest = RecordingIngest()
    ctx = ConnectorContext(
        bus=MemoryBus(),
        state=store,
        invocations=None,  # type: ignore[arg-type]
        completion=CompletionHub(),
        ingest=ingest,  # type: ignore[arg-type]
        region="local",
        default_tz="UTC",
        node_id="unit",
    )
    spec = TriggerSpec(
        trigger_id="t-1",
        function_urn="urn:fss:local:p:function:default:f:latest",
        trigger_type="DDS",
        event_data={
            "instance_id": "i",
            "connection_uri": "mongodb://h:1/",
            "db_name": "shop",
            "collection_name": "orders",
            "on_history_lost": policy,
        },
        created=0.0,
    )
    connector = DDSConnector(ctx)
    return _Runner(connector, resolve_config(spec, {})), ingest


LOST = Position(HW_TOKEN, Timestamp(0x5D8C2F4D, 0x15), "change")
LOST_ERROR = failure(
    286, "Resume of change stream was not possible, as the resume point may no longer be in the oplog."
)


async def test_resume_from_time_falls_back_like_mongod_needs(store: Any) -> None:
    runner, ingest = runner_for(store, "resume_from_time")
    coll = MongodLikeCollection()
    stream = await runner._recover(NoOplogAccess(), coll, LOST, LOST_ERROR)
    assert isinstance(stream, FakeStream)
    assert coll.opened[0]["start_at_operation_time"] == LOST.cluster_time  # first: the lost token's time
    assert "start_at_operation_time" not in coll.opened[-1]  # last: the current end
    assert runner.position is not None and runner.position.kind == "start"
    assert runner.position.token == FakeStream.resume_token
    (gap,) = ingest.rejected
    assert gap["code"] == 4410 and str(gap["status"]) == "DISCARD"
    reason = gap["reason"]
    assert "2019-09-26T03:23:57" in reason and "OperationFailure 286" in reason
    assert "Policy 'resume_from_time': reading again from the current end of the stream." in reason
    assert "Tried first: time: OperationFailure 286" in reason and "oldest: OperationFailure 13" in reason
    assert gap["source"]["policy"] == "resume_from_time" and gap["source"]["mongo_error_code"] == 286
    assert (await store.get_checkpoint("t-1", "change_stream"))["kind"] == "start"


async def test_fail_policy_halts_and_reports_a_lost_position_once(store: Any) -> None:
    runner, ingest = runner_for(store, "fail")
    for _ in range(3):  # the enable, a re-enable, a service restart ...
        with pytest.raises(_Halt):
            await runner._recover(NoOplogAccess(), MongodLikeCollection(), LOST, LOST_ERROR)
        assert runner.state == "history_lost"
    (gap,) = ingest.rejected
    assert str(gap["status"]) == "FAIL"
    assert "Policy 'fail': the trigger stopped reading" in gap["reason"]
    assert runner.last_gap is not None and runner.last_gap["request_id"] == "gap-1"
    assert await store.get_checkpoint("t-1", "change_stream") is None  # the position was not moved
    # another lost position is a new gap
    other = Position(GM_TOKEN, None, "change")
    with pytest.raises(_Halt):
        await runner._recover(NoOplogAccess(), MongodLikeCollection(), other, LOST_ERROR)
    assert len(ingest.rejected) == 2
