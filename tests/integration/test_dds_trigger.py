"""DDS / GAUSSMONGO triggers against a real MongoDB-compatible server (SecantusDB) and a real service.

Covered: the exact DDS and GAUSSMONGO events for insert/update/replace/delete (full documents
looked up on update, BSON types in canonical Extended JSON), batch sizes, order, the resume token
moving only after a batch's terminal state (a blocked batch, a failing one), a SIGKILLed service
and a restarted database losing nothing, history lost under each ``on_history_lost`` policy (a
real ChangeStreamHistoryLost from a capped oplog, and an undecodable token), the checkpoint API,
precise 400s for bad configs, and passwords kept out of responses and logs.

The shared session server (``mongo_uri``) serves most tests, each on its own database. Tests that
need a special server (capped oplog, authentication, standalone, restarts) start their own
SecantusDB on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, ObjectId
from pymongo import AsyncMongoClient

from connectors.base import TriggerSpec
from connectors.dds import DDSConnector
from invoker.completion import Completion, CompletionHub
from schemas.records import AsyncStatus
from tests.integration.conftest import Harness, free_port, make_settings, running
from tests.support.connectors import node_context
from tests.support.recording import read_jsonl
from tests.support.servers import wait_for_port
from tests.support.service import ServiceProcess
from tests.support.waiting import bounded_waits
from triggerbus.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

WAIT = 45.0
wait_for, wait_until = bounded_waits(WAIT)

# Appends each event (one JSON line) to user_data "out". A batch holding a document with
# "block": true first touches user_data "started", then waits (at most 8 s) for the file
# user_data "gate"; one with "poison": true raises after being recorded.
RECORDER = """
import json, os, time

def _documents(event):
    docs = []
    for record in event.get("records", []):
        body = record.get("dds") or record.get("gauss_mongo") or {}
        doc = body.get("full_document")
        if isinstance(doc, str):
            doc = json.loads(doc)
        docs.append(doc or {})
    return docs

def handler(event, context):
    docs = _documents(event)
    if any(d.get("block") is True for d in docs):
        open(context.getUserData("started"), "a").close()
        deadline = time.time() + 8
        while not os.path.exists(context.getUserData("gate")) and time.time() < deadline:
            time.sleep(0.05)
    fd = os.open(context.getUserData("out"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps(event) + "\\n").encode())
    os.close(fd)
    if any(d.get("poison") is True for d in docs):
        raise ValueError("poison document")
    return "ok"
