"""The Store contract, run against both implementations.

Every test takes the parametrized ``store`` fixture: the embedded SQLite store on a
temporary file and the MongoDB store on a real MongoDB-wire server (SecantusDB, a fresh
database per test). Whatever one store does, the other must do too. A few checks at the
end are MongoDB-only: the indexes the record queries rely on, and that they are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pymongo.errors import OperationFailure

from bus.sqlitedb import Database
from invoker.records import PAYLOAD_KEEP_BYTES, RESPONSE_KEEP_BYTES, Attempt, Record, RecordQuery, RecordState
from schemas.async_config import AsyncInvokeConfig
from schemas.records import AsyncStatus
from triggerbus.store.base import Store
from triggerbus.store.models import (
    QueueDepth,
    StoredDISStream,
    StoredFunction,
    StoredLogGroup,
    StoredLogStream,
    StoredTopic,
    StoredTrigger,
)
from triggerbus.store.mongo import (
    RECORDS_BY_FUNCTION,
    RECORDS_BY_FUNCTION_STATUS,
    RECORDS_BY_SOURCE,
    RECORDS_BY_STATUS,
    RECORDS_BY_TRIGGER,
    RECORDS_TTL,
    MongoStore,
)
from triggerbus.store.sqlite import SQLiteStore
from triggerbus.store.traces import CURRENT_AUDIT_SCOPE, AuditScope, TraceEntry, TraceQuery, UnknownMarker

pytestmark = pytest.mark.integration

PROJECT = "proj1"
FN = "urn:fss:local:proj1:function:default:fn"
FN_Q = FN + ":latest"
OTHER = "urn:fss:local:proj1:function:default:fn2"  # FN is a string prefix of it
OTHER_Q = OTHER + ":latest"


@contextlib.asynccontextmanager
async def fresh_mongo_store(uri: str, retention_s: float = 3600) -> AsyncIterator[MongoStore]:
    """A started MongoStore on a database of its own, dropped afterwards."""
    name = f"t_{uuid4().hex}"
    store = MongoStore(uri, database=name, retention_s=retention_s)
    try:
        await store.start()
        yield store
    finally:
        await store.client.drop_database(name)
        await store.close()


@pytest.fixture
async def mongo_store(mongo_uri: str) -> AsyncIterator[MongoStore]:
    async with fresh_mongo_store(mongo_uri) as store:
        yield store


@pytest.fixture(params=["sqlite", "mongo"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each contract test runs once per implementation (this overrides the SQLite-only fixture)."""
    if request.param == "mongo":
        # the session server starts only when a Mongo case runs (a sync fixture: safe to request here)
        async with fresh_mongo_store(request.getfixturevalue("mongo_uri")) as mongo:
            yield mongo
        return
    db = Database(tmp_path / "store.db")
    await db.open()
    try:
        sqlite = SQLiteStore(db)
        await sqlite.start()
        yield sqlite
    finally:
        await db.close()


# -- builders ----------------------------------------------------------------------------------


def function(name: str = "fn", *, project: str = PROJECT, created: float = 1000.0, **extra: Any) -> StoredFunction:
    return StoredFunction(
        urn=f"urn:fss:local:{project}:function:default:{name}",
        project_id=project,
        package="default",
        name=name,
        runtime="Python3.10",
        handler="index.handler",
        timeout=30,
        memory_size=128,
        created=created,
        updated=created,
        **extra,
    )


def trigger(
    trigger_id: str, function_urn: str = FN_Q, *, kind: str = "TIMER", created: float = 1000.0
) -> StoredTrigger:
    return StoredTrigger(
        trigger_id=trigger_id,
        function_urn=function_urn,
        trigger_type=kind,
        status="ACTIVE",
        event_data={"name": trigger_id, "schedule": "1m", "nested": {"a": [1, 2]}},
        created=created,
        updated=created,
    )


def record(request_id: str, *, function_urn: str = FN_Q, created: float = 1000.0, **fields: Any) -> Record:
    return Record(request_id=request_id, function_urn=function_urn, created=created, **fields)


def config(urn: str = FN, retries: int = 2) -> AsyncInvokeConfig:
    return AsyncInvokeConfig.model_validate(
        {
            "func_urn": urn,
            "max_async_retry_attempts": retries,
            "destination_config": {
                "on_failure": {"destination": "OBS", "param": {"bucket": "failures", "prefix": "x/"}},
            },
        }
    )


async def ids(store: Store, query: RecordQuery) -> tuple[list[str], int]:
    records, count = await store.list_records(query)
    return [r.request_id for r in records], count


# -- functions ---------------------------------------------------------------------------------


async def test_function_create_conflict_and_replace(store: Store) -> None:
    fn = function(user_data={"A": "1"}, credentials={"ak": "enc"})
    assert await store.put_function(fn, create=True) is True
    assert await store.get_function(fn.urn) == fn
    assert await store.put_function(function(description="second"), create=True) is False
    assert (await store.get_function(fn.urn)) == fn  # the loser wrote nothing

    changed = fn.model_copy(update={"description": "changed", "timeout": 60, "updated": 2000.0})
    assert await store.put_function(changed, create=False) is True
    assert await store.get_function(fn.urn) == changed
    assert await store.get_function(FN + "-missing") is None

    # replacing an absent function does not create it
    ghost = function("ghost")
    await store.put_function(ghost, create=False)
    assert await store.get_function(ghost.urn) is None


async def test_list_functions_pages_in_creation_order_with_count(store: Store) -> None:
    for i, created in enumerate([30.0, 10.0, 20.0, 40.0, 50.0]):
        await store.put_function(function(f"f{i}", created=created), create=True)
    await store.put_function(function("elsewhere", project="proj2"), create=True)

    page, count = await store.list_functions(PROJECT, 0, 2)
    assert [f.name for f in page] == ["f1", "f2"]
    assert count == 5
    page, count = await store.list_functions(PROJECT, 2, 2)
    assert [f.name for f in page] == ["f0", "f3"]
    page, count = await store.list_functions(PROJECT, 4, 10)
    assert [f.name for f in page] == ["f4"]
    assert count == 5
    assert await store.list_functions("nobody", 0, 10) == ([], 0)


async def test_delete_function_cascades_to_config_and_triggers(store: Store) -> None:
    await store.put_function(function("fn"), create=True)
    await store.put_function(function("fn2"), create=True)
    await store.put_async_config(config(FN), FN)
    await store.put_async_config(config(OTHER), OTHER)
    await store.put_trigger(trigger("t1", FN_Q))
    await store.put_trigger(trigger("t2", FN + ":v1"))
    await store.put_trigger(trigger("t3", OTHER_Q))

    assert await store.delete_function(FN) is True
    assert await store.get_function(FN) is None
    assert await store.get_async_config(FN) is None
    assert await store.get_trigger("t1") is None
    assert await store.get_trigger("t2") is None
    # the function whose URN merely starts with the same characters keeps everything
    assert await store.get_function(OTHER) is not None
    assert await store.get_async_config(OTHER) is not None
    assert await store.get_trigger("t3") is not None
    assert await store.delete_function(FN) is False


