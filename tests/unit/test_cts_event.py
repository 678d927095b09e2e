"""CTS: operation filters (exact matching), the delivered event (golden), trace helpers."""

from __future__ import annotations

import json

import pytest

from connectors.cts import OperationFilter, build_event, delivery_request_id, parse_operations
from schemas.errors import FSSError
from triggerbus.api.traces import scrub_echoed_secrets
from triggerbus.store.traces import (
    AuditScope,
    TraceEntry,
    audit_view,
    bounded,
    redact_secrets,
    system_trace,
    trace_columns,
    trace_status_for,
)

TRACE = {
    "time": 1529996047000,
    "user": {"name": "triggerbus-admin", "id": "", "domain": {"name": "", "id": ""}},
    "request": {"type": "TIMER"},
    "response": {"trigger_status": "DISABLED"},
    "code": 200,
    "service_type": "FunctionGraph",
    "resource_type": "Trigger",
    "resource_name": "audited",
    "resource_id": "9a14fae1-78cf-4185-ac7a-429eb6dc41fb",
    "trace_name": "disableTrigger",
    "trace_type": "ApiCall",
    "record_time": 1529996047003,
    "trace_id": "69be64a7-0233-11e8-82e4-e5d37911193e",
    "trace_status": "normal",
    "trace_rating": "normal",
    "source_ip": "127.0.0.1",
    "project_id": "proj1",
    "api_version": "v2",
    "read_only": False,
    "message": "PUT /v2/proj1/fgs/triggers/urn:fss:local:proj1:function:default:audited:latest/TIMER/9a14fae1",
}
# The event a CTS trigger delivers for TRACE: the documented keys first, in the documented
# order (contract §1.13), then the keys of real v3 traces.
GOLDEN = (
    '{"cts":{"time":1529996047000,"user":{"name":"triggerbus-admin","id":"","domain":{"name":"","id":""}},'
    '"request":{"type":"TIMER"},"response":{"trigger_status":"DISABLED"},"code":200,'
    '"service_type":"FunctionGraph","resource_type":"Trigger","resource_name":"audited",'
    '"resource_id":"9a14fae1-78cf-4185-ac7a-429eb6dc41fb","trace_name":"disableTrigger","trace_type":"ApiCall",'
    '"record_time":1529996047003,"trace_id":"69be64a7-0233-11e8-82e4-e5d37911193e","trace_status":"normal",'
    '"api_version":"v2",'
    '"message":"PUT /v2/proj1/fgs/triggers/urn:fss:local:proj1:function:default:audited:latest/TIMER/9a14fae1",'
    '"project_id":"proj1","read_only":false,"source_ip":"127.0.0.1","trace_rating":"normal"}}'
)


def test_delivered_event_matches_the_golden_json() -> None:
    assert build_event(TRACE) == GOLDEN
    assert json.loads(GOLDEN) == {"cts": TRACE}  # nothing added, nothing lost


def test_delivery_request_ids_are_stable() -> None:
    first = delivery_request_id(TRACE["trace_id"], "9a14fae1-78cf-4185-ac7a-429eb6dc41fb")
    assert first == "9ee216a9-0975-5e5a-b90e-57d187e2047d"
    assert delivery_request_id(TRACE["trace_id"], "another-trigger") != first


@pytest.mark.parametrize(
    ("operation", "trace", "matches"),
    [
        ("FunctionGraph:Trigger:disableTrigger", {}, True),
        ("FunctionGraph:Functions;Trigger:createTrigger;disableTrigger", {}, True),
        ("FunctionGraph:Trigger:enableTrigger", {}, False),
        ("FunctionGraph:trigger:disableTrigger", {}, False),  # resource type: exact, case included
        ("functiongraph:Trigger:disableTrigger", {}, False),  # service type: exact
        ("FunctionGraph:Trigger:DisableTrigger", {}, False),  # operation: exact
        ("FunctionGraph:Trigger:disableTrigger", {"service_type": "SMN"}, False),
        (
            "ECS:ecs;server:restartServer;deleteServer",
            {"service_type": "ECS", "resource_type": "server", "trace_name": "deleteServer"},
            True,
        ),
    ],
)
def test_operation_filters_match_exactly(operation: str, trace: dict[str, str], matches: bool) -> None:
    assert OperationFilter.parse(operation).matches({**TRACE, **trace}) is matches


def test_operation_filters_parse_the_documented_form() -> None:
    parsed = OperationFilter.parse("ECS:ecs;server:restartServer;deleteServer")
    assert parsed == OperationFilter("ECS", frozenset({"ecs", "server"}), frozenset({"restartServer", "deleteServer"}))
    with pytest.raises(FSSError, match=r"event_data.operations\[1\]: 'ECS:ecs' must look like"):
        parse_operations(["FunctionGraph:Functions:createFunction", "ECS:ecs"])
    with pytest.raises(FSSError, match="must list at least one"):
        parse_operations([])


def test_trace_levels_follow_the_http_status() -> None:
    assert [trace_status_for(c) for c in (200, 204, 400, 404, 429, 500, 503)] == [
        "normal",
        "normal",
        "warning",
        "warning",
        "warning",
        "incident",
        "incident",
    ]


def test_system_traces_are_cts_shaped() -> None:
    trace = system_trace("kafkaRecordDropped", "t-1", {"offset": 3, "db_password": "x"})
    assert set(TRACE) - set(trace) == {"source_ip", "project_id", "api_version", "read_only", "message"}
    assert (trace["trace_type"], trace["service_type"], trace["resource_type"]) == (
        "SystemAction",
        "FunctionGraph",
        "Trigger",
    )
    assert trace["response"] == {"offset": 3, "db_password": "******"}
    assert system_trace("smnMqttMessageDropped", "urn:smn:r:p:t", {})["service_type"] == "SMN"
    assert json.loads(build_event(trace))["cts"] == trace


def test_redaction_and_bounds() -> None:
    nested = {"a": [{"kafka_password": "p", "credentials": {"secret_key": "s"}}], "connection_uri": "mongodb://u:p@h/x"}
    assert redact_secrets(nested) == {
        "a": [{"kafka_password": "******", "credentials": "******"}],
        "connection_uri": "mongodb://u:******@h/x",
    }
    assert redact_secrets({"access_password": ""}) == {"access_password": ""}  # "not set" stays visible
    assert bounded({"big": "x" * 100}, limit=50) == {"omitted": "111 bytes (over the 50-byte trace limit)"}
    assert (
        scrub_echoed_secrets(
            {
                "error_code": "FSS.0400",
                "error_msg": "event_data.kafka_password: bad (got 123); event_data.batch_size: x (got 5)",
            }
        )["error_msg"]
        == "event_data.kafka_password: bad (got ******); event_data.batch_size: x (got 5)"
    )


def test_request_scope_and_views() -> None:
    scope = AuditScope()
    assert scope.absorb("createTrigger", "t", {"type": "TIMER"})
    assert not scope.absorb("kafkaStartPosition", "t", {})  # not a management operation
    scope.close()
    assert not scope.absorb("deleteTrigger", "t", {})
    assert [o.action for o in scope.operations] == ["createTrigger"]
    entry = TraceEntry(TRACE, detail={"k": 1}, recorded=12.5)
    assert audit_view(entry) == {
        "ts": 12.5,
        "action": "disableTrigger",
        "resource": TRACE["resource_id"],
        "detail": {"k": 1},
        "trace_id": TRACE["trace_id"],
    }
    assert trace_columns({**TRACE, "resource_id": {"b": 1, "a": 2}})["resource_id"] == '{"a": 2, "b": 1}'