"""


# -- helpers ---------------------------------------------------------------------------------------------


def unique(name: str) -> str:
    return f"{name}_{uuid.uuid4().hex[:8]}"


def documents_in(path: Path) -> list[dict[str, Any] | None]:
    """The full documents of every delivered record, in delivery order (GAUSSMONGO strings decoded)."""
    docs: list[dict[str, Any] | None] = []
    for event in read_jsonl(path):
        for record in event["records"]:
            body = record.get("dds") or record.get("gauss_mongo")
            doc = body["full_document"]
            docs.append(json.loads(doc) if isinstance(doc, str) else doc)
    return docs


def seq_values(path: Path) -> list[int]:
    """The ``i`` of every delivered insert document, in delivery order."""
    out = []
    for doc in documents_in(path):
        if doc and "i" in doc:
            value = doc["i"]
            out.append(int(value["$numberInt"]) if isinstance(value, dict) else int(value))
    return out


async def recorder(h: Harness, tmp_path: Path, name: str, **extra: Any) -> tuple[str, Path]:
    """RECORDER as function ``name`` (files ``tmp_path/<name>.gate``, ``.started``): its URN and output file."""
    return await h.create_recorder(name, RECORDER, tmp_path, "gate", "started", **extra)


async def wait_token(h: Harness, urn: str, code: str, trigger_id: str, token: Any) -> dict[str, Any]:
    async def moved() -> dict[str, Any] | None:
        checkpoint = await h.get_checkpoint(urn, code, trigger_id)
        return checkpoint if checkpoint["resume_token"] == token else None

    result: dict[str, Any] = await wait_for(moved, f"the checkpoint to reach {token}")
    return result


def dds_data(uri: str, db: str, coll: str, **extra: Any) -> dict[str, Any]:
    return {"instance_id": "dds-test", "connection_uri": uri, "db_name": db, "collection_name": coll, **extra}


@contextlib.asynccontextmanager
async def mongo(uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=20000)
    try:
        yield client
    finally:
        await client.close()


class Secantus:
    """A SecantusDB of this test's own, on a fixed port and storage path (so it can restart)."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.storage = workdir / f"secantus-{self.port}"
        self.log = workdir / f"secantus-{self.port}.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        suffix = "" if "--standalone" in self.extra else "/?replicaSet=secantus"
        return f"mongodb://127.0.0.1:{self.port}{suffix}"

    def start(self, *extra: str) -> None:
        exe = str(Path(sys.executable).parent / "secantusd-py")
        args = [exe, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", str(self.storage)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*args, *self.extra, *extra], stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port, 60, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def own_secantus(tmp_path: Path) -> Iterator[Callable[..., Secantus]]:
    servers: list[Secantus] = []

    def make(*extra: str) -> Secantus:
        server = Secantus(tmp_path, *extra)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


# -- events ------------------------------------------------------------------------------------------------


RICH = {
    "_id": ObjectId("5d8c2f8e5beccb6cf5370d6a"),
    "name": "dds",
    "age": 52.0,
    "count": 7,
    "big": Int64(9007199254740993),
    "price": Decimal128("19.99"),
    "when": dt.datetime(2024, 2, 29, 12, 30, 15, 123000, tzinfo=dt.UTC),
    "blob": Binary(b"\x00\x01\xfe", 0),
    "tags": ["a", 1, None, True],
    "nested": {"ok": False, "pi": 3.5},
}
RICH_EJSON = {
    "_id": {"$oid": "5d8c2f8e5beccb6cf5370d6a"},
    "name": "dds",
    "age": {"$numberDouble": "52.0"},
    "count": {"$numberInt": "7"},
    "big": {"$numberLong": "9007199254740993"},
    "price": {"$numberDecimal": "19.99"},
    "when": {"$date": {"$numberLong": "1709209815123"}},
    "blob": {"$binary": {"base64": "AAH+", "subType": "00"}},
    "tags": ["a", {"$numberInt": "1"}, None, True],
    "nested": {"ok": False, "pi": {"$numberDouble": "3.5"}},
}


async def test_changes_become_exact_dds_events(tmp_path: Path, mongo_uri: str) -> None:
    db, coll = unique("dds"), "person"
    async with running(make_settings(tmp_path / "data")) as h, mongo(mongo_uri) as client:
        urn, out = await recorder(h, tmp_path, "dds")
        status, trigger = await h.create_trigger(
            urn, "DDS", dds_data(mongo_uri, db, coll, batch_size=10, batch_window_ms=300)
        )
        assert status == 201, trigger
        assert trigger["trigger_status"] == "DISABLED"  # DDS triggers start disabled
        data = trigger["event_data"]
        assert data["mode"] == "ReplicaSet"
        assert data["on_history_lost"] == "fail"
        assert data["batch_window_ms"] == 300
        trigger_id = trigger["trigger_id"]
        await h.set_trigger_status(urn, "DDS", trigger_id, "ACTIVE")
        start = await h.get_checkpoint(urn, "DDS", trigger_id)
        assert start["kind"] == "start" and start["resume_token"]["_data"]  # pinned by the enable

        c = client[db][coll]
        await c.insert_one(dict(RICH))
        await c.insert_one({"_id": "b", "v": 1})
        await c.update_one({"_id": "b"}, {"$set": {"v": 2}})
        await c.insert_one({"_id": "c", "x": 1})
        await c.replace_one({"_id": "c"}, {"y": "z"})
        await c.insert_one({"_id": "d"})
        await c.delete_one({"_id": "d"})

        async def all_seven() -> list[dict[str, Any]]:
            events = read_jsonl(out)
            return events if sum(len(e["records"]) for e in events) >= 7 else []

        events = await wait_for(all_seven, "seven change records")
        got = [r for e in events for r in e["records"]]
        expected = [
            ("insert", RICH_EJSON),
            ("insert", {"_id": "b", "v": {"$numberInt": "1"}}),
            ("update", {"_id": "b", "v": {"$numberInt": "2"}}),  # looked up after the update
            ("insert", {"_id": "c", "x": {"$numberInt": "1"}}),
            ("replace", {"_id": "c", "y": "z"}),
            ("insert", {"_id": "d"}),
            ("delete", None),
        ]
        assert len(got) == len(expected)
        for record, (name, document) in zip(got, expected, strict=True):
            body = record["dds"]
            assert set(record) == {"event_source", "event_name", "region", "event_version", "dds", "event_source_id"}
            assert record["event_source"] == "dds"
            assert record["event_name"] == name
            assert record["region"] == h.server.settings.region
            assert record["event_version"] == "1.0"
            assert record["event_source_id"] == trigger_id
            assert set(body) == {"size_bytes", "token", "full_document", "ns"}
            assert body["full_document"] == document
            assert body["ns"] == {"db": db, "coll": coll}
            assert set(body["token"]) == {"_data"} and isinstance(body["token"]["_data"], str)
            assert body["size_bytes"].isdigit() and int(body["size_bytes"]) > 0
        assert len({r["dds"]["token"]["_data"] for r in got}) == 7
        assert all(1 <= len(e["records"]) <= 10 for e in events)

        # each batch is an async record with its source coordinates; the token then moves on
        async def all_success() -> list[dict[str, Any]] | None:
            found = await h.invocations(urn, trigger_id=trigger_id)
            return found if len(found) == len(events) and all(r["status"] == "SUCCESS" for r in found) else None

        found = await wait_for(all_success, "SUCCESS records")
        assert sum(r["source"]["count"] for r in found) == 7
        assert {r["source"]["ns"] for r in found} == {f"{db}.{coll}"}
        assert {r["trigger_type"] for r in found} == {"DDS"}
        last_token = got[-1]["dds"]["token"]
        checkpoint = await wait_token(h, urn, "DDS", trigger_id, last_token)
        assert checkpoint["kind"] == "change"
        assert checkpoint["history_lost"] is None
        state = await h.trigger_state(urn, "DDS", trigger_id)
        assert state["consumer_state"] == "running"
        assert state["changes_delivered"] == 7
        assert state["finished"] == {"SUCCESS": len(events)}
        assert isinstance(state["resume_token_age_s"], float) and state["resume_token_age_s"] >= 0
        assert state["last_error"] is None


async def test_gaussmongo_events_batches_and_order(tmp_path: Path, mongo_uri: str) -> None:
    db, coll = unique("gauss"), "orders"
    async with running(make_settings(tmp_path / "data")) as h, mongo(mongo_uri) as client:
        urn, out = await recorder(h, tmp_path, "gm")
        status, trigger = await h.create_trigger(
            urn, "GAUSSMONGO", dds_data(mongo_uri, db, coll, batch_size=4, batch_window_ms=500)
        )
        assert status == 201, trigger
        assert trigger["trigger_status"] == "ACTIVE"  # GAUSSMONGO triggers start active
        trigger_id = trigger["trigger_id"]
        c = client[db][coll]
        await c.insert_many([{"i": i, "half": i / 2} for i in range(22)])
        await c.update_many({"i": {"$lt": 3}}, {"$set": {"done": True}})

        async def arrived() -> bool:
            return sum(len(e["records"]) for e in read_jsonl(out)) >= 25

        await wait_for(arrived, "25 change records")
        events = read_jsonl(out)
        assert all(1 <= len(e["records"]) <= 4 for e in events)
        assert any(len(e["records"]) == 4 for e in events)  # batches do fill up
        names = []
        for event in events:
            assert set(event) == {"records", "vernier"}
            assert event["vernier"] == event["records"][-1]["gauss_mongo"]["token"]
            for record in event["records"]:
                assert set(record) == {
                    "event_name",
                    "event_version",
                    "event_source",
                    "region",
                    "gauss_mongo",
                    "event_source_id",
                }
                assert record["event_source"] == "gauss_mongo"
                assert record["event_source_id"] == trigger_id
                body = record["gauss_mongo"]
                assert all(isinstance(body[k], str) for k in ("full_document", "ns", "size_bytes", "token"))
                assert json.loads(body["ns"]) == {"db": db, "coll": coll}
                assert set(json.loads(body["token"])) == {"_data"}
                names.append(record["event_name"])
        assert names == ['"insert"'] * 22 + ['"update"'] * 3
        assert seq_values(out)[:22] == list(range(22))  # change order is kept
        docs = documents_in(out)
        assert docs[5] is not None and docs[5]["half"] == {"$numberDouble": "2.5"}
        assert all(d is not None and d["done"] is True for d in docs[22:])
        await wait_token(h, urn, "GAUSSMONGO", trigger_id, json.loads(events[-1]["vernier"]))


# -- delivery guarantees -----------------------------------------------------------------------------------


async def test_resume_token_moves_only_after_terminal_state(tmp_path: Path, mongo_uri: str) -> None:
    db, coll = unique("gate"), "jobs"
    async with running(make_settings(tmp_path / "data")) as h, mongo(mongo_uri) as client:
        urn, out = await recorder(h, tmp_path, "gated")
        config = {"max_async_retry_attempts": 1}
        await h.set_async_config(urn, config)
        data = dds_data(mongo_uri, db, coll, batch_size=1, batch_window_ms=0)
        trigger_id = await h.add_active_trigger(urn, "DDS", data)
        c = client[db][coll]

        def tokens() -> list[Any]:
            return [r["dds"]["token"] for e in read_jsonl(out) for r in e["records"]]

        await c.insert_one({"_id": "a"})
        await wait_until(lambda: tokens(), "the first change")
        await wait_token(h, urn, "DDS", trigger_id, tokens()[0])
        token_a = tokens()[0]

        # a running batch holds the token back, however long it takes
        await c.insert_one({"_id": "b", "block": True})
        started = tmp_path / "gated.started"
        await wait_until(lambda: started.exists(), "the blocked batch to start")
        for _ in range(5):
            assert (await h.get_checkpoint(urn, "DDS", trigger_id))["resume_token"] == token_a
            await asyncio.sleep(0.2)
        state = await h.trigger_state(urn, "DDS", trigger_id)
        assert state["in_flight"] is not None and state["in_flight"]["changes"] == 1
        (tmp_path / "gated.gate").touch()
        await wait_until(lambda: len(tokens()) >= 2, "the blocked batch to finish")
        await wait_token(h, urn, "DDS", trigger_id, tokens()[1])

        # a failing batch: retried, then FAIL, and only then does the token move past it
        await c.insert_one({"_id": "c", "poison": True})

        async def failed() -> list[dict[str, Any]]:
            return await h.invocations(urn, trigger_id=trigger_id, status="FAIL")

        fail = (await wait_for(failed, "the FAIL record"))[0]
        assert fail["source"]["count"] == 1
        poison_tokens = [r["dds"]["token"] for e in read_jsonl(out) for r in e["records"] if "poison" in str(r)]
        assert len(poison_tokens) == 2 and poison_tokens[0] == poison_tokens[1]  # first attempt + 1 retry
        await wait_token(h, urn, "DDS", trigger_id, poison_tokens[0])
        assert fail["source"]["last_resume_token"] == poison_tokens[0]["_data"]

        await c.insert_one({"_id": "d"})
        await wait_until(
            lambda: any(doc and doc.get("_id") == "d" for doc in documents_in(out)),
            "the change after the failed one",
        )
        state = await h.trigger_state(urn, "DDS", trigger_id)
        assert state["finished"].get("FAIL") == 1
        assert state["finished"].get("SUCCESS", 0) >= 3


async def test_sigkilled_service_resumes_and_skips_nothing(tmp_path: Path, mongo_uri: str) -> None:
    db, coll = unique("crash"), "events"
    batch_size, total = 5, 300
    with ServiceProcess(tmp_path / "data", tmp_path / "service.log", TRIGGERBUS_RETRY_BASE_S="0.1") as service:
        await service.wait_healthy()
        async with service.harness() as h:
            urn, out = await recorder(h, tmp_path, "crash")
            data = dds_data(mongo_uri, db, coll, batch_size=batch_size, batch_window_ms=20)
            await h.add_trigger(urn, "DDS", data, trigger_status="ACTIVE")

        async with mongo(mongo_uri) as client:
            c = client[db][coll]
            written = 0

            async def write() -> None:
                nonlocal written
                for i in range(total):
                    await c.insert_one({"i": i})
                    written = i + 1
                    await asyncio.sleep(0.005)

            writer = asyncio.create_task(write())
            await wait_until(lambda: len(seq_values(out)) >= 40, "some deliveries")
            service.kill()
            delivered_before, written_before = len(set(seq_values(out))), written
            assert not writer.done(), "the kill came too late: everything was written already"
            await writer  # the rest is written while the service is down
            await service.start_healthy()

            async def everything() -> bool:
                return set(seq_values(out)) >= set(range(total))

            try:
                await wait_for(everything, f"all {total} changes", timeout=90)
            except AssertionError:
                print(service.log_tail())
                raise
        values = seq_values(out)
        assert set(values) == set(range(total))  # none skipped
        first_seen = list(dict.fromkeys(values))
        assert first_seen == sorted(first_seen)  # delivered in change order
        duplicates = len(values) - total
        # only the batch in flight at the kill may run again (its invocation and its re-read)
        assert duplicates <= 2 * batch_size, f"{duplicates} duplicate deliveries"
        print(
            json.dumps(
                {
                    "written_before_kill": written_before,
                    "delivered_before_kill": delivered_before,
                    "duplicates": duplicates,
                }
            )
        )


async def test_database_restart_mid_stream(tmp_path: Path, own_secantus: Callable[..., Secantus]) -> None:
    server = own_secantus("--noop-heartbeat-seconds", "1")
    db, coll = unique("restart"), "items"
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path, "restart")
        data = dds_data(server.uri, db, coll, batch_size=3, batch_window_ms=50)
        trigger_id = await h.add_active_trigger(urn, "DDS", data)
        async with mongo(server.uri) as client:
            c = client[db][coll]
            for i in range(20):
                await c.insert_one({"i": i})
            await wait_until(lambda: len(seq_values(out)) >= 20, "the first 20 changes")
        server.stop()  # SIGTERM, then the same storage again
        await asyncio.sleep(1.0)
        server.start()
        async with mongo(server.uri) as client:
            c = client[db][coll]
            for i in range(20, 40):
                await c.insert_one({"i": i})
            try:
                await wait_until(lambda: len(set(seq_values(out))) >= 40, "all 40 changes", timeout=60)
            except AssertionError:
                print(await h.trigger_state(urn, "DDS", trigger_id))
                raise
        assert seq_values(out) == list(range(40))  # each change once, in order
        state = await h.trigger_state(urn, "DDS", trigger_id)
        assert state["consumer_state"] == "running"