async def test_code_packages_by_digest(store: Store) -> None:
    assert await store.get_code("0" * 64) is None
    big = bytes(range(256)) * (17 * 4096)  # 17 MiB: more than one MongoDB document may hold
    await store.put_code("a" * 64, big)
    await store.put_code("b" * 64, b"PK\x03\x04small")
    await store.put_code("b" * 64, b"other bytes")  # a digest names one content: first write stays
    assert await store.get_code("a" * 64) == big
    assert await store.get_code("b" * 64) == b"PK\x03\x04small"


# -- triggers ----------------------------------------------------------------------------------


async def test_trigger_put_get_replace_and_list_filters(store: Store) -> None:
    await store.put_trigger(trigger("t2", FN_Q, kind="TIMER", created=20.0))
    await store.put_trigger(trigger("t1", FN_Q, kind="APIG", created=10.0))
    await store.put_trigger(trigger("t3", OTHER_Q, kind="TIMER", created=5.0))
    got = await store.get_trigger("t1")
    assert got == trigger("t1", FN_Q, kind="APIG", created=10.0)
    assert await store.get_trigger("nope") is None

    assert [t.trigger_id for t in await store.list_triggers()] == ["t3", "t1", "t2"]
    assert [t.trigger_id for t in await store.list_triggers(function_urn=FN_Q)] == ["t1", "t2"]
    assert [t.trigger_id for t in await store.list_triggers(trigger_type="TIMER")] == ["t3", "t2"]
    assert [t.trigger_id for t in await store.list_triggers(function_urn=FN_Q, trigger_type="TIMER")] == ["t2"]
    assert await store.list_triggers(function_urn="urn:none") == []

    updated = got.model_copy(update={"status": "DISABLED", "last_error": "boom", "last_error_at": 99.5})
    await store.put_trigger(updated)
    assert await store.get_trigger("t1") == updated
    assert len(await store.list_triggers()) == 3


async def test_delete_trigger_cascades_to_timer_state_and_checkpoints(store: Store) -> None:
    await store.put_trigger(trigger("t1"))
    await store.put_trigger(trigger("t2"))
    for tid in ("t1", "t2"):
        await store.set_timer_next(tid, 500.0)
        await store.put_checkpoint(tid, "resume", {"token": tid})

    assert await store.delete_trigger("t1") is True
    assert await store.get_trigger("t1") is None
    assert await store.get_timer_state("t1") == (None, None)
    assert await store.get_checkpoint("t1", "resume") is None
    assert await store.get_timer_state("t2") == (None, 500.0)
    assert await store.get_checkpoint("t2", "resume") == {"token": "t2"}
    assert await store.delete_trigger("t1") is False


# -- async configs -----------------------------------------------------------------------------


async def test_async_configs(store: Store) -> None:
    assert await store.get_async_config(FN) is None
    assert await store.all_async_configs() == {}
    await store.put_async_config(config(FN, retries=2), FN)
    await store.put_async_config(config(OTHER, retries=0), OTHER)
    assert await store.get_async_config(FN) == config(FN, retries=2)
    await store.put_async_config(config(FN, retries=3), FN)
    assert await store.get_async_config(FN) == config(FN, retries=3)
    assert await store.all_async_configs() == {FN: config(FN, retries=3), OTHER: config(OTHER, retries=0)}
    assert await store.delete_async_config(FN) is True
    assert await store.delete_async_config(FN) is False
    assert await store.all_async_configs() == {OTHER: config(OTHER, retries=0)}


# -- records -----------------------------------------------------------------------------------


async def test_insert_record_ignores_duplicates_and_round_trips(store: Store) -> None:
    full = record(
        "r1",
        status=AsyncStatus.WAIT,
        created=1234.5,
        trigger_id="t1",
        trigger_type="TIMER",
        source={"topic": "orders", "partition": 3, "nested": {"a": 1}, "$odd.key": "x"},
        redrive_of="r0",
        payload=b"\x00\x01payload\xff",
        destination={"kind": "OBS", "status": "PENDING"},
        next_attempt_at=1300.0,
    )
    assert await store.insert_record(full) is True
    assert await store.insert_record(record("r1", payload=b"other")) is False
    assert await store.get_record("r1") == full
    assert await store.get_record("missing") is None


async def test_insert_record_truncates_payload_and_response(store: Store) -> None:
    big = record("r1", payload=b"p" * (PAYLOAD_KEEP_BYTES + 10), response=b"r" * (RESPONSE_KEEP_BYTES + 10))
    await store.insert_record(big)
    got = await store.get_record("r1")
    assert got is not None
    assert got.payload == b"p" * PAYLOAD_KEEP_BYTES
    assert got.response == b"r" * RESPONSE_KEEP_BYTES


async def test_record_state(store: Store) -> None:
    await store.insert_record(record("r1", status=AsyncStatus.FAIL, attempts=2, error_message="bad"))
    assert await store.record_state("r1") == RecordState(AsyncStatus.FAIL, 2, "bad")
    assert await store.record_state("missing") is None


async def test_update_record_sets_fields_including_json_ones(store: Store) -> None:
    await store.insert_record(record("r1", source={"a": "1"}))
    await store.update_record("r1")  # nothing to set is fine
    await store.update_record(
        "r1",
        status=AsyncStatus.SUCCESS,
        error_code=0,
        error_message="$not-a-field-path",
        end_time=1500.0,
        response=b"r" * (RESPONSE_KEEP_BYTES + 1),
        destination={"kind": "OBS", "target": "b/x", "status": "SENT"},
        source={"b": 2},
        cancel_requested=1,
        condition="Succeeded",
    )
    got = await store.get_record("r1")
    assert got is not None
    assert got.status is AsyncStatus.SUCCESS
    assert got.error_message == "$not-a-field-path"
    assert got.end_time == 1500.0
    assert got.response == b"r" * RESPONSE_KEEP_BYTES
    assert got.destination == {"kind": "OBS", "target": "b/x", "status": "SENT"}
    assert got.source == {"b": 2}
    assert got.cancel_requested is True
    assert got.condition == "Succeeded"

    await store.update_record("r1", destination={}, source={})
    got = await store.get_record("r1")
    assert got is not None and got.destination == {} and got.source == {}

    with pytest.raises(ValueError):
        await store.update_record("r1", created=1.0)
    with pytest.raises(ValueError):
        await store.update_record("r1", no_such_field=1)
    await store.update_record("missing", status=AsyncStatus.FAIL)  # no record: nothing happens
    assert await store.get_record("missing") is None


