"""CTS: management operations as traces (API and CLI), CTS triggers, trace ingest, replay after a crash."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from bus.sqlitedb import Database
from connectors.cts import delivery_request_id
from tests.integration.conftest import PROJECT, Harness, make_settings, running
from tests.integration.test_cli import cli
from triggerbus.store.sqlite import SQLiteStore
from triggerbus.store.traces import TraceEntry, TraceQuery

pytestmark = pytest.mark.integration

SINK = "def handler(event, context):\n    return event\n"
TRACES = f"/v3/{PROJECT}/traces"
SECRET = "Sup3r-S3cret-Passw0rd"


async def list_traces(h: Harness, **params: Any) -> dict[str, Any]:
    async with h.http.get(TRACES, params={"limit": "200", **{k: str(v) for k, v in params.items()}}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    return dict(body)


async def traces_named(h: Harness, name: str, **params: Any) -> list[dict[str, Any]]:
    return list((await list_traces(h, trace_name=name, **params))["traces"])


async def cts_trigger(h: Harness, function_urn: str, operations: list[str]) -> dict[str, Any]:
    body = {"trigger_type_code": "CTS", "event_data": {"name": "watch", "operations": operations}}
    async with h.http.post(h.fgs(f"/triggers/{function_urn}"), json=body) as resp:
        created = await resp.json()
        assert resp.status == 201, created
    return dict(created)


async def timer_trigger(h: Harness, function_urn: str) -> str:
    body = {"trigger_type_code": "TIMER", "event_data": {"name": "t", "schedule_type": "Rate", "schedule": "60m"}}
    async with h.http.post(h.fgs(f"/triggers/{function_urn}"), json=body) as resp:
        created = await resp.json()
        assert resp.status == 201, created
    return str(created["trigger_id"])


async def ingest(h: Harness, body: Any) -> tuple[int, dict[str, Any]]:
    async with h.http.post(TRACES, json=body) as resp:
        return resp.status, dict(await resp.json())


# -- the management API audits itself ----------------------------------------------------------------


async def test_management_operations_become_queryable_traces(harness: Harness) -> None:
    started = int(time.time() * 1000)
    urn = await harness.create_function("audited", SINK)
    unqualified = urn.rsplit(":", 1)[0]
    trigger_id = await timer_trigger(harness, urn)
    one = harness.fgs(f"/triggers/{urn}/TIMER/{trigger_id}")
    for status in ("DISABLED", "ACTIVE"):
        async with harness.http.put(one, json={"trigger_status": status}) as resp:
            assert resp.status == 200
    async with harness.http.put(one, json={"event_data": {"schedule": "30m"}}) as resp:
        assert resp.status == 200
    async with harness.http.put(harness.fgs(f"/functions/{urn}/config"), json={"timeout": 20}) as resp:
        assert resp.status == 200
    async with harness.http.put(
        harness.fgs(f"/functions/{urn}/async-invoke-config"), json={"max_async_retry_attempts": 2}
    ) as resp:
        assert resp.status == 200
    async with harness.http.delete(one) as resp:
        assert resp.status == 204
    async with harness.http.post(harness.fgs(f"/triggers/{urn}"), json={"trigger_type_code": "NOPE"}) as resp:
        assert resp.status == 400
    listing = await list_traces(harness)
    for _ in range(3):  # reads are not audited
        async with harness.http.get(harness.fgs(f"/functions/{urn}/config")) as resp:
            assert resp.status == 200
    assert (await list_traces(harness))["meta_data"]["count"] == listing["meta_data"]["count"]

    names = [t["trace_name"] for t in reversed(listing["traces"])]  # oldest first
    assert names == [
        "createFunction",
        "createTrigger",
        "disableTrigger",
        "enableTrigger",
        "updateTrigger",
        "updateFunctionConfig",
        "updateAsyncInvokeConfig",
        "deleteTrigger",
        "createTrigger",  # the refused one
    ]
    by_name = {t["trace_name"]: t for t in listing["traces"]}
    created = by_name["createFunction"]
    assert (created["service_type"], created["resource_type"], created["trace_type"]) == (
        "FunctionGraph",
        "Functions",
        "ApiCall",
    )
    assert (created["resource_id"], created["resource_name"]) == (unqualified, "audited")
    assert created["user"]["name"] == "triggerbus-admin"
    assert created["source_ip"] == "127.0.0.1" and created["project_id"] == PROJECT
    assert (created["code"], created["trace_status"]) == (200, "normal")
    assert created["response"]["func_urn"] == urn
    assert started <= created["time"] <= created["record_time"] <= int(time.time() * 1000)
    disabled = by_name["disableTrigger"]
    assert (disabled["resource_type"], disabled["resource_id"], disabled["resource_name"]) == (
        "Trigger",
        trigger_id,
        "audited",
    )
    assert disabled["request"] == {"type": "TIMER"}  # what the trigger manager recorded
    assert disabled["response"]["trigger_status"] == "DISABLED"
    refused = listing["traces"][0]
    assert (refused["trace_name"], refused["code"], refused["trace_status"]) == ("createTrigger", 400, "warning")
    assert refused["response"]["error_code"] == "FSS.0400"
    assert refused["resource_id"] == unqualified

    # filters
    assert [t["trace_name"] for t in (await list_traces(harness, resource_id=trigger_id))["traces"]] == [
        "deleteTrigger",
        "updateTrigger",
        "enableTrigger",
        "disableTrigger",
        "createTrigger",
    ]
    assert {t["trace_name"] for t in (await list_traces(harness, resource_type="Functions"))["traces"]} == {
        "createFunction",
        "updateFunctionConfig",
        "updateAsyncInvokeConfig",
    }
    assert [t["trace_id"] for t in (await list_traces(harness, trace_status="warning"))["traces"]] == [
        refused["trace_id"]
    ]
    assert len(await traces_named(harness, "createTrigger")) == 2
    assert (await list_traces(harness, user="someone-else"))["traces"] == []
    assert (await list_traces(harness, to=started - 1))["traces"] == []
    assert len((await list_traces(harness, **{"from": created["time"], "to": created["time"]}))["traces"]) >= 1

    # pages: limit + the marker of the previous page
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 4}
    while True:
        async with harness.http.get(TRACES, params={k: str(v) for k, v in params.items()}) as resp:
            page = await resp.json()
        seen += [t["trace_id"] for t in page["traces"]]
        assert page["meta_data"]["count"] == len(page["traces"])
        if not page["meta_data"]["marker"]:
            break
        params["next"] = page["meta_data"]["marker"]
    assert seen == [t["trace_id"] for t in listing["traces"]]

    # the older audit_log() view reads the same log: what components audited (not the refused request)
    audited = await harness.service.store.audit_log()
    assert [entry["action"] for entry in audited] == names[-2::-1]
    assert [entry["trace_id"] for entry in audited] == [t["trace_id"] for t in listing["traces"][1:]]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "limit: must be between 1 and 200 (got 0)"),
        ({"limit": "201"}, "limit: must be between 1 and 200 (got 201)"),
        ({"from": "yesterday"}, "from: must be a time in epoch milliseconds (got 'yesterday')"),
        ({"from": "2000", "to": "1000"}, "from: must not be after to"),
        ({"trace_status": "fine"}, "trace_status: must be one of normal, warning, incident (got 'fine')"),
        ({"trace_rating": "normal", "trace_status": "warning"}, "trace_rating and trace_status: give one level"),
        ({"next": "no-such-trace"}, "next: no trace 'no-such-trace'"),
    ],
)
async def test_trace_queries_refuse_bad_parameters(harness: Harness, params: dict[str, str], message: str) -> None:
    async with harness.http.get(TRACES, params=params) as resp:
        error = await resp.json()
        assert resp.status == 400, error
    assert error["error_code"] == "FSS.0400"
    assert message in error["error_msg"]


async def test_traces_never_hold_secrets(harness: Harness, tmp_path: Path) -> None:
    credentials = {"access_key": "AK-visible-nowhere", "secret_key": SECRET}
    urn = await harness.create_function("secretive", SINK, credentials=credentials)
    async with harness.http.put(
        harness.fgs(f"/functions/{urn}/config"), json={"credentials": {"secret_key": SECRET + "2"}}
    ) as resp:
        assert resp.status == 200
    kafka = {
        "kafka_connect_address": "127.0.0.1:9",
        "topic_ids": ["t"],
        "kafka_user": "app",
        "kafka_password": SECRET,
        "kafka_ssl_enable": True,
    }
    async with harness.http.post(
        harness.fgs(f"/triggers/{urn}"), json={"trigger_type_code": "OPENSOURCEKAFKA", "event_data": kafka}
    ) as resp:
        assert resp.status == 201, await resp.json()  # created DISABLED: nothing connects
    refused = {**kafka, "kafka_password": 1234567, "batch_size": 5000}
    async with harness.http.post(
        harness.fgs(f"/triggers/{urn}"), json={"trigger_type_code": "OPENSOURCEKAFKA", "event_data": refused}
    ) as resp:
        error = await resp.json()
        assert resp.status == 400
    assert "1234567" in error["error_msg"]  # the caller is told what was wrong with what it sent ...
    everything = json.dumps(await list_traces(harness))
    assert "createTrigger" in everything and "updateFunctionConfig" in everything
    for secret in (SECRET, "AK-visible-nowhere", "1234567"):
        assert secret not in everything  # ... the audit log keeps none of it
    assert "kafka_password: Input should be a valid string (got ******)" in everything
    assert "batch_size: Input should be less than or equal to 1000 (got 5000)" in everything
    assert SECRET not in json.dumps(await harness.service.store.audit_log(500))
    shown = await asyncio.to_thread(cli, "traces", "list", "--json", "--limit", "500", endpoint=harness.base_url)
    assert "createTrigger" in shown.stdout and SECRET not in shown.stdout


async def test_cli_lists_and_filters_traces(harness: Harness) -> None:
    urn = await harness.create_function("clifn", SINK)
    trigger_id = await timer_trigger(harness, urn)
    async with harness.http.post(harness.fgs(f"/triggers/{urn}"), json={"trigger_type_code": "TIMER"}) as resp:
        assert resp.status == 400

    def run(*args: str) -> str:
        return cli("traces", "list", *args, endpoint=harness.base_url).stdout

    table = await asyncio.to_thread(run)
    assert "3 traces" in table
    assert "createFunction" in table and "clifn" in table and "triggerbus-admin" in table and "127.0.0.1" in table
    assert trigger_id in await asyncio.to_thread(run, "--resource-id", trigger_id, "--json")
    warnings = json.loads(await asyncio.to_thread(run, "--status", "warning", "--json"))
    assert [(t["trace_name"], t["code"]) for t in warnings] == [("createTrigger", 400)]
    named = json.loads(await asyncio.to_thread(run, "--name", "createFunction", "--json"))
    assert [t["resource_name"] for t in named] == ["clifn"]
    paged = json.loads(await asyncio.to_thread(run, "--limit", "2", "--json"))
    assert len(paged) == 2
    assert (
        json.loads(await asyncio.to_thread(run, "--since", "2000-01-01T00:00:00", "--json"))[-1]["trace_name"]
        == "createFunction"
    )
    bad = await asyncio.to_thread(cli, "traces", "list", "--since", "last week", check=False)
    assert bad.returncode == 2 and "is not like 30m" in bad.stderr


# -- CTS triggers ----------------------------------------------------------------------------------------


async def test_cts_trigger_invokes_only_for_matching_traces(harness: Harness) -> None:
    auditor = await harness.create_function("auditor", SINK)
    never = await harness.create_function("never", SINK)
    watch = await cts_trigger(harness, auditor, ["FunctionGraph:Trigger:createTrigger;deleteTrigger"])
    assert watch["trigger_status"] == "ACTIVE"
    # exact matching: another case, another service, another resource type never match
    await cts_trigger(
        harness,
        never,
        [
            "FunctionGraph:trigger:createTrigger;deleteTrigger",
            "functiongraph:Trigger:createTrigger",
            "SMN:Trigger:createTrigger",
            "FunctionGraph:Functions:createTrigger",
            "FunctionGraph:Trigger:CreateTrigger",
        ],
    )
    target = await harness.create_function("target", SINK)
    timer_id = await timer_trigger(harness, target)
    async with harness.http.put(harness.fgs(f"/functions/{target}/config"), json={"timeout": 9}) as resp:
        assert resp.status == 200  # updateFunctionConfig: not watched
    async with harness.http.delete(harness.fgs(f"/triggers/{target}/TIMER/{timer_id}")) as resp:
        assert resp.status == 204

    watched = [*await traces_named(harness, "createTrigger"), *await traces_named(harness, "deleteTrigger")]
    assert len(watched) == 4  # both CTS triggers' own creation, the timer's, its deletion
    for trace in watched:
        request_id = delivery_request_id(trace["trace_id"], watch["trigger_id"])
        record = await harness.wait_terminal(auditor, request_id)
        assert record["status"] == "SUCCESS", record
        assert json.loads(record["response"]) == {"cts": trace}  # the stored trace, as documented
        assert record["trigger_type"] == "CTS" and record["trigger_id"] == watch["trigger_id"]
        assert record["source"] == {
            "trace_id": trace["trace_id"],
            "trace_name": trace["trace_name"],
            "service_type": "FunctionGraph",
            "resource_type": "Trigger",
        }
    async with harness.http.get(harness.fgs(f"/functions/{auditor}/async-invocations"), params={"limit": 100}) as r:
        assert (await r.json())["count"] == 4  # nothing for updateFunctionConfig or the functions created
    async with harness.http.get(harness.fgs(f"/functions/{never}/async-invocations"), params={"limit": 100}) as r:
        assert (await r.json())["count"] == 0
    async with harness.http.get(harness.fgs(f"/triggers/{auditor}/CTS/{watch['trigger_id']}")) as resp:
        assert (await resp.json())["state"] == {
            "operations": 1,
            "delivered": 4,
            "lag": {"records": None, "seconds": None, "oldest_age_s": None},  # push-based: not measurable
        }


async def test_disabled_cts_triggers_do_not_fire(harness: Harness) -> None:
    auditor = await harness.create_function("sleepy", SINK)
    watch = await cts_trigger(harness, auditor, ["FunctionGraph:Functions:createFunction"])
    one = harness.fgs(f"/triggers/{auditor}/CTS/{watch['trigger_id']}")
    async with harness.http.put(one, json={"trigger_status": "DISABLED"}) as resp:
        assert resp.status == 200
    await harness.create_function("unseen", SINK)
    async with harness.http.put(one, json={"trigger_status": "ACTIVE"}) as resp:
        assert resp.status == 200
    await harness.create_function("seen", SINK)
    [seen, unseen] = await traces_named(harness, "createFunction", resource_type="Functions", limit=2)
    record = await harness.wait_terminal(auditor, delivery_request_id(seen["trace_id"], watch["trigger_id"]))
    assert json.loads(record["response"])["cts"]["resource_name"] == "seen"
    async with harness.http.get(harness.fgs(f"/functions/{auditor}/async-invocations")) as resp:
        assert [i["request_id"] for i in (await resp.json())["invocations"]] == [record["request_id"]]
    assert unseen["resource_name"] == "unseen"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"service_type": "ECS", "resource_type": "ecs"}, "body.trace_name: is required (a non-empty string)"),
        ({"service_type": "ECS", "trace_name": "x"}, "body.resource_type: is required"),
        ({"service_type": "ECS", "resource_type": "ecs", "trace_name": "x", "trace_status": "ok"},
         "body.trace_status: must be one of normal, warning, incident (got 'ok')"),
        ({"service_type": "ECS", "resource_type": "ecs", "trace_name": "x", "time": "yesterday"},
         "body.time: must be epoch milliseconds (int or numeric string)"),
        ({"service_type": "ECS", "resource_type": "ecs", "trace_name": "x", "trace_id": "a b"},
         "body.trace_id: must be 1-64 letters, digits"),
        ({"service_type": "ECS", "resource_type": "ecs", "trace_name": "x", "code": "teapot"}, "body.code:"),
        ([{"service_type": "ECS", "resource_type": "ecs", "trace_name": "x"}, "nope"],
         "body[1]: must be a JSON object (one CTS trace)"),
        ({"traces": []}, "traces: give at least one trace"),
        ({"traces": [{"service_type": "S", "resource_type": "r", "trace_name": "n"}] * 101},
         "traces: at most 100 traces per request (got 101)"),
        ("just a string", "body: must be a JSON object (one CTS trace)"),
    ],
)  # fmt: skip
async def test_ingest_refuses_bad_traces_precisely(harness: Harness, body: Any, message: str) -> None:
    status, error = await ingest(harness, body)
    assert status == 400, error
    assert error["error_code"] == "FSS.0400"
    assert message in error["error_msg"]
    assert (await list_traces(harness, service_type="ECS"))["traces"] == []


async def test_ingested_traces_are_stored_and_fire_matching_cts_triggers(harness: Harness) -> None:
    responder = await harness.create_function("responder", SINK)
    watch = await cts_trigger(harness, responder, ["ECS:ecs;server:restartServer;deleteServer"])
    restart = {
        "time": 1529996047000,
        "user": {"name": "ops", "id": "u1", "domain": {"name": "d", "id": "d1"}},
        "request": {"server": {"id": "s-1"}},
        "response": {},
        "code": 204,
        "service_type": "ECS",
        "resource_type": "server",
        "resource_name": "web-1",
        "resource_id": "s-1",
        "trace_name": "restartServer",
        "trace_type": "ConsoleAction",
        "trace_id": "69be64a7-0233-11e8-82e4-e5d37911193e",
        "trace_status": "normal",
        "source_ip": "10.0.0.8",
    }
    status, answer = await ingest(harness, restart)
    assert (status, answer) == (200, {"traces": [{"trace_id": restart["trace_id"], "status": "recorded"}]})
    status, again = await ingest(harness, {"traces": [restart]})
    assert again == {"traces": [{"trace_id": restart["trace_id"], "status": "duplicate"}]}
    status, listed = await ingest(
        harness,
        [
            {"service_type": "ECS", "resource_type": "server", "trace_name": "startServer"},  # not watched
            {"service_type": "ECS", "resource_type": "disk", "trace_name": "deleteServer"},  # not watched
        ],
    )
    assert status == 200 and [t["status"] for t in listed["traces"]] == ["recorded", "recorded"]

    [stored] = (await list_traces(harness, trace_id=restart["trace_id"], **{"from": 0}))["traces"]
    assert stored == {**restart, "record_time": stored["record_time"], "project_id": PROJECT}
    assert stored["record_time"] >= int(time.time() * 1000) - 60_000
    record = await harness.wait_terminal(responder, delivery_request_id(restart["trace_id"], watch["trigger_id"]))
    assert json.loads(record["response"]) == {"cts": stored}
    generated = [t["trace_id"] for t in listed["traces"]]
    assert all(len(trace_id) == 36 for trace_id in generated)
    async with harness.http.get(harness.fgs(f"/functions/{responder}/async-invocations")) as resp:
        assert (await resp.json())["count"] == 1


# -- at least once across a crash ------------------------------------------------------------------------------


async def test_owed_deliveries_are_replayed_after_a_restart(tmp_path: Path) -> None:
    """A crash after the trace was stored but before its invocation was enqueued: the trace
    keeps its owed deliveries, and the next start enqueues them."""
    settings = make_settings(tmp_path / "data", cts_replay_interval_s=0.2, cts_replay_grace_s=0.0)
    async with running(settings) as h:
        auditor = await h.create_function("replayed", SINK)
        watch = await cts_trigger(h, auditor, ["ECS:server:rebootServer"])
    trace = {
        "time": 1700000000000,
        "user": {"name": "ops"},
        "service_type": "ECS",
        "resource_type": "server",
        "resource_name": "db-1",
        "resource_id": "s-9",
        "trace_name": "rebootServer",
        "trace_type": "ApiCall",
        "record_time": 1700000000001,
        "trace_id": "owed-trace-1",
        "trace_status": "normal",
        "code": 200,
    }
    db = Database(settings.data_dir.resolve() / "triggerbus.db")  # the service is down: write as it would have
    await db.open()
    try:
        store = SQLiteStore(db)
        await store.start()
        owed = [{"trigger_id": watch["trigger_id"], "function_urn": auditor}]
        assert await store.insert_trace(TraceEntry(trace, targets=owed, recorded=time.time() - 5))
    finally:
        await db.close()

    async with running(settings) as h:
        record = await h.wait_terminal(auditor, delivery_request_id("owed-trace-1", watch["trigger_id"]))
        assert record["status"] == "SUCCESS"
        assert json.loads(record["response"])["cts"]["trace_name"] == "rebootServer"
        deadline = time.monotonic() + 10
        while (await h.service.store.list_traces(TraceQuery(trace_id="owed-trace-1")))[0].targets:
            assert time.monotonic() < deadline, "the trace still owes its delivery"
            await asyncio.sleep(0.05)
        assert h.service.cts.replayed == 1