# -- history lost ------------------------------------------------------------------------------------------


async def lose_history(
    h: Harness, urn: str, code: str, trigger_id: str, c: Any, client: AsyncMongoClient[dict[str, Any]]
) -> None:
    """Disable the trigger, write more than the capped oplog keeps, prune it, enable again."""
    await h.set_trigger_status(urn, code, trigger_id, "DISABLED")
    await c.insert_many([{"i": i} for i in range(100, 140)])
    pruned = await client.admin.command("secantusAdmin.pruneOplog")
    assert pruned["ok"] == 1.0
    await h.set_trigger_status(urn, code, trigger_id, "ACTIVE")


async def gap_records(h: Harness, urn: str, trigger_id: str) -> list[dict[str, Any]]:
    return [r for r in await h.invocations(urn, trigger_id=trigger_id) if r.get("error_code") == 4410]


async def start_with_one_change(
    h: Harness, tmp_path: Path, server: Secantus, policy: str | None
) -> tuple[str, Path, str, str, str]:
    db, coll = unique("lost"), "c"
    urn, out = await recorder(h, tmp_path, unique("fn"))
    data = dds_data(server.uri, db, coll, batch_size=50, batch_window_ms=50)
    if policy is not None:
        data["on_history_lost"] = policy
    trigger_id = await h.add_active_trigger(urn, "DDS", data)
    async with mongo(server.uri) as client:
        await client[db][coll].insert_one({"i": 0})
    await wait_until(lambda: seq_values(out) == [0], "the first change")
    return urn, out, trigger_id, db, coll