async def test_start_attempt_moves_only_wait_or_running_records(store: Store) -> None:
    await store.insert_record(record("r1", next_attempt_at=1100.0))
    assert await store.start_attempt("r1", Attempt(n=1, start=2000.0)) is True
    got = await store.get_record("r1")
    assert got is not None
    assert (got.status, got.attempts, got.start_time, got.next_attempt_at) == (AsyncStatus.RUNNING, 1, 2000.0, None)

    # a retry: back to WAIT, then attempt 2 keeps the first start_time
    await store.update_record("r1", status=AsyncStatus.WAIT, next_attempt_at=2100.0)
    assert await store.start_attempt("r1", Attempt(n=2, start=2200.0)) is True
    got = await store.get_record("r1")
    assert got is not None
    assert (got.status, got.attempts, got.start_time, got.next_attempt_at) == (AsyncStatus.RUNNING, 2, 2000.0, None)
    # a redelivered attempt 2 (RUNNING -> RUNNING) replaces it instead of adding one
    assert await store.start_attempt("r1", Attempt(n=2, start=2300.0)) is True
    assert [(a.n, a.start, a.status) for a in await store.list_attempts("r1")] == [
        (1, 2000.0, "RUNNING"),
        (2, 2300.0, "RUNNING"),
    ]

    for status in (AsyncStatus.SUCCESS, AsyncStatus.FAIL, AsyncStatus.DISCARD):
        await store.insert_record(record(f"done-{status.value}", status=status))
        assert await store.start_attempt(f"done-{status.value}", Attempt(n=1, start=1.0)) is False
        done = await store.get_record(f"done-{status.value}")
        assert done is not None and done.status is status and done.attempts == 0 and done.start_time is None
        assert await store.list_attempts(f"done-{status.value}") == []
    assert await store.start_attempt("missing", Attempt(n=1, start=1.0)) is False


async def test_cancel_waiting_only_cancels_wait_records(store: Store) -> None:
    await store.insert_record(record("wait", next_attempt_at=5000.0))
    before = time.time()
    assert await store.cancel_waiting("wait", "canceled by operator") is True
    got = await store.get_record("wait")
    assert got is not None
    assert got.status is AsyncStatus.DISCARD
    assert (got.error_code, got.error_message, got.condition) == (4208, "canceled by operator", "Canceled")
    assert got.cancel_requested is True and got.next_attempt_at is None
    assert got.end_time is not None and got.end_time >= before
    assert await store.cancel_waiting("wait", "again") is False

    await store.insert_record(record("running"))
    await store.start_attempt("running", Attempt(n=1, start=1.0))
    assert await store.cancel_waiting("running", "too late") is False
    running = await store.get_record("running")
    assert running is not None and running.status is AsyncStatus.RUNNING and running.error_message == ""
    assert await store.cancel_waiting("missing", "x") is False


async def test_cancel_and_start_race_has_one_winner(store: Store) -> None:
    for i in range(10):
        await store.insert_record(record(f"r{i}"))
    outcomes = await asyncio.gather(
        *(
            op
            for i in range(10)
            for op in (store.cancel_waiting(f"r{i}", "canceled"), store.start_attempt(f"r{i}", Attempt(n=1, start=1.0)))
        )
    )
    for i in range(10):
        canceled, started = outcomes[2 * i], outcomes[2 * i + 1]
        assert canceled != started
        got = await store.get_record(f"r{i}")
        assert got is not None
        assert got.status is (AsyncStatus.DISCARD if canceled else AsyncStatus.RUNNING)
        assert len(await store.list_attempts(f"r{i}")) == (0 if canceled else 1)


async def test_finish_attempt_writes_attempt_and_record_together(store: Store) -> None:
    await store.insert_record(record("r1"))
    await store.start_attempt("r1", Attempt(n=1, start=10.0))
    failed = Attempt(
        n=1,
        start=10.0,
        end=11.0,
        status="FAIL",
        error_code=500,
        error_message="$boom",
        duration_ms=1000.0,
        memory_mb=64.0,
        logs="line 1\nline $2",
    )
    await store.finish_attempt("r1", failed, status=AsyncStatus.WAIT, error_message="$boom", next_attempt_at=20.0)
    await store.start_attempt("r1", Attempt(n=2, start=20.0))
    ok = Attempt(n=2, start=20.0, end=20.5, status="SUCCESS", duration_ms=500.0, logs="ok")
    await store.finish_attempt(
        "r1",
        ok,
        status=AsyncStatus.SUCCESS,
        error_message="",
        end_time=20.5,
        response=b'{"ok":true}',
        condition="Succeeded",
    )
    got = await store.get_record("r1")
    assert got is not None
    assert (got.status, got.attempts, got.end_time, got.response) == (AsyncStatus.SUCCESS, 2, 20.5, b'{"ok":true}')
    assert got.condition == "Succeeded" and got.start_time == 10.0
    assert await store.list_attempts("r1") == [failed, ok]

    await store.finish_attempt("r1", ok)  # no record fields: only the attempt is rewritten
    assert (await store.get_record("r1")) == got
    with pytest.raises(ValueError):
        await store.finish_attempt("r1", ok, function_urn="other")


async def test_list_attempts_is_ordered_by_number(store: Store) -> None:
    await store.insert_record(record("r1"))
    for n in (3, 1, 2):
        await store.finish_attempt("r1", Attempt(n=n, start=float(n), end=float(n) + 0.5, status="FAIL"))
    assert [a.n for a in await store.list_attempts("r1")] == [1, 2, 3]
    assert await store.list_attempts("missing") == []


async def seed_records(store: Store) -> None:
    rows = [
        ("a", 100.0, AsyncStatus.SUCCESS, "t1", {"topic": "orders", "partition": 0, "offset": 7}),
        ("b", 200.0, AsyncStatus.FAIL, "t1", {"topic": "orders", "partition": 1, "offset": 7}),
        ("c", 300.0, AsyncStatus.WAIT, "t2", {"topic": "billing", "partition": 0, "flag": True}),
        ("d", 300.0, AsyncStatus.SUCCESS, None, {}),
        ("e", 400.0, AsyncStatus.RUNNING, "t2", {"topic": "orders", "a=b": "c", "big": "x" * 2000}),
        ("f", 500.0, AsyncStatus.SUCCESS, None, {"a": "b=c"}),
    ]
    for request_id, created, status, trigger_id, source in rows:
        await store.insert_record(
            record(request_id, created=created, status=status, trigger_id=trigger_id, source=source)
        )
    await store.insert_record(record("other", function_urn=OTHER_Q, created=250.0, source={"topic": "orders"}))


async def test_list_records_newest_first_with_count_and_paging(store: Store) -> None:
    await seed_records(store)
    assert await ids(store, RecordQuery(FN_Q)) == (["f", "e", "c", "d", "b", "a"], 6)  # ties by request id
    assert await ids(store, RecordQuery(FN_Q, limit=2)) == (["f", "e"], 6)
    assert await ids(store, RecordQuery(FN_Q, marker=2, limit=2)) == (["c", "d"], 6)
    assert await ids(store, RecordQuery(FN_Q, marker=5, limit=2)) == (["a"], 6)
    assert await ids(store, RecordQuery(FN_Q, marker=6, limit=2)) == ([], 6)
    assert await ids(store, RecordQuery(OTHER_Q)) == (["other"], 1)
    assert await ids(store, RecordQuery("urn:nothing")) == ([], 0)
    records, _ = await store.list_records(RecordQuery(FN_Q, request_id="a"))
    assert records == [await store.get_record("a")]


