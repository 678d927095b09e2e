"""Trigger configuration rules (``schemas/triggers.py``): event_data validation with exact FSS.0400
messages, initial status, cannot-disable types and secret redaction."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.errors import FSSError
from schemas.triggers import (
    CANNOT_DISABLE,
    EVENT_DATA_MODELS,
    REDACTED,
    SECRET_FIELDS,
    ApigEventData,
    EventGridEventData,
    OBSEventData,
    TimerEventData,
    TriggerStatus,
    TriggerType,
    check_status,
    initial_status,
    parse_event_data,
    redact_event_data,
)

# Minimal valid event_data per type; tests override one field at a time.
VALID: dict[str, dict[str, Any]] = {
    "TIMER": {"name": "Timer-l8v2", "schedule": "3m", "schedule_type": "Rate"},
    "APIG": {"name": "API_test_function", "path": "/test", "func_info": {"timeout": 5000}},
    "CTS": {"name": "eqwrwe", "operations": ["FunctionGraph:Functions:createFunction"]},
    "DDS": {"instance_id": "i-1", "db_name": "functiongraph", "collection_name": "person"},
    "DIS": {"stream_name": "dis-qYPJ", "polling_interval": 30, "sharditerator_type": "TRIM_HORIZON"},
    "DMS": {"queue_id": "q-1", "consumer_group_id": "g-1"},
    "KAFKA": {"instance_id": "86ad3efc-c019-460e-91e7-317b1a89f95x", "topic_ids": ["PUSH_TOKEN_RECORD"]},
    "OPENSOURCEKAFKA": {"topic_ids": ["t"], "kafka_connect_address": "192.168.0.10:9092,kafka-2.local:9093"},
    "RABBITMQ": {"instance_id": "r-1", "exchange_name": "fanout-ex", "access_password": "pw"},
    "ROCKETMQ": {"instance_id": "m-1", "topic": "t", "consumer_group": "g"},
    "LTS": {"log_group_id": "ccd3fa30-7c86", "log_topic_id": "5b4944dd-9603"},
    "OBS": {"bucket": "input-picture2", "events": ["s3:ObjectCreated:*"], "name": "obs-event-1ec7"},
    "SMN": {"topic_urn": "urn:smn:eu-de:0162c0f220284698b77a3d264376343a:Failed_times"},
    "EVENTGRID": {"channel_name": "default", "source_name": "HC.OBS.DWR"},
    "IOTDA": {"topics": ["$oc/devices/+/sys/messages/up"]},
}
VALID["DEDICATEDGATEWAY"] = VALID["APIC"] = VALID["APIG"]
VALID["GAUSSMONGO"] = VALID["DDS"]


def ok(trigger_type: str, **changes: Any) -> dict[str, Any]:
    return parse_event_data(trigger_type, {**VALID[trigger_type], **changes}).dump()


def error(trigger_type: str, data: object) -> str:
    with pytest.raises(FSSError) as info:
        parse_event_data(trigger_type, data)
    assert (info.value.status, info.value.code) == (400, "FSS.0400")
    return info.value.message


def rejected(trigger_type: str, **changes: Any) -> str:
    return error(trigger_type, {**VALID[trigger_type], **changes})


def without(trigger_type: str, key: str) -> str:
    return error(trigger_type, {k: v for k, v in VALID[trigger_type].items() if k != key})


# ---------------------------------------------------------------------------- general


def test_every_type_has_a_model_and_a_valid_example() -> None:
    assert set(EVENT_DATA_MODELS) == set(TriggerType)
    assert {t.value for t in TriggerType} == set(VALID)
    for kind in TriggerType:
        assert isinstance(parse_event_data(kind, VALID[kind]), EVENT_DATA_MODELS[kind])


def test_trigger_type_enum_values() -> None:
    assert [t.value for t in TriggerType] == [
        "TIMER", "APIG", "DEDICATEDGATEWAY", "APIC", "CTS", "DDS", "GAUSSMONGO", "DMS", "DIS",
        "LTS", "OBS", "SMN", "KAFKA", "OPENSOURCEKAFKA", "RABBITMQ", "ROCKETMQ", "EVENTGRID", "IOTDA",
    ]  # fmt: skip


def test_unknown_trigger_type_lists_supported_ones() -> None:
    assert error("FOO", {}) == (
        "unsupported trigger_type_code 'FOO': expected one of TIMER, APIG, DEDICATEDGATEWAY, APIC, CTS, "
        "DDS, GAUSSMONGO, DMS, DIS, LTS, OBS, SMN, KAFKA, OPENSOURCEKAFKA, RABBITMQ, ROCKETMQ, "
        "EVENTGRID, IOTDA"
    )
    assert parse_event_data("timer", VALID["TIMER"]).dump()["name"] == "Timer-l8v2"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "event_data: is required"),
        ([1], "event_data: must be a JSON object (got array)"),
        ("{}", "event_data: must be a JSON object (got string)"),
        (3, "event_data: must be a JSON object (got number)"),
        (True, "event_data: must be a JSON object (got boolean)"),
    ],
)
def test_event_data_must_be_an_object(data: object, message: str) -> None:
    assert error("TIMER", data) == message


def test_unknown_keys_are_kept_and_unset_options_omitted() -> None:
    assert ok("LTS", log_group_name="g", future_key={"x": 1}) == {
        **VALID["LTS"],
        "log_group_name": "g",
        "future_key": {"x": 1},
    }
    assert ok("TIMER") == VALID["TIMER"]


def test_wrong_types_are_rejected_not_coerced() -> None:
    assert rejected("KAFKA", batch_size="100") == "event_data.batch_size: Input should be a valid integer (got '100')"
    assert rejected("KAFKA", batch_size=True) == "event_data.batch_size: Input should be a valid integer (got True)"
    assert rejected("KAFKA", kafka_ssl_enable="true") == (
        "event_data.kafka_ssl_enable: Input should be a valid boolean (got 'true')"
    )
    assert rejected("LTS", log_group_id=5) == "event_data.log_group_id: Input should be a valid string (got 5)"


# ---------------------------------------------------------------------------- TIMER


@pytest.mark.parametrize("name", ["T", "Timer_001", "a-b_C9", "x" * 64])
def test_timer_name_accepted(name: str) -> None:
    assert ok("TIMER", name=name)["name"] == name


@pytest.mark.parametrize("name", ["", "x" * 65, "bad name", "定时器", "a.b"])
def test_timer_name_rejected(name: str) -> None:
    assert rejected("TIMER", name=name) == (
        f"event_data.name: timer name must be 1-64 characters: letters, digits, '_' or '-' (got {name!r})"
    )


@pytest.mark.parametrize(("given", "stored"), [("rate", "Rate"), ("CRON", "Cron"), ("Rate", "Rate")])
def test_timer_schedule_type_normalised(given: str, stored: str) -> None:
    assert ok("TIMER", schedule_type=given)["schedule_type"] == stored


def test_timer_rules() -> None:
    assert rejected("TIMER", schedule_type="Weekly") == (
        "event_data.schedule_type: Input should be 'Rate' or 'Cron' (got 'Weekly')"
    )
    assert rejected("TIMER", schedule="  ") == (
        "event_data.schedule: String should have at least 1 character (got '  ')"
    )
    assert ok("TIMER", schedule="@every 1h30m")["schedule"] == "@every 1h30m"
    assert without("TIMER", "schedule") == "event_data.schedule: is required"
    assert error("TIMER", {}) == (
        "event_data.name: is required; event_data.schedule_type: is required; event_data.schedule: is required"
    )
    assert ok("TIMER", user_event="x" * 4096)["user_event"] == "x" * 4096
    assert rejected("TIMER", user_event="x" * 4097).startswith(
        "event_data.user_event: String should have at most 4096 characters (got 'xxx"
    )
    assert isinstance(parse_event_data("TIMER", VALID["TIMER"]), TimerEventData)


# ---------------------------------------------------------------------------- APIG family


@pytest.mark.parametrize("kind", ["APIG", "DEDICATEDGATEWAY", "APIC"])
def test_apig_documented_example_and_defaults(kind: str) -> None:
    example = {
        "func_info": {"timeout": 5000},
        "name": "API_test_function",
        "env_id": "DEFAULT_ENVIRONMENT_RELEASE_ID",
        "env_name": "RELEASE",
        "protocol": "HTTPS",
        "auth": "IAM",
        "group_id": "5106210cf79e4xxxx",
        "sl_domain": "5106210cf79e4xxxx.apic.{region_id}.example.com",
        "match_mode": "SWA",
        "req_method": "ANY",
        "backend_type": "FUNCTION",
        "type": 1,
        "path": "/test_gxz_v1_billing",
    }
    parsed = parse_event_data(kind, example)
    assert isinstance(parsed, ApigEventData)
    assert parsed.dump() == {**example, "func_info": {"timeout": 5000, "invocation_type": "sync"}}
    assert ok(kind)["env_name"] == "RELEASE"


@pytest.mark.parametrize("timeout", [1, 60000])
def test_apig_timeout_accepted(timeout: int) -> None:
    assert ok("APIG", func_info={"timeout": timeout})["func_info"]["timeout"] == timeout


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        (0, "event_data.func_info.timeout: Input should be greater than or equal to 1 (got 0)"),
        (60001, "event_data.func_info.timeout: Input should be less than or equal to 60000 (got 60001)"),
        ("5000", "event_data.func_info.timeout: Input should be a valid integer (got '5000')"),
    ],
)
def test_apig_timeout_rejected(timeout: object, message: str) -> None:
    assert rejected("APIG", func_info={"timeout": timeout}) == message


def test_apig_timeout_and_func_info_required() -> None:
    assert rejected("APIG", func_info={}) == "event_data.func_info.timeout: is required"
    assert without("APIG", "func_info") == "event_data.func_info: is required"


API_NAME_RULE = (
    "API name must be 3-64 characters, start with a letter or Chinese character and contain only "
    "letters, digits, underscores or Chinese characters"
)


@pytest.mark.parametrize("name", ["abc", "API_1", "测试接口", "接口_api_1", "a" * 64])
def test_apig_name_accepted(name: str) -> None:
    assert ok("APIG", name=name)["name"] == name


@pytest.mark.parametrize("name", ["ab", "a" * 65, "1api", "_api", "api-1", "api name"])
def test_apig_name_rejected(name: str) -> None:
    assert rejected("APIG", name=name) == f"event_data.name: {API_NAME_RULE} (got {name!r})"


def test_apig_enumerations() -> None:
    assert ok("APIG", req_method="get", protocol="http", auth="app", match_mode="normal") == {
        **ok("APIG"),
        "req_method": "GET",
        "protocol": "HTTP",
        "auth": "APP",
        "match_mode": "NORMAL",
    }
    for method in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "ANY"):
        assert ok("APIG", req_method=method)["req_method"] == method
    assert rejected("APIG", req_method="TRACE") == (
        "event_data.req_method: Input should be 'GET', 'POST', 'PUT', 'DELETE', 'HEAD', 'PATCH', "
        "'OPTIONS' or 'ANY' (got 'TRACE')"
    )
    assert rejected("APIG", protocol="FTP") == "event_data.protocol: Input should be 'HTTP' or 'HTTPS' (got 'FTP')"
    assert rejected("APIG", auth="OAUTH") == ("event_data.auth: Input should be 'IAM', 'APP' or 'NONE' (got 'OAUTH')")
    assert rejected("APIG", match_mode="PREFIX") == (
        "event_data.match_mode: Input should be 'SWA' or 'NORMAL' (got 'PREFIX')"
    )
    assert ok("APIG", type=2)["type"] == 2
    assert rejected("APIG", type=3) == "event_data.type: Input should be 1 or 2 (got 3)"
    assert rejected("APIG", type=True) == "event_data.type: must be an integer, not a boolean (got True)"
    assert ok("APIG", func_info={"timeout": 1, "invocation_type": "ASYNC"})["func_info"]["invocation_type"] == "async"
    assert rejected("APIG", func_info={"timeout": 1, "invocation_type": "later"}) == (
        "event_data.func_info.invocation_type: Input should be 'sync' or 'async' (got 'later')"
    )


def test_apig_path_and_response_only_fields() -> None:
    assert rejected("APIG", path="test") == "event_data.path: must start with '/' (got 'test')"
    assert rejected("APIG", path="/a b") == "event_data.path: must not contain whitespace, '?' or '#' (got '/a b')"
    assert without("APIG", "path") == "event_data.path: is required"
    echoed = ok("APIG", triggerid="t", api_id="a", api_name="n", invoke_url="https://x/test", roma_app_id="r")
    assert echoed["invoke_url"] == "https://x/test"


# ---------------------------------------------------------------------------- CTS

OPERATION_RULE = (
    "operation must look like 'Service:resourceA;resourceB:operation1;operation2' "
    "(e.g. 'ECS:ecs;server:restartServer;deleteServer')"
)


def test_cts_operations() -> None:
    ops = ["AAD:addprotocolrule:addProtocolRule", "ECS:ecs;server:restartServer;deleteServer"]
    assert ok("CTS", operations=ops)["operations"] == ops
    assert without("CTS", "operations") == "event_data.operations: is required"
    assert rejected("CTS", operations=[]) == (
        "event_data.operations: must list at least one 'Service:resourceType:operation' entry"
    )
    for bad in ("ECS", "ECS:ecs", "ECS:ecs:", "ECS::op", "ECS:a;;b:op", "ECS:ecs:op:extra", "ECS:e cs:op"):
        assert rejected("CTS", operations=[ops[0], bad]) == f"event_data.operations[1]: {OPERATION_RULE} (got {bad!r})"
    assert rejected("CTS", operations="ECS:ecs:op") == (
        "event_data.operations: Input should be a valid list (got 'ECS:ecs:op')"
    )


# ---------------------------------------------------------------------------- DDS / GAUSSMONGO


@pytest.mark.parametrize("kind", ["DDS", "GAUSSMONGO"])
def test_mongo_required_and_batch_size(kind: str) -> None:
    assert ok(kind)["batch_size"] == 100
    for key in ("instance_id", "db_name", "collection_name"):
        assert without(kind, key) == f"event_data.{key}: is required"
    assert ok(kind, batch_size=1)["batch_size"] == 1
    assert ok(kind, batch_size=10000)["batch_size"] == 10000
    assert rejected(kind, batch_size=0) == "event_data.batch_size: Input should be greater than or equal to 1 (got 0)"
    assert rejected(kind, batch_size=10001) == (
        "event_data.batch_size: Input should be less than or equal to 10000 (got 10001)"
    )


@pytest.mark.parametrize("kind", ["DDS", "GAUSSMONGO"])
@pytest.mark.parametrize("db", ["admin", "local", "config", "Admin"])
def test_mongo_reserved_databases(kind: str, db: str) -> None:
    assert rejected(kind, db_name=db) == (
        f"event_data.db_name: database {db!r} is reserved (admin, local and config cannot be used) (got {db!r})"
    )


def test_mongo_names_and_connection_uri() -> None:
    assert rejected("DDS", db_name="a.b") == (
        "event_data.db_name: database name must be at most 63 bytes without /\\. \"$*<>:|? characters (got 'a.b')"
    )
    assert rejected("DDS", collection_name="system.users") == (
        "event_data.collection_name: collection name must not contain '$' or start with 'system.' (got 'system.users')"
    )
    uri = "mongodb://rwuser:pw@192.168.0.5:8635/?authSource=admin&replicaSet=replica"
    assert ok("DDS", connection_uri=uri, db_user="rwuser", db_password="pw")["connection_uri"] == uri
    assert rejected("DDS", connection_uri="http://x") == (
        "event_data.connection_uri: must start with 'mongodb://' or 'mongodb+srv://' (got 'http://x')"
    )


# ---------------------------------------------------------------------------- DIS


def test_dis_required_and_enumerations() -> None:
    assert ok("DIS") == {**VALID["DIS"], "polling_unit": "s"}
    for key in ("stream_name", "sharditerator_type", "polling_interval"):
        assert without("DIS", key) == f"event_data.{key}: is required"
    assert ok("DIS", sharditerator_type="latest", polling_unit="MS")["sharditerator_type"] == "LATEST"
    assert ok("DIS", polling_unit="MS")["polling_unit"] == "ms"
    assert rejected("DIS", sharditerator_type="AT_SEQUENCE_NUMBER") == (
        "event_data.sharditerator_type: Input should be 'TRIM_HORIZON' or 'LATEST' (got 'AT_SEQUENCE_NUMBER')"
    )
    assert rejected("DIS", polling_unit="m") == "event_data.polling_unit: Input should be 's' or 'ms' (got 'm')"
    assert ok("DIS", polling_interval=1)["polling_interval"] == 1
    assert rejected("DIS", polling_interval=0) == (
        "event_data.polling_interval: Input should be greater than 0 (got 0)"
    )


def test_dis_ranges() -> None:
    assert ok("DIS", batch_size=1)["batch_size"] == 1
    assert ok("DIS", batch_size=10000)["batch_size"] == 10000
    assert rejected("DIS", batch_size=0) == "event_data.batch_size: Input should be greater than or equal to 1 (got 0)"
    assert rejected("DIS", batch_size=10001) == (
        "event_data.batch_size: Input should be less than or equal to 10000 (got 10001)"
    )
    assert ok("DIS", max_fetch_bytes=0)["max_fetch_bytes"] == 0
    assert ok("DIS", max_fetch_bytes=4194304)["max_fetch_bytes"] == 4194304
    assert rejected("DIS", max_fetch_bytes=4194305) == (
        "event_data.max_fetch_bytes: Input should be less than or equal to 4194304 (got 4194305)"
    )
    assert rejected("DIS", max_fetch_bytes=-1) == (
        "event_data.max_fetch_bytes: Input should be greater than or equal to 0 (got -1)"
    )


@pytest.mark.parametrize(("given", "stored"), [("true", True), ("false", False), ("TRUE", True), (True, True)])
def test_dis_is_serial_accepts_strings(given: object, stored: bool) -> None:
    assert ok("DIS", is_serial=given)["is_serial"] is stored


def test_dis_is_serial_rejects_other_strings() -> None:
    assert rejected("DIS", is_serial="yes") == "event_data.is_serial: Input should be a valid boolean (got 'yes')"


# ---------------------------------------------------------------------------- KAFKA / OPENSOURCEKAFKA


@pytest.mark.parametrize("kind", ["KAFKA", "OPENSOURCEKAFKA"])
def test_kafka_batch_size(kind: str) -> None:
    assert ok(kind)["batch_size"] == 100
    assert ok(kind, batch_size=1)["batch_size"] == 1
    assert ok(kind, batch_size=1000)["batch_size"] == 1000
    assert rejected(kind, batch_size=0) == "event_data.batch_size: Input should be greater than or equal to 1 (got 0)"
    assert rejected(kind, batch_size=1001) == (
        "event_data.batch_size: Input should be less than or equal to 1000 (got 1001)"
    )
    assert rejected(kind, batch_size=5000) == (
        "event_data.batch_size: Input should be less than or equal to 1000 (got 5000)"
    )


@pytest.mark.parametrize("kind", ["KAFKA", "OPENSOURCEKAFKA"])
def test_kafka_topics_and_ssl(kind: str) -> None:
    assert without(kind, "topic_ids") == "event_data.topic_ids: is required"
    assert rejected(kind, topic_ids=[]) == "event_data.topic_ids: must list at least one topic"
    assert rejected(kind, topic_ids=["a", ""]) == (
        "event_data.topic_ids[1]: String should have at least 1 character (got '')"
    )
    assert rejected(kind, kafka_ssl_enable=True) == (
        "event_data: kafka_user and kafka_password are required when kafka_ssl_enable is true"
    )
    secured = ok(kind, kafka_ssl_enable=True, kafka_user="u", kafka_password="p")
    assert secured["kafka_ssl_enable"] is True


def test_kafka_instance_id_required_but_not_for_opensource() -> None:
    assert without("KAFKA", "instance_id") == "event_data.instance_id: is required"
    assert "instance_id" not in ok("OPENSOURCEKAFKA")
    assert ok("KAFKA", kafka_connect_address="10.0.0.1:9092")["kafka_connect_address"] == "10.0.0.1:9092"


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("10.0.0.1:9092", "10.0.0.1:9092"),
        ("kafka-1.example.com:9093, 10.0.0.2:9092", "kafka-1.example.com:9093,10.0.0.2:9092"),
        ("[fe80::1]:9092", "[fe80::1]:9092"),
        ("localhost:1,localhost:65535", "localhost:1,localhost:65535"),
    ],
)
def test_opensource_kafka_addresses_accepted(address: str, stored: str) -> None:
    assert ok("OPENSOURCEKAFKA", kafka_connect_address=address)["kafka_connect_address"] == stored


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.0.0.1", "address '10.0.0.1' must be host:port with a port between 1 and 65535"),
        ("kafka:0", "address 'kafka:0' must be host:port with a port between 1 and 65535"),
        ("kafka:65536", "address 'kafka:65536' must be host:port with a port between 1 and 65535"),
        ("kafka:port", "address 'kafka:port' must be host:port with a port between 1 and 65535"),
        ("a:9092,,b:9092", "address list has an empty entry: expected 'host:port[,host:port...]'"),
        ("", "address list must not be empty: expected 'host:port[,host:port...]'"),
        ("bad_host:9092", "address 'bad_host:9092' has an invalid host 'bad_host'"),
        ("[zz::1]:9092", "address '[zz::1]:9092' has an invalid IPv6 address"),
    ],
)
def test_opensource_kafka_addresses_rejected(address: str, problem: str) -> None:
    assert rejected("OPENSOURCEKAFKA", kafka_connect_address=address) == (
        f"event_data.kafka_connect_address: {problem} (got {address!r})"
    )


def test_opensource_kafka_address_required() -> None:
    assert without("OPENSOURCEKAFKA", "kafka_connect_address") == "event_data.kafka_connect_address: is required"


# ---------------------------------------------------------------------------- RABBITMQ / ROCKETMQ / DMS


def test_rabbitmq_rules() -> None:
    for key in ("instance_id", "exchange_name", "access_password"):
        assert without("RABBITMQ", key) == f"event_data.{key}: is required"
    assert ok("RABBITMQ")["batch_size"] == 100
    assert ok("RABBITMQ", batch_size=1000)["batch_size"] == 1000
    assert rejected("RABBITMQ", batch_size=1001) == (
        "event_data.batch_size: Input should be less than or equal to 1000 (got 1001)"
    )
    assert rejected("RABBITMQ", batch_size=0) == (
        "event_data.batch_size: Input should be greater than or equal to 1 (got 0)"
    )
    assert ok("RABBITMQ", connect_address="192.168.0.7:5672", vhost="/", ssl_enable=False)["vhost"] == "/"
    assert rejected("RABBITMQ", ssl_enable="no") == "event_data.ssl_enable: Input should be a valid boolean (got 'no')"


def test_rocketmq_rules() -> None:
    assert ok("ROCKETMQ")["batch_size"] == 100
    assert ok("ROCKETMQ", batch_size=1)["batch_size"] == 1
    assert rejected("ROCKETMQ", batch_size=1001) == (
        "event_data.batch_size: Input should be less than or equal to 1000 (got 1001)"
    )
    assert rejected("ROCKETMQ", enable_acl=True) == (
        "event_data: access_key and secret_key are required when enable_acl is true"
    )
    assert ok("ROCKETMQ", enable_acl=True, access_key="ak", secret_key="sk")["enable_acl"] is True


def test_dms_rules() -> None:
    assert ok("DMS")["polling_interval"] == 30
    assert without("DMS", "queue_id") == "event_data.queue_id: is required"
    assert rejected("DMS", polling_interval=0) == "event_data.polling_interval: Input should be greater than 0 (got 0)"


# ---------------------------------------------------------------------------- LTS / OBS / SMN / EG / IOTDA


def test_lts_rules() -> None:
    assert without("LTS", "log_group_id") == "event_data.log_group_id: is required"
    assert without("LTS", "log_topic_id") == "event_data.log_topic_id: is required"
    assert (
        rejected("LTS", log_topic_id="") == "event_data.log_topic_id: String should have at least 1 character (got '')"
    )


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("s3:ObjectCreated:*", "s3:ObjectCreated:*"),
        ("s3:ObjectCreated:Put", "s3:ObjectCreated:Put"),
        ("s3:ObjectCreated:Post", "s3:ObjectCreated:Post"),
        ("s3:ObjectCreated:Copy", "s3:ObjectCreated:Copy"),
        ("s3:ObjectCreated:CompleteMultipartUpload", "s3:ObjectCreated:CompleteMultipartUpload"),
        ("s3:ObjectRemoved:*", "s3:ObjectRemoved:*"),
        ("s3:ObjectRemoved:Delete", "s3:ObjectRemoved:Delete"),
        ("s3:ObjectRemoved:DeleteMarkerCreated", "s3:ObjectRemoved:DeleteMarkerCreated"),
        ("ObjectCreated", "s3:ObjectCreated:*"),
        ("ObjectRemoved", "s3:ObjectRemoved:*"),
        ("Put", "s3:ObjectCreated:Put"),
        ("Post", "s3:ObjectCreated:Post"),
        ("Copy", "s3:ObjectCreated:Copy"),
        ("CompleteMultipartUpload", "s3:ObjectCreated:CompleteMultipartUpload"),
        ("Delete", "s3:ObjectRemoved:Delete"),
        ("DeleteMarkerCreated", "s3:ObjectRemoved:DeleteMarkerCreated"),
        ("ObjectCreated:Put", "s3:ObjectCreated:Put"),
        ("objectcreated:*", "s3:ObjectCreated:*"),
    ],
)
def test_obs_event_forms_normalised(given: str, stored: str) -> None:
    assert ok("OBS", events=[given])["events"] == [stored]


def test_obs_events_rules() -> None:
    assert ok("OBS", events=["Put", "s3:ObjectCreated:Put", "Delete"])["events"] == [
        "s3:ObjectCreated:Put",
        "s3:ObjectRemoved:Delete",
    ]
    assert without("OBS", "events") == "event_data.events: is required"
    every = ", ".join(
        [
            "s3:ObjectCreated:*",
            "s3:ObjectCreated:Put",
            "s3:ObjectCreated:Post",
            "s3:ObjectCreated:Copy",
            "s3:ObjectCreated:CompleteMultipartUpload",
            "s3:ObjectRemoved:*",
            "s3:ObjectRemoved:Delete",
            "s3:ObjectRemoved:DeleteMarkerCreated",
        ]
    )
    assert rejected("OBS", events=[]) == f"event_data.events: must list at least one event: {every}"
    assert rejected("OBS", events=["Put", "s3:ObjectRestore:Post"]) == (
        f"event_data.events[1]: unsupported OBS event: expected one of {every} (got 's3:ObjectRestore:Post')"
    )
    parsed = parse_event_data("OBS", {**VALID["OBS"], "prefix": "in/", "suffix": ".png"})
    assert isinstance(parsed, OBSEventData)
    assert (parsed.prefix, parsed.suffix) == ("in/", ".png")


@pytest.mark.parametrize("bucket", ["abc", "a" * 63, "my.bucket-01", "1bucket"])
def test_obs_bucket_accepted(bucket: str) -> None:
    assert ok("OBS", bucket=bucket)["bucket"] == bucket


@pytest.mark.parametrize(
    ("bucket", "problem"),
    [
        ("ab", "bucket name must be 3-63 characters"),
        ("a" * 64, "bucket name must be 3-63 characters"),
        ("My-Bucket", "bucket name may contain only lowercase letters, digits, '.' and '-'"),
        ("my_bucket", "bucket name may contain only lowercase letters, digits, '.' and '-'"),
        ("-bucket", "bucket name must start and end with a lowercase letter or digit"),
        ("bucket.", "bucket name must start and end with a lowercase letter or digit"),
        ("my..bucket", "bucket name must not contain '..', '.-' or '-.'"),
        ("my.-bucket", "bucket name must not contain '..', '.-' or '-.'"),
        ("192.168.1.1", "bucket name must not be formatted as an IP address"),
    ],
)
def test_obs_bucket_rejected(bucket: str, problem: str) -> None:
    assert rejected("OBS", bucket=bucket) == f"event_data.bucket: {problem} (got {bucket!r})"


def test_smn_topic_urn() -> None:
    assert without("SMN", "topic_urn") == "event_data.topic_urn: is required"
    for bad in (
        "urn:smn:{region}:{project_id}:Failed_times",
        "urn:smn:eu-de:proj",
        "urn:fss:eu-de:proj:topic",
        "urn:smn:eu-de:proj:top ic",
    ):
        assert rejected("SMN", topic_urn=bad) == (
            f"event_data.topic_urn: must be 'urn:smn:<region>:<project_id>:<topic_name>' (got {bad!r})"
        )
    assert ok("SMN", subscription_status="Confirmed")["subscription_status"] == "Confirmed"


def test_eventgrid_key_encode_alias() -> None:
    data = {
        "channel_id": "c",
        "source_name": "HC.OBS.DWR",
        "trigger_name": "obs",
        "agency": "fg_agency",
        "bucket": "b-1",
        "event_types": ["OBS:DWR:ObjectCreated:PUT", "OBS:DWR:ObjectCreated:POST"],
        "Key_encode": True,
    }
    parsed = parse_event_data("EVENTGRID", data)
    assert isinstance(parsed, EventGridEventData)
    assert parsed.key_encode is True
    assert parsed.dump() == data
    assert parse_event_data("EVENTGRID", {"key_encode": False}).dump() == {"Key_encode": False}
    assert error("EVENTGRID", {"Key_encode": "yes"}) == (
        "event_data.Key_encode: Input should be a valid boolean (got 'yes')"
    )


def test_iotda_keeps_unknown_keys_and_fills_defaults() -> None:
    data = {"topics": ["$oc/devices/+/sys/messages/up"], "rule": {"resource": "device.message"}}
    assert parse_event_data("IOTDA", data).dump() == {**data, "qos": 1, "mqtt_version": "5", "session_expiry_s": 86400}


def test_iotda_needs_topics() -> None:
    with pytest.raises(FSSError, match=r"event_data\.topics"):
        parse_event_data("IOTDA", {"instance_id": "x"})


# ---------------------------------------------------------------------------- status rules


def test_trigger_status_normaliser() -> None:
    assert TriggerStatus("DISABLE") is TriggerStatus.DISABLED
    assert TriggerStatus("disabled") is TriggerStatus.DISABLED
    assert TriggerStatus(" active ") is TriggerStatus.ACTIVE
    with pytest.raises(ValueError):
        TriggerStatus("PAUSED")


def test_cannot_disable_set() -> None:
    assert frozenset({"SMN", "APIG", "DEDICATEDGATEWAY", "APIC", "OBS"}) == CANNOT_DISABLE


@pytest.mark.parametrize("kind", list(TriggerType))
def test_initial_status_defaults(kind: TriggerType) -> None:
    expected = "DISABLED" if kind in ("OPENSOURCEKAFKA", "DDS", "KAFKA") else "ACTIVE"
    assert initial_status(kind, None) == expected
    assert initial_status(kind.value.lower(), "") == expected
    assert initial_status(kind, "ACTIVE") is TriggerStatus.ACTIVE


@pytest.mark.parametrize("kind", sorted(set(TriggerType) - CANNOT_DISABLE))
def test_initial_status_disabled_allowed(kind: TriggerType) -> None:
    assert initial_status(kind, "DISABLED") is TriggerStatus.DISABLED
    assert initial_status(kind, "DISABLE") is TriggerStatus.DISABLED


@pytest.mark.parametrize("kind", sorted(CANNOT_DISABLE))
@pytest.mark.parametrize("requested", ["DISABLED", "DISABLE", "disabled"])
def test_initial_status_cannot_disable(kind: TriggerType, requested: str) -> None:
    with pytest.raises(FSSError) as info:
        initial_status(kind, requested)
    assert (info.value.status, info.value.code) == (400, "FSS.0400")
    assert info.value.message == (
        f"trigger_status: {kind} triggers cannot be disabled, only deleted (got {requested!r})"
    )
    with pytest.raises(FSSError):
        check_status(kind, requested)


def test_initial_status_rejects_unknown_values() -> None:
    with pytest.raises(FSSError) as info:
        initial_status("TIMER", "PAUSED")
    assert info.value.message == "trigger_status: must be ACTIVE or DISABLED (got 'PAUSED')"
    with pytest.raises(FSSError) as info:
        initial_status("NOPE", None)
    assert info.value.message.startswith("unsupported trigger_type_code 'NOPE': expected one of TIMER, APIG")


# ---------------------------------------------------------------------------- secrets


def test_secret_fields() -> None:
    assert set(SECRET_FIELDS) == set(TriggerType)
    assert SECRET_FIELDS[TriggerType.DDS] == {"db_password"}
    assert SECRET_FIELDS[TriggerType.GAUSSMONGO] == {"db_password"}
    assert SECRET_FIELDS[TriggerType.KAFKA] == {"kafka_password"}
    assert SECRET_FIELDS[TriggerType.OPENSOURCEKAFKA] == {"kafka_password"}
    assert SECRET_FIELDS[TriggerType.RABBITMQ] == {"access_password"}
    assert SECRET_FIELDS[TriggerType.ROCKETMQ] == {"secret_key"}
    assert SECRET_FIELDS[TriggerType.TIMER] == frozenset()


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("DDS", "db_password"),
        ("GAUSSMONGO", "db_password"),
        ("KAFKA", "kafka_password"),
        ("OPENSOURCEKAFKA", "kafka_password"),
        ("RABBITMQ", "access_password"),
        ("ROCKETMQ", "secret_key"),
    ],
)
def test_redaction_per_type(kind: str, field: str) -> None:
    data = {**VALID[kind], field: "s3cret", "note": "keep"}
    redacted = redact_event_data(kind, data)
    assert redacted[field] == REDACTED == "******"
    assert redacted["note"] == "keep"
    assert data[field] == "s3cret"  # the input is not modified


def test_redaction_details() -> None:
    data = {
        "db_password": "",
        "kafka_password": None,
        "connection_uri": "mongodb://rwuser:p%40ss@10.0.0.5:8635,10.0.0.6:8635/db?authSource=admin",
        "nested": {"password": "x", "list": [{"secret_key": "y"}]},
        "db_user": "rwuser",
    }
    assert redact_event_data("DDS", data) == {
        "db_password": "",
        "kafka_password": None,
        "connection_uri": "mongodb://rwuser:******@10.0.0.5:8635,10.0.0.6:8635/db?authSource=admin",
        "nested": {"password": REDACTED, "list": [{"secret_key": REDACTED}]},
        "db_user": "rwuser",
    }
    # A documented secret under a type that does not document it is masked anyway.
    assert redact_event_data("TIMER", {"name": "t", "kafka_password": "p"}) == {
        "name": "t",
        "kafka_password": REDACTED,
    }
    assert redact_event_data("UNKNOWN", {"access_password": "p"}) == {"access_password": REDACTED}
    uri = "mongodb://10.0.0.5:8635/db"
    assert redact_event_data("DDS", {"connection_uri": uri}) == {"connection_uri": uri}