async def test_history_lost_with_policy_fail_stops_and_reports_once(
    tmp_path: Path, own_secantus: Callable[..., Secantus]
) -> None:
    server = own_secantus("--oplog-max-entries", "20")
    async with running(make_settings(tmp_path / "data")) as h, mongo(server.uri) as client:
        urn, out, trigger_id, db, coll = await start_with_one_change(h, tmp_path, server, None)
        await wait_for(
            lambda: _checkpoint_kind(h, urn, trigger_id, "change"), "the first change's token to be persisted"
        )
        await lose_history(h, urn, "DDS", trigger_id, client[db][coll], client)

        async def halted() -> dict[str, Any] | None:
            state = await h.trigger_state(urn, "DDS", trigger_id)
            return state if state.get("consumer_state") == "history_lost" else None

        state = await wait_for(halted, "the trigger to stop on lost history")
        assert "286 ChangeStreamHistoryLost" in state["last_error"]
        gaps = await gap_records(h, urn, trigger_id)
        assert len(gaps) == 1
        gap = gaps[0]
        assert gap["status"] == "FAIL"
        assert "286 ChangeStreamHistoryLost" in gap["error_message"]
        assert "Policy 'fail': the trigger stopped reading" in gap["error_message"]
        assert gap["source"]["policy"] == "fail" and gap["source"]["mongo_error_code"] == 286
        assert state["history_lost"]["request_id"] == gap["request_id"]
        audit = await h.service.store.audit_log(200)
        assert any(e["action"] == "mongoChangeStreamHistoryLost" and e["resource"] == trigger_id for e in audit)
        assert seq_values(out) == [0]  # nothing after the gap was delivered

        # no retry loop: it stays stopped; enabling again tries once more and reports nothing new
        await asyncio.sleep(1.0)
        assert (await h.trigger_state(urn, "DDS", trigger_id))["consumer_state"] == "history_lost"
        await h.set_trigger_status(urn, "DDS", trigger_id, "DISABLED")
        await h.set_trigger_status(urn, "DDS", trigger_id, "ACTIVE")
        await wait_for(halted, "the trigger to stop again")
        assert len(await gap_records(h, urn, trigger_id)) == 1
        checkpoint = await h.get_checkpoint(urn, "DDS", trigger_id)
        assert checkpoint["history_lost"]["request_id"] == gap["request_id"]

        # the way out: move the checkpoint while disabled
        status, error = await h.put_checkpoint(urn, "DDS", trigger_id, {"position": "latest"})
        assert status == 409, error  # still enabled
        await h.set_trigger_status(urn, "DDS", trigger_id, "DISABLED")
        status, moved = await h.put_checkpoint(urn, "DDS", trigger_id, {"position": "latest"})
        assert status == 200, moved
        assert moved["kind"] == "set" and moved["history_lost"] is None
        await h.set_trigger_status(urn, "DDS", trigger_id, "ACTIVE")
        await client[db][coll].insert_one({"i": 500})
        await wait_until(lambda: seq_values(out) == [0, 500], "the change after recovery")