async def test_list_records_filters(store: Store) -> None:
    await seed_records(store)
    assert await ids(store, RecordQuery(FN_Q, status=AsyncStatus.SUCCESS)) == (["f", "d", "a"], 3)
    assert await ids(store, RecordQuery(FN_Q, status=AsyncStatus.SUCCESS, limit=1, marker=1)) == (["d"], 3)
    assert await ids(store, RecordQuery(FN_Q, request_id="c")) == (["c"], 1)
    assert await ids(store, RecordQuery(FN_Q, request_id="other")) == ([], 0)  # another function's
    assert await ids(store, RecordQuery(FN_Q, begin=200.0, end=400.0)) == (["e", "c", "d", "b"], 4)
    assert await ids(store, RecordQuery(FN_Q, begin=301.0)) == (["f", "e"], 2)
    assert await ids(store, RecordQuery(FN_Q, end=200.0)) == (["b", "a"], 2)
    assert await ids(store, RecordQuery(FN_Q, trigger_id="t2")) == (["e", "c"], 2)
    assert await ids(store, RecordQuery(FN_Q, trigger_id="t1", status=AsyncStatus.FAIL)) == (["b"], 1)
    # both ends of the window are inclusive, whichever index serves the query
    assert await ids(store, RecordQuery(FN_Q, begin=300.0, end=300.0)) == (["c", "d"], 2)
    assert await ids(store, RecordQuery(FN_Q, status=AsyncStatus.SUCCESS, begin=100.0, end=300.0)) == (["d", "a"], 2)
    assert await ids(store, RecordQuery(FN_Q, trigger_id="t2", begin=300.0, end=400.0)) == (["e", "c"], 2)


async def test_list_records_by_source_coordinates(store: Store) -> None:
    await seed_records(store)
    assert await ids(store, RecordQuery(FN_Q, source={"topic": "orders"})) == (["e", "b", "a"], 3)
    assert await ids(store, RecordQuery(FN_Q, source={"topic": "orders"}, limit=1, marker=1)) == (["b"], 3)
    # numbers are matched by their text; several coordinates must all match
    assert await ids(store, RecordQuery(FN_Q, source={"offset": "7"})) == (["b", "a"], 2)
    assert await ids(store, RecordQuery(FN_Q, source={"topic": "orders", "partition": "0"})) == (["a"], 1)
    assert await ids(store, RecordQuery(FN_Q, source={"topic": "orders", "partition": "9"})) == ([], 0)
    assert await ids(store, RecordQuery(FN_Q, source={"topic": "orders"}, status=AsyncStatus.FAIL)) == (["b"], 1)
    assert await ids(store, RecordQuery(FN_Q, source={"topic": "orders"}, begin=150.0, end=450.0)) == (
        ["e", "b"],
        2,
    )
    assert await ids(store, RecordQuery(FN_Q, source={"topic": "orders"}, begin=200.0, end=400.0)) == (
        ["e", "b"],
        2,
    )
    assert await ids(store, RecordQuery(FN_Q, source={"topic": "orders"}, request_id="a")) == (["a"], 1)
    assert await ids(store, RecordQuery(OTHER_Q, source={"topic": "orders"})) == (["other"], 1)
    # names and values containing '=' do not run into each other
    assert await ids(store, RecordQuery(FN_Q, source={"a=b": "c"})) == (["e"], 1)
    assert await ids(store, RecordQuery(FN_Q, source={"a": "b=c"})) == (["f"], 1)
    # only scalar coordinates (not booleans, not over-long values) are searchable
    assert await ids(store, RecordQuery(FN_Q, source={"flag": "True"})) == ([], 0)
    assert await ids(store, RecordQuery(FN_Q, source={"big": "x" * 2000})) == ([], 0)


async def test_list_records_finds_the_redrives_of_a_record(store: Store) -> None:
    await seed_records(store)
    await store.insert_record(record("b2", created=600.0, redrive_of="b"))
    await store.insert_record(record("b3", created=700.0, redrive_of="b", status=AsyncStatus.SUCCESS))
    await store.insert_record(record("x2", function_urn=OTHER_Q, created=650.0, redrive_of="b"))
    assert await ids(store, RecordQuery(FN_Q, redrive_of="b")) == (["b3", "b2"], 2)
    assert await ids(store, RecordQuery(FN_Q, redrive_of="b", status=AsyncStatus.SUCCESS)) == (["b3"], 1)
    assert await ids(store, RecordQuery(FN_Q, redrive_of="a")) == ([], 0)


async def test_attempt_stats_per_bucket(store: Store) -> None:
    # r1: created at 1000, a failed attempt then a success; r2: a throttle; r3 created a day
    # earlier, its retry ran inside the window; r4 starts after the window; r5 is another function's.
    attempts = {
        "r1": (1000.0, FN_Q, [(1000.0, "FAIL", 4101, 10.0), (1065.0, "SUCCESS", 0, 30.0)]),
        "r2": (1010.0, FN_Q, [(1010.0, "FAIL", 4290, 5.0)]),
        "r3": (1000.0 - 80000, FN_Q, [(1005.0, "SUCCESS", 0, 20.0), (1030.0, "RUNNING", 0, 0.0)]),
        "r4": (1200.0, FN_Q, [(1200.0, "SUCCESS", 0, 1.0)]),
        "r5": (1000.0, OTHER_Q, [(1000.0, "SUCCESS", 0, 99.0)]),
    }
    for request_id, (created, urn, runs) in attempts.items():
        await store.insert_record(record(request_id, function_urn=urn, created=created))
        for n, (start, status, code, duration) in enumerate(runs, 1):
            end = None if status == "RUNNING" else start + duration / 1000
            attempt = Attempt(n=n, start=start, end=end, status=status, error_code=code, duration_ms=duration)
            await store.finish_attempt(request_id, attempt)
    buckets = await store.attempt_stats(FN_Q, 1000.0, 1120.0, 60.0)
    assert [b.start for b in buckets] == [1000.0, 1060.0]
    first, second = buckets
    assert (first.invocations, first.errors, first.throttles) == (4, 1, 1)
    assert (first.p50_ms, first.p95_ms, first.p99_ms) == (10.0, 20.0, 20.0)  # 5, 10, 20 (the running one excluded)
    assert (second.invocations, second.errors, second.throttles, second.p50_ms) == (1, 0, 0, 30.0)
    empty = await store.attempt_stats(OTHER_Q, 2000.0, 2060.0, 30.0)
    assert [(b.invocations, b.p50_ms) for b in empty] == [(0, None), (0, None)]
    with pytest.raises(ValueError):
        await store.attempt_stats(FN_Q, 0.0, 10**7, 1.0)