async def _checkpoint_kind(h: Harness, urn: str, trigger_id: str, kind: str) -> bool:
    return (await h.get_checkpoint(urn, "DDS", trigger_id)).get("kind") == kind


async def test_history_lost_with_policy_resume_from_time_delivers_what_is_left(
    tmp_path: Path, own_secantus: Callable[..., Secantus]
) -> None:
    server = own_secantus("--oplog-max-entries", "20")
    async with running(make_settings(tmp_path / "data")) as h, mongo(server.uri) as client:
        urn, out, trigger_id, db, coll = await start_with_one_change(h, tmp_path, server, "resume_from_time")
        await wait_for(lambda: _checkpoint_kind(h, urn, trigger_id, "change"), "the first token")
        await lose_history(h, urn, "DDS", trigger_id, client[db][coll], client)

        async def gap() -> list[dict[str, Any]]:
            return await gap_records(h, urn, trigger_id)

        record = (await wait_for(gap, "the gap record"))[0]
        assert record["status"] == "DISCARD"
        assert "Policy 'resume_from_time': reading again from" in record["error_message"]
        # SecantusDB starts at the oldest entry it still has: the last changes arrive, the first are gone
        await wait_until(lambda: 139 in seq_values(out), "the newest change")
        after = seq_values(out)[1:]
        assert after == sorted(after) and set(after) <= set(range(100, 140))
        assert 100 not in after  # pruned: really lost, and reported
        state = await h.trigger_state(urn, "DDS", trigger_id)
        assert state["consumer_state"] == "running"
        assert state["history_lost"]["request_id"] == record["request_id"]
        assert state["history_lost"]["resumed_from"]["kind"] == "time"