async def test_purge_records_drops_only_old_terminal_records(store: Store) -> None:
    await seed_records(store)
    await store.finish_attempt("a", Attempt(n=1, start=100.0, end=101.0, status="SUCCESS"))
    # older than 350: a (SUCCESS), b (FAIL), d (SUCCESS) go; c (WAIT) stays; e, f are newer
    assert await store.purge_records(350.0) == 3
    assert await store.purge_records(350.0) == 0
    assert await ids(store, RecordQuery(FN_Q)) == (["f", "e", "c"], 3)
    assert await store.get_record("a") is None
    assert await store.list_attempts("a") == []
    assert await ids(store, RecordQuery(FN_Q, source={"topic": "orders"})) == (["e"], 1)
    assert await store.purge_records(0.0) == 0


async def test_queue_depths_count_unfinished_records_per_function(store: Store) -> None:
    other = FN_Q.replace(":fn:", ":other:")
    assert await store.queue_depths() == []
    seeds = (("w1", FN_Q, 300.0), ("w2", FN_Q, 200.0), ("r1", FN_Q, 100.0), ("o1", other, 50.0))
    for request_id, urn, created in seeds:
        await store.insert_record(record(request_id, function_urn=urn, created=created))
    await store.insert_record(record("done", created=10.0, status=AsyncStatus.SUCCESS))
    await store.start_attempt("r1", Attempt(n=1, start=400.0))  # RUNNING: counted, not "oldest waiting"
    await store.start_attempt("o1", Attempt(n=1, start=400.0))
    depths = {d.function_urn: d for d in await store.queue_depths()}
    assert depths == {
        FN_Q: QueueDepth(FN_Q, waiting=2, running=1, oldest_wait_created=200.0),
        other: QueueDepth(other, waiting=0, running=1, oldest_wait_created=None),
    }


# -- leases ------------------------------------------------------------------------------------


async def test_lease_acquire_renew_refuse_takeover_release(store: Store) -> None:
    assert await store.acquire_lease("timer", "n1", 30.0) is True
    assert await store.acquire_lease("timer", "n1", 30.0) is True  # renew
    assert await store.acquire_lease("timer", "n2", 30.0) is False  # held
    assert await store.acquire_lease("other", "n2", 30.0) is True  # leases are independent

    await store.release_lease("timer", "n2")  # not the owner: no effect
    assert await store.acquire_lease("timer", "n2", 30.0) is False
    await store.release_lease("timer", "n1")
    assert await store.acquire_lease("timer", "n2", 0.2) is True

    await asyncio.sleep(0.35)  # n2's lease expires
    assert await store.acquire_lease("timer", "n1", 30.0) is True
    assert await store.acquire_lease("timer", "n2", 30.0) is False


async def test_concurrent_acquirers_get_exactly_one_lease(store: Store) -> None:
    results = await asyncio.gather(*(store.acquire_lease("race", f"node-{i}", 30.0) for i in range(10)))
    assert results.count(True) == 1
    winner = f"node-{results.index(True)}"
    assert await store.acquire_lease("race", winner, 30.0) is True
    results = await asyncio.gather(*(store.acquire_lease("race", f"node-{i}", 30.0) for i in range(10)))
    assert results == [f"node-{i}" == winner for i in range(10)]


# -- timer state ---------------------------------------------------------------------------------


async def test_timer_state_and_claim_fence(store: Store) -> None:
    assert await store.get_timer_state("t1") == (None, None)
    await store.set_timer_next("t1", 60.0)
    assert await store.get_timer_state("t1") == (None, 60.0)

    assert await store.claim_timer_fire("t1", 60.0, "req-60", "n1", 120.0) is True
    assert await store.get_timer_state("t1") == (60.0, 120.0)
    # a second scheduler claiming the same fire loses, whoever it is
    assert await store.claim_timer_fire("t1", 60.0, "req-60b", "n2", 120.0) is False
    assert await store.claim_timer_fire("t1", 60.0, "req-60", "n1", 120.0) is False
    assert await store.claim_timer_fire("t1", 120.0, "req-120", "n1", 180.0) is True
    assert await store.get_timer_state("t1") == (120.0, 180.0)
    # a late claim of an older fire never moves last_fire back (but sets next_fire)
    assert await store.claim_timer_fire("t1", 30.0, "req-30", "n2", 190.0) is True
    assert await store.get_timer_state("t1") == (120.0, 190.0)
    await store.set_timer_next("t1", None)
    assert await store.get_timer_state("t1") == (120.0, None)
    # another trigger has its own fence
    assert await store.claim_timer_fire("t2", 60.0, "req-t2", "n1", None) is True
    assert await store.get_timer_state("t2") == (60.0, None)


async def test_concurrent_claims_of_one_fire_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(*(store.claim_timer_fire("t1", 60.0, f"req-{i}", f"n{i}", 120.0) for i in range(8)))
    assert results.count(True) == 1
    assert await store.get_timer_state("t1") == (60.0, 120.0)


async def test_unsent_timer_fires_are_claims_without_records(store: Store) -> None:
    since = time.time() - 1
    await store.claim_timer_fire("t1", 120.0, "sent", "n1", 180.0)
    await store.insert_record(record("sent", trigger_id="t1"))
    await store.claim_timer_fire("t1", 180.0, "lost-2", "n1", 240.0)
    await store.claim_timer_fire("t2", 60.0, "lost-1", "n1", 120.0)
    assert await store.unsent_timer_fires(since) == [("t2", 60.0, "lost-1"), ("t1", 180.0, "lost-2")]
    assert await store.unsent_timer_fires(time.time() + 60) == []  # claimed before ``since``

    await store.insert_record(record("lost-1"))
    assert await store.unsent_timer_fires(since) == [("t1", 180.0, "lost-2")]

    await store.purge_timer_fires(time.time() + 60)
    assert await store.unsent_timer_fires(since) == []
    # the fence went with the purge
    assert await store.claim_timer_fire("t1", 180.0, "lost-2", "n1", 240.0) is True


async def test_purge_timer_fires_keeps_recent_ones(store: Store) -> None:
    since = time.time() - 1
    await store.claim_timer_fire("t1", 60.0, "r1", "n1", None)
    await store.purge_timer_fires(since)
    assert await store.unsent_timer_fires(since) == [("t1", 60.0, "r1")]
    assert await store.claim_timer_fire("t1", 60.0, "r1", "n1", None) is False


# -- checkpoints and audit -----------------------------------------------------------------------


async def test_checkpoints(store: Store) -> None:
    assert await store.get_checkpoint("t1", "resume") is None
    await store.put_checkpoint("t1", "resume", {"_data": "826...", "$odd": [1, 2]})
    await store.put_checkpoint("t1", "reset", 42)
    await store.put_checkpoint("t2", "resume", "token-2")
    assert await store.get_checkpoint("t1", "resume") == {"_data": "826...", "$odd": [1, 2]}
    assert await store.get_checkpoint("t1", "reset") == 42
    await store.put_checkpoint("t1", "reset", {"0": 10, "1": None})
    assert await store.get_checkpoint("t1", "reset") == {"0": 10, "1": None}
    await store.put_checkpoint("t1", "tuple", (1, 2))  # JSON semantics, as stored text
    assert await store.get_checkpoint("t1", "tuple") == [1, 2]

    await store.delete_checkpoints("t1")
    assert await store.get_checkpoint("t1", "resume") is None
    assert await store.get_checkpoint("t1", "reset") is None
    assert await store.get_checkpoint("t2", "resume") == "token-2"


async def test_concurrent_checkpoint_writes_leave_one_value(store: Store) -> None:
    await asyncio.gather(*(store.put_checkpoint("t1", "offset", i) for i in range(10)))
    assert await store.get_checkpoint("t1", "offset") in range(10)


async def test_audit_log_newest_first(store: Store) -> None:
    assert await store.audit_log() == []
    before = time.time()
    when = datetime(2026, 1, 2, tzinfo=UTC)
    for i in range(5):
        await store.audit(f"action{i}", f"res{i}", {"i": i, "when": when, "$k": "v"})
    log = await store.audit_log()
    assert [e["action"] for e in log] == ["action4", "action3", "action2", "action1", "action0"]
    assert log[0]["resource"] == "res4"
    assert log[0]["detail"] == {"i": 4, "when": str(when), "$k": "v"}
    assert log[0]["ts"] >= before
    assert [e["action"] for e in await store.audit_log(limit=2)] == ["action4", "action3"]


async def test_update_record_refreshes_source_search(store: Store) -> None:
    await store.insert_record(record("r1", source={"k": "old"}))
    await store.update_record("r1", source={"k": "new"})
    assert await ids(store, RecordQuery(FN_Q, source={"k": "new"})) == (["r1"], 1)
    assert await ids(store, RecordQuery(FN_Q, source={"k": "old"})) == ([], 0)


# -- MongoDB only: indexes and their use -----------------------------------------------------------


async def index_info(collection: Any) -> dict[str, dict[str, Any]]:
    return {ix["name"]: dict(ix) for ix in await collection.list_indexes().to_list(None)}


async def test_mongo_record_indexes_exist(mongo_store: MongoStore) -> None:
    indexes = await index_info(mongo_store.records)
    keys = {name: list(ix["key"].items()) for name, ix in indexes.items()}
    assert keys["_id_"] == [("_id", 1)]
    assert keys[RECORDS_BY_FUNCTION] == [("function_urn", 1), ("created", -1)]
    assert keys[RECORDS_BY_FUNCTION_STATUS] == [("function_urn", 1), ("status", 1), ("created", -1)]
    assert keys[RECORDS_BY_STATUS] == [("status", 1), ("created", 1)]
    assert keys[RECORDS_BY_TRIGGER] == [("trigger_id", 1), ("created", 1)]
    assert keys[RECORDS_BY_SOURCE] == [("source_kv", 1), ("function_urn", 1), ("created", -1)]
    assert keys[RECORDS_TTL] == [("created_at", 1)]
    assert indexes[RECORDS_TTL]["expireAfterSeconds"] == 3600
    assert indexes[RECORDS_TTL]["partialFilterExpression"] == {"status": {"$in": ["SUCCESS", "FAIL", "DISCARD"]}}
    for collection in (mongo_store.audit_entries, mongo_store.timer_fires):
        ttl = [ix for ix in (await index_info(collection)).values() if "expireAfterSeconds" in ix]
        assert [(list(ix["key"].items()), ix["expireAfterSeconds"]) for ix in ttl] == [([("created_at", 1)], 3600)]
    fence = (await index_info(mongo_store.timer_fires))["timer_fires_fence"]
    assert fence["unique"] is True


async def test_mongo_restart_with_new_retention_updates_ttl(mongo_store: MongoStore, mongo_uri: str) -> None:
    again = MongoStore(mongo_uri, database=mongo_store.db.name, retention_s=7200)
    try:
        await again.start()
        await again.start()  # idempotent
        for collection in (again.records, again.audit_entries, again.timer_fires):
            ttl = [ix for ix in (await index_info(collection)).values() if "expireAfterSeconds" in ix]
            assert [ix["expireAfterSeconds"] for ix in ttl] == [7200]
    finally:
        await again.close()
    with pytest.raises(ValueError):
        MongoStore(mongo_uri, retention_s=0)


async def test_mongo_document_layout(mongo_store: MongoStore) -> None:
    """Binary stays binary, attempts live inside the record, created_at is a Date for the TTL."""
    await mongo_store.insert_record(record("r1", created=1_700_000_000.5, payload=b"\x00\xff", source={"k": 1}))
    await mongo_store.start_attempt("r1", Attempt(n=1, start=1_700_000_001.0))
    raw = await mongo_store.records.find_one({"_id": "r1"})
    assert raw is not None
    assert raw["payload"] == b"\x00\xff" and isinstance(raw["payload"], bytes)
    assert raw["created"] == 1_700_000_000.5
    assert raw["created_at"] == datetime.fromtimestamp(1_700_000_000.5, UTC)
    assert [a["n"] for a in raw["attempt_log"]] == [1]
    assert raw["source_kv"] == ["k=1"]


async def test_mongo_separate_clients_share_leases_and_fences(mongo_store: MongoStore, mongo_uri: str) -> None:
    """Like separate processes: one client (connection pool) each, one database."""
    nodes = [MongoStore(mongo_uri, database=mongo_store.db.name) for _ in range(5)]
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        leases = await asyncio.gather(*(n.acquire_lease("timer", f"node-{i}", 30.0) for i, n in enumerate(nodes)))
        assert leases.count(True) == 1
        claims = await asyncio.gather(
            *(n.claim_timer_fire("t1", 60.0, f"req-{i}", f"node-{i}", 120.0) for i, n in enumerate(nodes))
        )
        assert claims.count(True) == 1
        inserted = await asyncio.gather(*(n.insert_record(record("r1")) for n in nodes))
        assert inserted.count(True) == 1
        await asyncio.gather(*(n.put_checkpoint("t1", "offset", i) for i, n in enumerate(nodes)))
        assert await mongo_store.get_checkpoint("t1", "offset") in range(5)
    finally:
        for n in nodes:
            await n.close()


def index_scans(plan: Any) -> list[str]:
    """Names of the indexes an explain() plan scans (IXSCAN stages anywhere in it)."""
    found: list[str] = []
    if isinstance(plan, dict):
        if plan.get("stage") == "IXSCAN":
            found.append(str(plan.get("indexName")))
        for value in plan.values():
            found.extend(index_scans(value))
    elif isinstance(plan, list):
        for value in plan:
            found.extend(index_scans(value))
    return found