async def test_history_lost_with_policy_resume_latest_skips_to_now(
    tmp_path: Path, own_secantus: Callable[..., Secantus]
) -> None:
    server = own_secantus("--oplog-max-entries", "20")
    async with running(make_settings(tmp_path / "data")) as h, mongo(server.uri) as client:
        urn, out, trigger_id, db, coll = await start_with_one_change(h, tmp_path, server, "resume_latest")
        await wait_for(lambda: _checkpoint_kind(h, urn, trigger_id, "change"), "the first token")
        await lose_history(h, urn, "DDS", trigger_id, client[db][coll], client)
        record = (await wait_for(lambda: gap_records(h, urn, trigger_id), "the gap record"))[0]
        assert record["status"] == "DISCARD"
        assert "reading again from the current end of the stream" in record["error_message"]
        await wait_for(lambda: _checkpoint_kind(h, urn, trigger_id, "start"), "the new starting token")
        await client[db][coll].insert_one({"i": 900})
        await wait_until(lambda: 900 in seq_values(out), "the change after the gap")
        assert seq_values(out) == [0, 900]


async def test_unreadable_resume_token_is_a_gap_and_refused_by_the_checkpoint_api(
    tmp_path: Path, mongo_uri: str
) -> None:
    db, coll = unique("badtoken"), "c"
    # a well-formed mongod token (the FunctionGraph template's) that this server cannot resume from
    foreign = {
        "_data": "825D8C2F4D0000001529295A100474039A3412A64BA89041DC952357FB44466"
        + "45F696400645D8C2F8E5BECCB6CF5370D6A0004"
    }
    async with running(make_settings(tmp_path / "data")) as h, mongo(mongo_uri) as client:
        urn, out = await recorder(h, tmp_path, "bad")
        status, trigger = await h.create_trigger(urn, "DDS", dds_data(mongo_uri, db, coll))
        assert status == 201, trigger
        trigger_id = trigger["trigger_id"]

        status, error = await h.put_checkpoint(urn, "DDS", trigger_id, {"resume_token": foreign})
        assert status == 400, error
        assert "cannot resume" in error["error_msg"] and "FailedToParse" in error["error_msg"]
        other_stream = await client[db]["other"].watch()
        await client[db]["other"].insert_one({"x": 1})
        other = (await other_stream.next())["_id"]
        await other_stream.close()
        status, error = await h.put_checkpoint(urn, "DDS", trigger_id, {"resume_token": other})
        assert status == 400, error  # a token of another collection
        for bad in ({"operation_time": -1}, {"position": "earliest"}, {}, {"position": "latest", "resume_token": {}}):
            status, error = await h.put_checkpoint(urn, "DDS", trigger_id, bad)
            assert status == 400, (bad, error)

        # a token restored from another server: found at enable time, reported, policy fail
        await h.service.store.put_checkpoint(
            trigger_id,
            "change_stream",
            {"resume_token": foreign, "cluster_time": None, "kind": "change", "mode": "resume_after", "updated": 0},
        )
        await h.set_trigger_status(urn, "DDS", trigger_id, "ACTIVE")
        gap = (await wait_for(lambda: gap_records(h, urn, trigger_id), "the gap record"))[0]
        assert gap["status"] == "FAIL"
        assert "9 FailedToParse" in gap["error_message"]
        assert "2019-09-26T03:23:57" in gap["error_message"]  # the cluster time read from the token
        state = await h.trigger_state(urn, "DDS", trigger_id)
        assert state["consumer_state"] == "history_lost"

        # moving to a cluster time works (and is checked against the server)
        await h.set_trigger_status(urn, "DDS", trigger_id, "DISABLED")
        await client[db][coll].insert_one({"i": 1})
        status, moved = await h.put_checkpoint(urn, "DDS", trigger_id, {"operation_time": int(time.time()) - 60})
        assert status == 200, moved
        assert moved["kind"] == "time" and moved["resume_token"] is None
        await h.set_trigger_status(urn, "DDS", trigger_id, "ACTIVE")
        await wait_until(lambda: 1 in seq_values(out), "the change after the set time")


# -- configuration -----------------------------------------------------------------------------------------