async def explain_winning_plan(mongo_store: MongoStore, query: RecordQuery) -> Any:
    """The winning plan of the find list_records issues for ``query`` (skips if unsupported)."""
    try:
        plan = await mongo_store.explain_list_records(query)
    except OperationFailure as exc:  # pragma: no cover - depends on the server
        pytest.skip(f"server does not support explain on find: {exc}")
    if "queryPlanner" not in plan:  # pragma: no cover - depends on the server
        pytest.skip("server's explain() has no queryPlanner section")
    return plan["queryPlanner"]["winningPlan"]


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (RecordQuery(FN_Q, source={"topic": "orders"}, begin=0.0, end=1e12), RECORDS_BY_SOURCE),
        (RecordQuery(FN_Q, source={"topic": "orders", "partition": "0"}), RECORDS_BY_SOURCE),
        (RecordQuery(FN_Q, begin=150.0, end=450.0), RECORDS_BY_FUNCTION),
        (RecordQuery(FN_Q, status=AsyncStatus.SUCCESS, begin=1.0, end=2.0), RECORDS_BY_FUNCTION_STATUS),
        (RecordQuery(FN_Q, trigger_id="t1", begin=1.0, end=1e12), RECORDS_BY_TRIGGER),
        (RecordQuery(FN_Q, request_id="a", source={"topic": "orders"}), "_id_"),
    ],
    ids=["source", "two-coordinates", "function-time", "function-status-time", "trigger", "request-id"],
)
async def test_mongo_record_queries_scan_their_index(mongo_store: MongoStore, query: RecordQuery, index: str) -> None:
    await seed_records(mongo_store)
    plan = await explain_winning_plan(mongo_store, query)
    assert index_scans(plan) == [index], plan
    assert "COLLSCAN" not in str(plan)


# -- CTS traces (the audit log) and SMN topics ----------------------------------------------------


def cts_trace(trace_id: str, time_ms: int, **fields: Any) -> dict[str, Any]:
    trace: dict[str, Any] = {
        "time": time_ms,
        "user": {"name": "alice", "id": "", "domain": {"name": "", "id": ""}},
        "request": {},
        "response": {},
        "code": 200,
        "service_type": "FunctionGraph",
        "resource_type": "Trigger",
        "resource_name": "fn",
        "resource_id": "t1",
        "trace_name": "createTrigger",
        "trace_type": "ApiCall",
        "record_time": time_ms,
        "trace_id": trace_id,
        "trace_status": "normal",
    }
    trace.update(fields)
    return trace


async def trace_ids(store: Store, query: TraceQuery) -> list[str]:
    return [e.trace_id for e in await store.list_traces(query)]


async def test_audit_writes_system_action_traces_with_secrets_masked(store: Store) -> None:
    detail = {"topic": "t", "password": "hunter2", "connection_uri": "mongodb://u:pw@db:27017/x", "n": 1}
    await store.audit("kafkaRecordDropped", "trigger-1", detail)
    [entry] = await store.list_traces(TraceQuery())
    trace = entry.trace
    assert trace["trace_type"] == "SystemAction"
    assert trace["trace_name"] == "kafkaRecordDropped"
    assert (trace["resource_id"], trace["resource_type"]) == ("trigger-1", "Trigger")
    assert trace["service_type"] == "FunctionGraph" and trace["trace_status"] == "normal"
    assert isinstance(trace["time"], int) and trace["record_time"] == trace["time"]
    masked = {"topic": "t", "password": "******", "connection_uri": "mongodb://u:******@db:27017/x", "n": 1}
    assert entry.detail == masked
    assert trace["response"] == masked
    assert "hunter2" not in str(await store.audit_log()) and "pw@" not in str(trace)


async def test_audit_inside_an_api_request_is_left_to_the_request(store: Store) -> None:
    scope = AuditScope()
    token = CURRENT_AUDIT_SCOPE.set(scope)
    try:
        await store.audit("createTrigger", "t1", {"type": "TIMER"})  # a management operation: the request's
        await store.audit("kafkaStartPosition", "t1", {"offset": 3})  # an internal action: written now
        absorbed = [(o.action, o.resource, o.detail) for o in scope.operations]
        assert absorbed == [("createTrigger", "t1", {"type": "TIMER"})]
        assert [e["action"] for e in await store.audit_log()] == ["kafkaStartPosition"]
        scope.close()  # e.g. a task the request started, auditing after the request ended
        await store.audit("deleteTrigger", "t1", {})
    finally:
        CURRENT_AUDIT_SCOPE.reset(token)
    assert [e["action"] for e in await store.audit_log()] == ["deleteTrigger", "kafkaStartPosition"]
    assert len(scope.operations) == 1


async def test_traces_insert_once_and_query_by_fields_and_time(store: Store) -> None:
    assert await store.insert_trace(TraceEntry(cts_trace("a", 1000)))
    assert not await store.insert_trace(TraceEntry(cts_trace("a", 9999, trace_name="other")))
    await store.insert_trace(TraceEntry(cts_trace("b", 2000, trace_name="deleteTrigger", trace_status="warning")))
    await store.insert_trace(TraceEntry(cts_trace("c", 3000, resource_type="Functions", resource_id="urn:f")))
    await store.insert_trace(TraceEntry(cts_trace("d", 4000, user={"name": "bob"}, service_type="SMN")))
    assert await trace_ids(store, TraceQuery()) == ["d", "c", "b", "a"]
    assert (await store.list_traces(TraceQuery(trace_id="a")))[0].trace["trace_name"] == "createTrigger"
    assert await trace_ids(store, TraceQuery(trace_name="deleteTrigger")) == ["b"]
    assert await trace_ids(store, TraceQuery(trace_status="warning")) == ["b"]
    assert await trace_ids(store, TraceQuery(resource_type="Functions", resource_id="urn:f")) == ["c"]
    assert await trace_ids(store, TraceQuery(user="bob")) == ["d"]
    assert await trace_ids(store, TraceQuery(service_type="SMN")) == ["d"]
    assert await trace_ids(store, TraceQuery(begin_ms=2000, end_ms=3000)) == ["c", "b"]
    assert await trace_ids(store, TraceQuery(trace_name="createTrigger", begin_ms=1500)) == ["d", "c"]


async def test_trace_pages_follow_the_marker_through_equal_times(store: Store) -> None:
    for i in range(5):
        await store.insert_trace(TraceEntry(cts_trace(f"same-{i}", 5000)))
    await store.insert_trace(TraceEntry(cts_trace("older", 100)))
    seen: list[str] = []
    after = None
    while True:
        page = await trace_ids(store, TraceQuery(limit=2, after=after))
        if not page:
            break
        seen += page
        after = page[-1]
    assert seen == ["same-4", "same-3", "same-2", "same-1", "same-0", "older"]
    with pytest.raises(UnknownMarker):
        await store.list_traces(TraceQuery(after="no-such-trace"))


async def test_traces_keep_arbitrary_json_and_detail(store: Store) -> None:
    odd = cts_trace(
        "odd",
        10,
        resource_id={"$oid": "x"},
        request={"$set": {"a.b": 1}, "list": [1, {"$gt": 2}]},
        new_v4_key={"kept": True},
    )
    await store.insert_trace(TraceEntry(odd, detail={"k.dotted": "v", "$op": 1}))
    [entry] = await store.list_traces(TraceQuery(trace_id="odd"))
    assert entry.trace == odd
    assert entry.detail == {"k.dotted": "v", "$op": 1}
    assert await trace_ids(store, TraceQuery(resource_id='{"$oid": "x"}')) == ["odd"]


async def test_pending_traces_until_delivered(store: Store) -> None:
    targets = [{"trigger_id": "t1", "function_urn": FN_Q}, {"trigger_id": "t2", "function_urn": OTHER_Q}]
    await store.insert_trace(TraceEntry(cts_trace("owed", 1), targets=targets, recorded=100.0))
    await store.insert_trace(TraceEntry(cts_trace("none", 2), recorded=100.0))
    await store.insert_trace(TraceEntry(cts_trace("new", 3), targets=targets[:1], recorded=500.0))
    assert [e.trace_id for e in await store.pending_traces(200.0, 10)] == ["owed"]
    assert (await store.pending_traces(200.0, 10))[0].targets == targets
    assert [e.trace_id for e in await store.pending_traces(1000.0, 10)] == ["owed", "new"]
    await store.trace_delivered("owed")
    assert [e.trace_id for e in await store.pending_traces(1000.0, 10)] == ["new"]
    assert (await store.list_traces(TraceQuery(trace_id="owed")))[0].targets == []


async def test_topics_create_once_list_per_project_and_delete(store: Store) -> None:
    def topic(name: str, project: str = PROJECT, created: float = 1.0) -> StoredTopic:
        urn = f"urn:smn:local:{project}:{name}"
        return StoredTopic(topic_urn=urn, project_id=project, name=name, topic_id=uuid4().hex, created=created)

    first = topic("orders", created=1.0)
    assert await store.put_topic(first)
    assert not await store.put_topic(topic("orders", created=2.0))
    assert await store.get_topic(first.topic_urn) == first
    for i, name in enumerate(("b", "c", "d")):
        await store.put_topic(topic(name, created=10.0 + i))
    await store.put_topic(topic("elsewhere", project="proj2"))
    page, count = await store.list_topics(PROJECT, 1, 2)
    assert [t.name for t in page] == ["b", "c"] and count == 4
    assert await store.delete_topic(first.topic_urn)
    assert not await store.delete_topic(first.topic_urn)
    assert await store.get_topic(first.topic_urn) is None
    assert (await store.list_topics("proj2", 0, 100))[1] == 1


async def test_sqlite_retention_drops_old_traces(tmp_path: Path) -> None:
    db = Database(tmp_path / "store.db")
    await db.open()
    try:
        sqlite = SQLiteStore(db)
        await sqlite.start()
        await sqlite.insert_trace(TraceEntry(cts_trace("old", 1), recorded=100.0))
        await sqlite.insert_trace(TraceEntry(cts_trace("new", 2), recorded=time.time()))
        await sqlite.purge_records(time.time() - 60)
        assert await trace_ids(sqlite, TraceQuery()) == ["new"]
    finally:
        await db.close()


async def test_audit_log_shows_only_what_components_audited(store: Store) -> None:
    await store.insert_trace(TraceEntry(cts_trace("refused", 1, code=400), detail=None))  # the API layer's alone
    await store.insert_trace(TraceEntry(cts_trace("done", 2), detail={}))
    await store.audit("deleteTrigger", "t1", {"type": "TIMER"})
    assert [e["action"] for e in await store.audit_log()] == ["deleteTrigger", "createTrigger"]
    assert [e["resource"] for e in await store.audit_log()] == ["t1", "t1"]
    assert await trace_ids(store, TraceQuery(trace_name="createTrigger")) == ["done", "refused"]
    [refused] = await store.list_traces(TraceQuery(trace_id="refused"))
    assert refused.detail is None


# -- DIS streams and LTS log groups/streams ----------------------------------------------------------


async def test_dis_streams_are_unique_per_project_paged_and_deleted(store: Store) -> None:
    def stream(name: str, project: str = PROJECT, created: float = 1.0) -> StoredDISStream:
        return StoredDISStream(
            project_id=project,
            stream_name=name,
            stream_id=uuid4().hex,
            partition_count=2,
            data_duration=24,
            created=created,
        )

    first = stream("clicks", created=1.0)
    assert await store.put_dis_stream(first)
    assert not await store.put_dis_stream(stream("clicks", created=2.0))  # the name is taken
    assert await store.put_dis_stream(stream("clicks", project="proj2"))  # in another project it is not
    assert await store.get_dis_stream(PROJECT, "clicks") == first
    assert await store.get_dis_stream("proj2", "missing") is None
    for i, name in enumerate(("b", "c", "d")):
        await store.put_dis_stream(stream(name, created=10.0 + i))
    page, count = await store.list_dis_streams(PROJECT, 1, 2)
    assert [s.stream_name for s in page] == ["b", "c"] and count == 4
    assert await store.delete_dis_stream(PROJECT, "clicks")
    assert not await store.delete_dis_stream(PROJECT, "clicks")
    assert await store.get_dis_stream(PROJECT, "clicks") is None
    assert (await store.get_dis_stream("proj2", "clicks")) is not None
    assert (await store.list_dis_streams(PROJECT, 0, 100))[1] == 3


async def test_log_groups_and_streams_unique_names_listing_and_cascading_delete(store: Store) -> None:
    def group(name: str, project: str = PROJECT, created: float = 1.0) -> StoredLogGroup:
        return StoredLogGroup(log_group_id=str(uuid4()), project_id=project, name=name, ttl_in_days=7, created=created)

    def stream(group_id: str, name: str, created: float = 1.0) -> StoredLogStream:
        return StoredLogStream(
            log_stream_id=str(uuid4()),
            log_group_id=group_id,
            project_id=PROJECT,
            name=name,
            ttl_in_days=7,
            created=created,
        )

    apps = group("apps", created=1.0)
    assert await store.put_log_group(apps)
    assert not await store.put_log_group(group("apps", created=2.0))
    assert await store.put_log_group(group("apps", project="proj2"))
    other = group("other", created=3.0)
    assert await store.put_log_group(other)
    assert await store.get_log_group(apps.log_group_id) == apps
    assert [g.name for g in await store.list_log_groups(PROJECT)] == ["apps", "other"]

    raw = stream(apps.log_group_id, "raw", created=5.0)
    assert await store.put_log_stream(raw)
    assert not await store.put_log_stream(stream(apps.log_group_id, "raw"))
    assert await store.put_log_stream(stream(other.log_group_id, "raw"))  # unique per group only
    filtered = stream(apps.log_group_id, "filtered", created=6.0)
    assert await store.put_log_stream(filtered)
    assert await store.get_log_stream(raw.log_stream_id) == raw
    assert [s.name for s in await store.list_log_streams(apps.log_group_id)] == ["raw", "filtered"]
    assert await store.delete_log_stream(filtered.log_stream_id)
    assert not await store.delete_log_stream(filtered.log_stream_id)
    assert [s.name for s in await store.list_log_streams(apps.log_group_id)] == ["raw"]

    assert await store.delete_log_group(apps.log_group_id)
    assert not await store.delete_log_group(apps.log_group_id)
    assert await store.get_log_group(apps.log_group_id) is None
    assert await store.get_log_stream(raw.log_stream_id) is None  # went with its group
    assert await store.list_log_streams(apps.log_group_id) == []
    assert len(await store.list_log_streams(other.log_group_id)) == 1