async def test_bad_configs_get_precise_400s(
    tmp_path: Path, mongo_uri: str, own_secantus: Callable[..., Secantus]
) -> None:
    settings = make_settings(tmp_path / "data", mongo_instances={"dds-inst-1": mongo_uri})
    standalone = own_secantus("--standalone")
    async with running(settings) as h:
        urn, _ = await recorder(h, tmp_path, "cfg")

        async def refused(event_data: dict[str, Any], code: str = "DDS") -> str:
            status, body = await h.create_trigger(urn, code, event_data)
            assert status == 400, body
            assert body["error_code"] == "FSS.0400"
            return str(body["error_msg"])

        base = dds_data(mongo_uri, "shop", "orders")
        for db in ("admin", "local", "config"):
            assert "is reserved" in await refused({**base, "db_name": db})
        assert "batch_size" in await refused({**base, "batch_size": 10001})
        assert "batch_size" in await refused({**base, "batch_size": 0}, "GAUSSMONGO")
        assert "on_history_lost" in await refused({**base, "on_history_lost": "ignore"})
        assert "batch_window_ms" in await refused({**base, "batch_window_ms": -1})

        # the instance map: a known instance needs no URI, an unknown one is named
        status, ok = await h.create_trigger(
            urn, "DDS", {"instance_id": "dds-inst-1", "db_name": "shop", "collection_name": "orders"}
        )
        assert status == 201, ok
        message = await refused({"instance_id": "nope", "db_name": "shop", "collection_name": "orders"})
        assert message.startswith("event_data.instance_id: unknown MongoDB instance 'nope'") and "dds-inst-1" in message

        port = free_port()
        message = await refused({**base, "connection_uri": f"mongodb://127.0.0.1:{port}/?replicaSet=rs0"})
        assert message.startswith(f"event_data.connection_uri: cannot reach MongoDB at 127.0.0.1:{port}")

        message = await refused({**base, "connection_uri": standalone.uri})
        assert "is a standalone server; change streams need a replica set" in message

        message = await refused({**base, "connection_uri": "mongodb://a:one@127.0.0.1:1/", "db_password": "two"})
        assert "differs from db_password" in message


async def test_auth_failures_and_passwords_never_shown(
    tmp_path: Path, own_secantus: Callable[..., Secantus], caplog: pytest.LogCaptureFixture
) -> None:
    server = own_secantus()
    password = "S3cret-pass-" + uuid.uuid4().hex[:6]
    async with mongo(server.uri) as client:
        await client.admin.command("createUser", "app", pwd=password, roles=["root"])
    server.stop()
    server.start("--auth")
    caplog.set_level(logging.DEBUG)
    db, coll = unique("auth"), "c"
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path, "auth")
        wrong = "Wrong-pass-" + uuid.uuid4().hex[:6]
        status, body = await h.create_trigger(
            urn, "DDS", dds_data(server.uri, db, coll, db_user="app", db_password=wrong)
        )
        assert status == 400, body
        assert body["error_msg"].startswith(
            f"event_data.db_user: MongoDB at 127.0.0.1:{server.port} refused the login of user 'app'"
        )
        status, body = await h.create_trigger(urn, "DDS", dds_data(server.uri, db, coll))
        assert status == 400, body  # no credentials at all
        assert "refused the login" in body["error_msg"] or "may not watch" in body["error_msg"]

        # the password inside the URI moves to db_password: stored encrypted, never returned
        uri = f"mongodb://app:{password}@127.0.0.1:{server.port}/?replicaSet=secantus&authSource=admin"
        status, trigger = await h.create_trigger(urn, "DDS", dds_data(uri, db, coll, batch_window_ms=0))
        assert status == 201, trigger
        data = trigger["event_data"]
        assert data["connection_uri"] == f"mongodb://127.0.0.1:{server.port}/?replicaSet=secantus&authSource=admin"
        assert data["db_user"] == "app" and data["db_password"] == "******"
        trigger_id = trigger["trigger_id"]
        await h.set_trigger_status(urn, "DDS", trigger_id, "ACTIVE")
        async with mongo(uri) as client:
            await client[db][coll].insert_one({"i": 7})
        await wait_until(lambda: seq_values(out) == [7], "a change through the authenticated stream")
        fetched = await h.get_trigger(urn, "DDS", trigger_id)
        checkpoint = await h.get_checkpoint(urn, "DDS", trigger_id)
        async with h.http.get(h.fgs(f"/triggers/{urn}")) as resp:
            listing = await resp.text()
        stored = await h.service.store.get_trigger(trigger_id)
    for text in (json.dumps(fetched), json.dumps(checkpoint), listing, json.dumps(stored.event_data)):
        assert password not in text and wrong not in text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert password not in logged and wrong not in logged


async def test_drop_is_delivered_and_a_recreated_collection_is_followed(tmp_path: Path, mongo_uri: str) -> None:
    db, coll = unique("drop"), "c"
    async with running(make_settings(tmp_path / "data")) as h, mongo(mongo_uri) as client:
        urn, out = await recorder(h, tmp_path, "drop")
        trigger_id = await h.add_active_trigger(urn, "DDS", dds_data(mongo_uri, db, coll, batch_window_ms=50))
        c = client[db][coll]
        await c.insert_one({"i": 1})
        await c.drop()
        await wait_until(lambda: _names(out)[-1:] == ["drop"], "the drop event")
        checkpoint = await wait_for(lambda: _checkpoint_mode(h, urn, trigger_id, "start_after"), "an invalidate token")
        assert checkpoint["kind"] == "change"
        await c.insert_one({"i": 2})
        await wait_until(lambda: seq_values(out) == [1, 2], "a change in the recreated collection")
        assert _names(out) == ["insert", "drop", "insert"]  # the invalidate itself is not an event


def _names(path: Path) -> list[str]:
    return [r["event_name"] for e in read_jsonl(path) for r in e["records"]]


async def _checkpoint_mode(h: Harness, urn: str, trigger_id: str, mode: str) -> dict[str, Any] | None:
    checkpoint = await h.get_checkpoint(urn, "DDS", trigger_id)
    return checkpoint if checkpoint.get("mode") == mode else None


async def test_a_change_over_6_mb_is_discarded_with_a_record(tmp_path: Path, mongo_uri: str) -> None:
    db, coll = unique("big"), "c"
    async with running(make_settings(tmp_path / "data")) as h, mongo(mongo_uri) as client:
        urn, out = await recorder(h, tmp_path, "big")
        trigger_id = await h.add_active_trigger(urn, "DDS", dds_data(mongo_uri, db, coll, batch_window_ms=200))
        c = client[db][coll]
        await c.insert_one({"i": 1})
        await c.insert_one({"i": 2, "blob": "x" * (7 * 1024 * 1024)})
        await c.insert_one({"i": 3})
        await wait_until(lambda: seq_values(out) == [1, 3], "the changes around the big one")

        async def dropped() -> list[dict[str, Any]]:
            return [r for r in await h.invocations(urn, trigger_id=trigger_id) if r.get("error_code") == 4413]

        record = (await wait_for(dropped, "the DISCARD record of the big change"))[0]
        assert record["status"] == "DISCARD"
        assert "over the 6291456-byte event limit" in record["error_message"]
        assert record["source"]["ns"] == f"{db}.{coll}"
        last = [r["dds"]["token"] for e in read_jsonl(out) for r in e["records"]][-1]
        await wait_token(h, urn, "DDS", trigger_id, last)
        assert (await h.trigger_state(urn, "DDS", trigger_id))["dropped"] == 1


# -- several processes -------------------------------------------------------------------------------------


class CompletingInvocations:
    """Stands in for the invoker at connector level: records each event, completes it at once."""

    def __init__(self, completion: CompletionHub) -> None:
        self.completion = completion
        self.events: list[dict[str, Any]] = []

    async def enqueue(self, function_urn: str, payload: str, **kw: Any) -> str:
        self.events.append(json.loads(payload))
        request_id = str(kw["request_id"])
        await self.completion.done(Completion(request_id, str(kw["trigger_id"]), (), AsyncStatus.SUCCESS))
        return request_id

    def values(self) -> list[int]:
        return [int(r["dds"]["full_document"]["i"]["$numberInt"]) for e in self.events for r in e["records"]]


def connector_process(store: SQLiteStore, name: str) -> tuple[DDSConnector, CompletingInvocations]:
    completion = CompletionHub()
    invocations = CompletingInvocations(completion)
    ctx = node_context(
        store, name, completion, invocations=invocations, ingest=None, shared_store=True, mongo_lease_ttl_s=1.5
    )
    return DDSConnector(ctx), invocations


async def test_two_processes_of_one_trigger_read_it_once_and_hand_it_over(mongo_uri: str, store: SQLiteStore) -> None:
    """Connector level: two "processes" run the same trigger; the lease lets one read; it stops."""
    db, coll = unique("lease"), "c"
    spec = TriggerSpec(
        trigger_id=str(uuid.uuid4()),
        function_urn="urn:fss:local:proj1:function:default:lease:latest",
        trigger_type="DDS",
        event_data=dds_data(mongo_uri, db, coll, batch_size=5, batch_window_ms=20),
        created=time.time(),
    )
    a, seen_a = connector_process(store, "process-a")
    b, seen_b = connector_process(store, "process-b")
    try:
        await a.activate(spec)
        await b.activate(spec)
        await wait_until(lambda: a.status(spec.trigger_id).get("holds_lease"), "A holding the lease")
        await wait_until(lambda: b.status(spec.trigger_id).get("consumer_state") == "standby", "B on standby")
        assert b.status(spec.trigger_id)["holds_lease"] is False
        async with mongo(mongo_uri) as client:
            await client[db][coll].insert_many([{"i": i} for i in range(10)])
            await wait_until(lambda: seen_a.values() == list(range(10)), "round 1 through A")
            await a.deactivate(spec.trigger_id)
            await wait_until(lambda: b.status(spec.trigger_id).get("consumer_state") == "running", "B taking over")
            await client[db][coll].insert_many([{"i": i} for i in range(10, 20)])
            await wait_until(lambda: seen_b.values() == list(range(10, 20)), "round 2 through B")
        assert seen_a.values() == list(range(10))  # a clean handover: nothing twice
    finally:
        await a.close()
        await b.close()
