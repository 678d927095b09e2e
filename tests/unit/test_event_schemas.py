"""Golden tests for the trigger event models (``schemas/events``).

``tests/fixtures/golden`` holds every JSON sample of the contract's §1, copied verbatim:

* ``<type>...json``: a sample as published (HW template, OTC sample, real capture, ...);
* ``<sample>_as_hw.json``: what Triggerbus emits for a sample that is not already in the emitted
  form (e.g. Kafka gets ``instance_id`` in both places, DDS strings become objects);
* ``*_decoded*.json``: decoded ``lts.data`` payloads; ``*_built.json``: expected builder output;
* ``async_destination_*.json``: §1.16 samples, kept for the async layer (not an event model).

Comparisons use canonical JSON text so ``24`` vs ``24.0`` or ``1`` vs ``true`` would be caught.
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from schemas.base import FGModel
from schemas.events import (
    EVENT_MODELS,
    ApigEvent,
    APIGResponse,
    CTSEvent,
    DDSEvent,
    DISEvent,
    EventGridEvent,
    GaussMongoEvent,
    IoTDAEvent,
    KafkaEvent,
    LTSEvent,
    MongoChange,
    OBSCloudEvent,
    OBSEvent,
    RabbitMQEvent,
    RocketMQEvent,
    SMNEvent,
    TimerEvent,
    encode_object_key,
)

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


def golden(name: str) -> Any:
    return json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def assert_json_equal(actual: Any, expected: Any) -> None:
    assert canonical(actual) == canonical(expected)


# Samples already in the emitted (HW) form: parse -> dump must give them back unchanged.
HW_FORM: list[tuple[str, type[FGModel]]] = [
    ("timer", TimerEvent),
    ("timer_hw_api_model", TimerEvent),
    ("apig", ApigEvent),
    ("apig_seed_practices", ApigEvent),
    ("obs_classic_template", OBSEvent),
    ("obs_classic_eu_de", OBSEvent),
    ("obs_eventgrid_cloudevent", OBSCloudEvent),
    ("obs_eventgrid_cloudevent", EventGridEvent),
    ("smn_hw", SMNEvent),
    ("smn_otc", SMNEvent),
    # No console-only top-level keys in this real 2017 event; none are invented.
    ("smn_obs_notification_2017", SMNEvent),
    ("dis", DISEvent),
    ("rabbitmq_otc", RabbitMQEvent),
    ("rocketmq_otc", RocketMQEvent),
    ("dds_hw", DDSEvent),
    ("gaussmongo_hw", GaussMongoEvent),
    ("lts_hw", LTSEvent),
    ("cts_otc", CTSEvent),
    ("cts_otc_real_capture", CTSEvent),
    ("iotda_forwarding_3p", IoTDAEvent),
    ("iotda_seed_practices", IoTDAEvent),
]

# Variants: parse succeeds and dump equals the expected HW-form golden.
VARIANTS: list[tuple[str, str, type[FGModel]]] = [
    ("kafka_hw_template", "kafka_hw_template_as_hw", KafkaEvent),
    ("kafka_otc", "kafka_otc_as_hw", KafkaEvent),
    ("kafka_opensource_otc", "kafka_opensource_otc_as_hw", KafkaEvent),
    ("smn_smn_side_doc", "smn_smn_side_doc_as_hw", SMNEvent),
    ("dds_otc", "dds_otc_as_hw", DDSEvent),
    ("lts_otc", "lts_otc_as_hw", LTSEvent),
    ("cts_hw_template", "cts_hw_template_as_hw", CTSEvent),
]


@pytest.mark.parametrize(("name", "model"), HW_FORM, ids=[f"{n}-{m.__name__}" for n, m in HW_FORM])
def test_hw_form_round_trips_exactly(name: str, model: type[FGModel]) -> None:
    sample = golden(name)
    assert_json_equal(model.model_validate(sample).dump(), sample)


@pytest.mark.parametrize(("name", "expected", "model"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_variant_is_emitted_in_hw_form(name: str, expected: str, model: type[FGModel]) -> None:
    emitted = model.model_validate(golden(name)).dump()
    assert_json_equal(emitted, golden(expected))
    # The emitted form is a fixed point.
    assert_json_equal(model.model_validate(emitted).dump(), emitted)


def test_every_golden_file_is_used_or_documented() -> None:
    used = {n for n, _ in HW_FORM} | {n for v in VARIANTS for n in v[:2]}
    used |= {
        "apig_response_template_otc",
        "apig_built",
        "gaussmongo_built",
        "lts_hw_decoded",
        "lts_otc_decoded",
        "lts_otc_decoded_as_hw",
        "async_destination_hw",
        "async_destination_otc_real",
    }
    on_disk = {p.stem for p in GOLDEN.glob("*.json")}
    assert on_disk == used
    for path in GOLDEN.glob("*.json"):
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path.name


def test_event_models_cover_every_trigger_type() -> None:
    from schemas.triggers import TriggerType

    assert set(EVENT_MODELS) == {t.value for t in TriggerType} - {"DMS"}


# ---------------------------------------------------------------------------- TIMER


def test_timer_build_matches_sample() -> None:
    built = TimerEvent.build("Timer_001", "2018-06-01T08:30:00+08:00", "User Event")
    assert_json_equal(built.dump(), golden("timer"))
    moment = datetime(2018, 6, 1, 8, 30, tzinfo=timezone(timedelta(hours=8)))
    assert_json_equal(TimerEvent.build("Timer_001", moment, "User Event").dump(), golden("timer"))


def test_timer_build_without_user_event_keeps_the_key() -> None:
    assert TimerEvent.build("t", "2018-06-01T00:00:00+00:00").dump()["user_event"] == ""
    with pytest.raises(ValueError, match="timezone-aware"):
        TimerEvent.build("t", datetime(2018, 6, 1))


# ---------------------------------------------------------------------------- APIG


def test_apig_build_matches_golden() -> None:
    built = ApigEvent.build(
        method="post",
        path="/users/42",
        headers=[
            ("Content-Type", "application/json"),
            ("X-Forwarded-For", "103.218.216.98"),
            ("Accept", "text/html"),
            ("accept", "application/json"),
        ],
        query=[("responseType", "html"), ("page", "1"), ("page", "2")],
        path_params={"id": "42"},
        body_bytes=b'{"test":"body"}',
        api_id="bc1dcffd-aa35-474d-897c-d53425a4c08e",
        request_id="11cdcdcf33949dc6d722640a13091c77",
        stage="RELEASE",
        source_ip="103.218.216.98",
    )
    assert_json_equal(built.dump(), golden("apig_built"))
    assert built.body_bytes() == b'{"test":"body"}'


def test_apig_input_leniency() -> None:
    sample = golden("apig")
    sample["headers"] = {"X-Real-IP": "1.2.3.4"}
    sample["isBase64Encoded"] = "false"
    sample["queryStringParameters"] = {"a": ["1", "2"]}
    event = ApigEvent.model_validate(sample)
    assert event.headers == {"x-real-ip": "1.2.3.4"}
    assert event.is_base64_encoded is False
    assert event.query_string_parameters == {"a": "2"}
    assert event.body_bytes() == b'{"test":"body"}'


def test_apig_response_accepts_documented_and_string_forms() -> None:
    hint = {
        "statusCode": 200,
        "isBase64Encoded": False,
        "headers": {"Content-Type": "application/json;charset=UTF-8"},
        "body": "hello world",
    }
    assert APIGResponse.from_function_result(hint).dump() == hint
    loose = APIGResponse.from_function_result(
        {"statusCode": "201", "isBase64Encoded": "TRUE", "body": "aGk=", "headers": {"Content-Length": 2}}
    )
    assert loose.dump() == {
        "statusCode": 201,
        "headers": {"Content-Length": "2"},
        "body": "aGk=",
        "isBase64Encoded": True,
    }
    assert loose.body_bytes() == b"hi"
    assert (loose.statusCode, loose.isBase64Encoded) == (201, True)
    minimal = APIGResponse.from_function_result({"statusCode": 204})
    assert minimal.dump() == {"statusCode": 204, "headers": {}, "body": "", "isBase64Encoded": False}


PREFIX = "invalid APIG function result: "
SHAPE = "expected a JSON object with statusCode, headers, body and isBase64Encoded, got "


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ("hello", SHAPE + "a string"),
        (None, SHAPE + "null"),
        ([1], SHAPE + "an array"),
        (42, SHAPE + "a number"),
        ({}, "statusCode: is required"),
        ({"statusCode": "abc"}, "statusCode: must be an integer HTTP status code (got 'abc')"),
        ({"statusCode": True}, "statusCode: must be an integer HTTP status code (got True)"),
        ({"statusCode": 99}, "statusCode: must be an HTTP status code between 100 and 599 (got 99)"),
        (
            {"statusCode": 200, "body": {"a": 1}},
            "body: must be a string, not an object (serialise objects with JSON)",
        ),
        ({"statusCode": 200, "headers": {"a": ["x"]}}, "headers.a: Input should be a valid string"),
        (
            {"statusCode": 200, "isBase64Encoded": "yes"},
            "isBase64Encoded: must be a boolean or 'true'/'false' (got 'yes')",
        ),
        (
            {"statusCode": 200, "isBase64Encoded": True, "body": "not base64!"},
            "body is not valid Base64 although isBase64Encoded is true",
        ),
        (
            golden("apig_response_template_otc"),
            "statusCode: must be an integer HTTP status code (got 'httpStatusCode'); "
            "isBase64Encoded: must be a boolean or 'true'/'false' (got 'true|false')",
        ),
    ],
)
def test_apig_response_rejections(result: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        APIGResponse.from_function_result(result)
    assert str(info.value) == PREFIX + message


# ---------------------------------------------------------------------------- OBS


def test_obs_build_matches_real_capture() -> None:
    built = OBSEvent.build(
        region="eu-de",
        bucket="fg-sample-obs-go-runtime-sdk",
        key="test2.txt",
        event_name="s3:ObjectCreated:Put",
        event_time=datetime(2024, 12, 2, 9, 49, 37, 939000, tzinfo=UTC),
        size=5,
        etag="5d41402abc4b2a76b9719d911017c592",
        version_id="null",
        sequencer="0000000019386C6871FB059ED0000000",
        configuration_id="8ba3f66e-aa19-459d-8f4d-337998c50dc9",
        principal_id="00a4a44afa9f43ceb520c82166407d58",
        owner_id="65b49ad6e14149e0b01abde940685697",
        source_ip="172.27.48.44",
        request_id="4e788bb2744a49a1ab04148b47bf51dc",
        id_2="s7A0rE7V5QL/mQEYrVUdcFPrBcb1wrieHbjrAs4Gy9J09f2uLOC9deJSIhmXKGET",
    )
    assert_json_equal(built.dump(), golden("obs_classic_eu_de"))


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("test2.txt", "test2.txt"),
        ("my photo.jpg", "my+photo.jpg"),
        (
            "trace-cloud-source/cts-trace-map-250728-114729.png",
            "trace-cloud-source%2Fcts-trace-map-250728-114729.png",
        ),
        ("a+b=c&d.txt", "a%2Bb%3Dc%26d.txt"),
        ("目录/文件 1.txt", "%E7%9B%AE%E5%BD%95%2F%E6%96%87%E4%BB%B6+1.txt"),
        ("~tilde_-.", "~tilde_-."),
    ],
)
def test_obs_key_url_encoding(key: str, encoded: str) -> None:
    assert encode_object_key(key) == encoded
    assert unquote_plus(encoded) == key
    event = OBSEvent.build(
        region="r", bucket="b-1", key=key, event_name="ObjectRemoved:Delete", event_time=datetime.now(UTC)
    )
    obj = event.dump()["Records"][0]["s3"]["object"]
    assert obj["key"] == encoded
    assert "eTag" not in obj and "size" not in obj  # delete events carry neither
    assert event.dump()["Records"][0]["eventName"] == "ObjectRemoved:Delete"


def test_obs_record_in_eventgrid_shape_is_emitted_classic() -> None:
    record = golden("obs_eventgrid_cloudevent")["data"]
    event = OBSEvent.model_validate({"Records": [record]}).dump()["Records"][0]
    assert event["eventSource"] == "aws:s3"
    assert event["awsRegion"] == "cn-east-3"
    assert event["userIdentity"] == {"principalId": "28a7528d52e5417cb9a0ac2dbb59ea05"}
    assert event["responseElements"]["x-amz-request-id"] == "b27e6cbff1f6865c83111f130a982f56"
    assert event["s3"]["bucket"]["name"] == "developer-test-example"
    assert event["s3"]["bucket"]["ownerIdentity"] == {"PrincipalId": "28a7528d52e5417cb9a0ac2dbb59ea05"}
    assert event["s3"]["object"]["key"] == "test.tar"
    assert event["s3"]["object"]["size"] == 112


def test_obs_cloudevent_accepts_classic_record_as_data() -> None:
    envelope = golden("obs_eventgrid_cloudevent")
    envelope["data"] = golden("obs_classic_eu_de")["Records"][0]
    data = OBSCloudEvent.model_validate(envelope).dump()["data"]
    assert data["obs"]["bucket"]["name"] == "fg-sample-obs-go-runtime-sdk"
    assert data["obs"]["object"]["key"] == "test2.txt"
    assert data["eventRegion"] == "eu-de"
    assert data["userIdentity"] == {"ID": "00a4a44afa9f43ceb520c82166407d58"}
    assert "s3" not in data


# ---------------------------------------------------------------------------- EVENTGRID


def test_eventgrid_build_and_optional_attributes() -> None:
    moment = datetime(2026, 9, 30, 3, 24, 43, 167931, tzinfo=UTC)
    built = EventGridEvent.build(
        source="HC.ROCKETMQ", type="ROCKETMQ:CloudTrace:Message", data={"k": "v"}, id="abc", time=moment
    )
    assert built.dump() == {
        "specversion": "1.0",
        "id": "abc",
        "source": "HC.ROCKETMQ",
        "type": "ROCKETMQ:CloudTrace:Message",
        "time": "2026-09-30T03:24:43.167931Z",
        "datacontenttype": "application/json",
        "dataschema": "",
        "data": {"k": "v"},
    }
    parsed = EventGridEvent.model_validate({"id": "1", "source": "s", "type": "t", "ttl": 4000, "x-ext": 1})
    assert parsed.dump() == {
        "specversion": "1.0",
        "id": "1",
        "source": "s",
        "type": "t",
        "data": None,
        "ttl": "4000",
    }


# ---------------------------------------------------------------------------- SMN


def test_smn_build_matches_console_template() -> None:
    built = SMNEvent.build(
        topic_urn="topicUrn",
        message="this is smn message content",
        message_id="a51671f77d4a479cacb09e2cd591a983",
        subscription_urn="functionUrn",
        function_name="test",
        request_id="7c307f6a-cf68-4e65-8be0-4c77405a1b2c",
        published_at=datetime(2018, 1, 9, 15, 11, 40, tzinfo=ZoneInfo("Asia/Shanghai")),
        subject="this is smn message subject",
    )
    assert_json_equal(built.dump(), golden("smn_otc"))


@pytest.mark.parametrize(
    ("attributes", "emitted"),
    [(None, None), ("None", None), ("", None), ({"k": "v"}, {"k": "v"}), ('{"k": "v"}', {"k": "v"})],
)
def test_smn_message_attributes_forms(attributes: object, emitted: object) -> None:
    sample = golden("smn_hw")
    sample["record"][0]["smn"]["message_attributes"] = attributes
    assert SMNEvent.model_validate(sample).dump()["record"][0]["smn"]["message_attributes"] == emitted


# ---------------------------------------------------------------------------- DIS


def test_dis_build_matches_template() -> None:
    cursor = DISEvent.partition_cursor("dis-swtest", "shardId-0000000000", "TRIM_HORIZON", "4", 1509606392191)
    built = DISEvent.build(
        stream_name="dis-swtest",
        shard_id="shardId-0000000000",
        records=[
            ("shardId_0000000000", b"welcome", 0),
            ("shardId_0000000000", b"using", 1),
            ("shardId_0000000000", b"FunctionStage", "2"),
            ("shardId_0000000000", b"service", 3),
        ],
        next_partition_cursor=cursor,
    )
    assert_json_equal(built.dump(), golden("dis"))
    assert [r.data_bytes() for r in built.message.records][-1] == b"service"


def test_dis_sequence_number_int_is_emitted_as_string() -> None:
    sample = golden("dis")
    sample["Message"]["records"][0]["sequence_number"] = 0
    assert DISEvent.model_validate(sample).dump() == golden("dis")


# ---------------------------------------------------------------------------- KAFKA / RABBITMQ / ROCKETMQ


def test_kafka_build_emits_instance_id_in_both_places() -> None:
    messages = [f"kafka message{i}" for i in range(1, 6)]
    built = KafkaEvent.build("{region}", "81335d56-b9fe-4679-ba95-7030949cc76b", [("topic-test", messages)], 1576737962)
    assert_json_equal(built.dump(), golden("kafka_otc_as_hw"))
    assert_json_equal(
        KafkaEvent.build(
            "xx-xxxx-1", "81335d56-b9fe-4679-ba95-7030949cc76b", [("topic-test", messages)], 1576737962
        ).dump(),
        golden("kafka_hw_template_as_hw"),
    )


def test_kafka_build_several_topics() -> None:
    built = KafkaEvent.build("r", "i", [("a", ["1"]), ("b", ["2", "3"])], 10).dump()
    assert [(r["topic_id"], r["messages"], r["instance_id"]) for r in built["records"]] == [
        ("a", ["1"], "i"),
        ("b", ["2", "3"], "i"),
    ]


@pytest.mark.parametrize(
    ("event_time", "expected"),
    [(1576737962, 1576737962), ("1576737962", 1576737962), ("2019-12-19T06:46:02Z", 1576737962)],
)
def test_kafka_event_time_forms(event_time: object, expected: int) -> None:
    sample = golden("kafka_otc")
    sample["event_time"] = event_time
    assert KafkaEvent.model_validate(sample).event_time == expected


def test_kafka_rejects_bad_event_time_and_missing_instance_id() -> None:
    sample = golden("kafka_otc")
    sample["event_time"] = True
    with pytest.raises(ValidationError, match="event_time must be epoch seconds"):
        KafkaEvent.model_validate(sample)
    sample = golden("kafka_otc")
    del sample["instance_id"]
    with pytest.raises(ValidationError, match="instance_id is required, top-level or inside the records"):
        KafkaEvent.model_validate(sample)


def test_opensource_kafka_trigger_type_is_emitted_as_kafka() -> None:
    sample = golden("kafka_opensource_otc")
    sample["trigger_type"] = "OPENSOURCEKAFKA"
    assert KafkaEvent.model_validate(sample).dump()["trigger_type"] == "KAFKA"


def test_rabbitmq_build_and_leniency() -> None:
    messages = [f"rabbitmq message{i}" for i in range(1, 6)]
    built = RabbitMQEvent.build("region", "81335d56-b9fe-4679-ba95-7030949cc76b", "topic", messages, 1576737962)
    assert_json_equal(built.dump(), golden("rabbitmq_otc"))
    sample = golden("rabbitmq_otc")
    sample["event_time"] = "1576737962"
    sample["instance_id"] = sample["records"][0].pop("instance_id")
    assert_json_equal(RabbitMQEvent.model_validate(sample).dump(), golden("rabbitmq_otc"))


def test_rocketmq_build_matches_sample() -> None:
    messages = [f"rocketmq message{i}" for i in range(1, 6)]
    built = RocketMQEvent.build("region", "4140112c-85fc-40b8-bf7f-1ced2691a0a6", [("topic", messages)], 1714040037)
    assert_json_equal(built.dump(), golden("rocketmq_otc"))


# ---------------------------------------------------------------------------- DDS / GAUSSMONGO

DDS_TOKEN = golden("dds_hw")["records"][0]["dds"]["token"]
GM_TOKEN = golden("gaussmongo_hw")["vernier"]


def test_dds_build_matches_template() -> None:
    change = MongoChange(
        event_name="insert",
        token=DDS_TOKEN,
        full_document={
            "_id": {"$oid": "5d8c2f8e5beccb6cf5370d6a"},
            "name": "dds",
            "age": {"$numberDouble": "52.0"},
        },
        ns={"db": "functiongraph", "coll": "person"},
        size_bytes=100,
    )
    built = DDSEvent.build("xx-xxxxx-1", "e6065860-f7b8-4cca-80bd-24ef2a3bb748", [change])
    assert_json_equal(built.dump(), golden("dds_hw"))


def test_dds_go_struct_mixed_form_and_quoted_name() -> None:
    sample = golden("dds_hw")
    body = sample["records"][0]["dds"]
    body["token"] = json.dumps(body["token"])  # Go struct: token/full_document strings, ns object
    body["full_document"] = json.dumps(body["full_document"])
    body["size_bytes"] = 100
    sample["records"][0]["event_name"] = '"insert"'
    assert_json_equal(DDSEvent.model_validate(sample).dump(), golden("dds_hw"))


def test_dds_rejects_non_json_token() -> None:
    sample = golden("dds_hw")
    sample["records"][0]["dds"]["token"] = "not json"
    with pytest.raises(ValidationError, match="token must be a JSON object or a JSON-encoded object string"):
        DDSEvent.model_validate(sample)


def test_mongo_change_from_change_stream() -> None:
    doc = {
        "_id": DDS_TOKEN,
        "operationType": "delete",
        "ns": {"db": "functiongraph", "coll": "person"},
        "documentKey": {"_id": {"$oid": "5d8c2f8e5beccb6cf5370d6a"}},
    }
    change = MongoChange.from_change_stream(doc)
    assert change.event_name == "delete"
    assert change.full_document is None
    assert change.size_bytes == len(json.dumps(doc).encode())
    record = DDSEvent.build("r", "t", [change]).dump()["records"][0]
    assert record["dds"]["full_document"] is None
    assert record["dds"]["token"] == DDS_TOKEN


def test_gaussmongo_build_with_template_strings_matches_template() -> None:
    change = MongoChange(
        event_name="insert",
        token=GM_TOKEN,
        full_document='{"_id": {"$oid":"5f61de944778db5fcded3f87"},"zhangsan": "zhangsan"}',
        ns='{"db": "zhangsan","coll": "zhangsan"}',
        size_bytes=100,
    )
    built = GaussMongoEvent.build("cn-north-1", "51153d19-2b7d-402c-9a79-757163258a36", [change])
    assert_json_equal(built.dump(), golden("gaussmongo_hw"))
    assert built.records[0].operation == "insert"


def test_gaussmongo_build_from_objects() -> None:
    change = MongoChange(
        event_name="insert",
        token=json.loads(GM_TOKEN),
        full_document={"_id": {"$oid": "5f61de944778db5fcded3f87"}, "zhangsan": "zhangsan"},
        ns={"db": "zhangsan", "coll": "zhangsan"},
        size_bytes=100,
    )
    built = GaussMongoEvent.build("cn-north-1", "51153d19-2b7d-402c-9a79-757163258a36", [change])
    assert_json_equal(built.dump(), golden("gaussmongo_built"))


def test_gaussmongo_input_leniency() -> None:
    """Bare event_name, object-valued fields and a missing vernier still yield the HW form."""
    sample = golden("gaussmongo_built")
    record = sample["records"][0]
    record["event_name"] = "insert"
    for key in ("full_document", "ns", "token"):
        record["gauss_mongo"][key] = json.loads(record["gauss_mongo"][key])
    record["gauss_mongo"]["size_bytes"] = 100
    del sample["vernier"]
    assert_json_equal(GaussMongoEvent.model_validate(sample).dump(), golden("gaussmongo_built"))


# ---------------------------------------------------------------------------- LTS


def test_lts_decoded_payloads() -> None:
    assert_json_equal(LTSEvent.model_validate(golden("lts_hw")).decoded().dump(), golden("lts_hw_decoded"))
    assert_json_equal(LTSEvent.model_validate(golden("lts_otc")).decoded().dump(), golden("lts_otc_decoded_as_hw"))


def test_lts_build_and_base64_round_trip() -> None:
    payload = golden("lts_otc_decoded_as_hw")
    built = LTSEvent.build(payload["log_group_id"], payload["log_topic_id"], payload["owner"], payload["logs"])
    assert_json_equal(built.dump(), golden("lts_otc_as_hw"))
    assert_json_equal(built.decoded().dump(), payload)
    encoded = LTSEvent.encode(golden("lts_otc_decoded"))  # logs as a string -> array
    assert json.loads(base64.b64decode(encoded)) == payload
    assert LTSEvent.encode(payload) == golden("lts_otc_as_hw")["lts"]["data"]


def test_lts_non_ascii_and_gzip_input() -> None:
    payload: dict[str, Any] = {
        "logs": [{"message": "日志 ✓", "time": 1}],
        "owner": "o",
        "log_group_id": "g",
        "log_topic_id": "t",
    }
    event = LTSEvent.build("g", "t", "o", payload["logs"])
    assert event.decoded().logs == payload["logs"]
    zipped = base64.b64encode(gzip.compress(json.dumps(payload).encode())).decode()
    assert LTSEvent.model_validate({"lts": {"data": zipped}}).dump() == event.dump()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("%%%", "lts.data must be Base64"),
        (base64.b64encode(b"not json").decode(), "lts.data must be Base64 of a JSON object"),
        (base64.b64encode(b'{"owner": "x"}').decode(), "lts.data must decode to a JSON object with 'logs'"),
        (base64.b64encode(b'{"logs": {"a": 1}}').decode(), "lts.data 'logs' must be an array"),
    ],
)
def test_lts_rejects_bad_data(data: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LTSEvent.model_validate({"lts": {"data": data}})


# ---------------------------------------------------------------------------- CTS


def test_cts_build_matches_sample() -> None:
    built = CTSEvent.build(
        time_ms=1529996047000,
        user={
            "name": "userName",
            "id": "5b726c4fbfd84821ba866bafaaf56aax",
            "domain": {"name": "domainName", "id": "b2b3853af40448fcb9e40dxj89505ba"},
        },
        service_type="vpc",
        resource_type="VPC",
        resource_name="workflow-2be1",
        resource_id="urn:fgs:{region}:2d1d891d93054bbaa69b9e866c0971ac:graph:workflow-2be1",
        trace_name="deleteGraph",
        trace_type="ConsoleAction",
        trace_id="69be64a7-0233-11e8-82e4-e5d37911193e",
        code=204,
    )
    assert_json_equal(built.dump(), golden("cts_otc"))


def test_cts_time_forms_and_extras() -> None:
    sample = golden("cts_otc_real_capture")
    sample["cts"]["time"] = "1765788999507"
    sample["cts"]["new_v4_key"] = {"kept": True}
    dumped = CTSEvent.model_validate(sample).dump()
    assert dumped["cts"]["time"] == 1765788999507
    assert dumped["cts"]["new_v4_key"] == {"kept": True}
    assert dumped["cts"]["read_only"] is False
    sample["cts"]["time"] = "yesterday"
    with pytest.raises(ValidationError, match="epoch milliseconds"):
        CTSEvent.model_validate(sample)


# ---------------------------------------------------------------------------- IoTDA


def test_iotda_build_matches_forwarding_sample() -> None:
    sample = golden("iotda_forwarding_3p")
    header = sample["notify_data"]["header"]
    built = IoTDAEvent.build(
        resource="device.property",
        event="report",
        body=sample["notify_data"]["body"],
        event_time=datetime(2026, 7, 3, 18, 35, 19, 480000, tzinfo=UTC),
        request_id="65fb87b2-70dd-4f34-adae-c5e668fd9b2e",
        **{k: header[k] for k in ("app_id", "device_id", "node_id", "product_id", "gateway_id")},
    )
    assert_json_equal(built.dump(), sample)


def test_iotda_build_with_tags_without_ms() -> None:
    sample = golden("iotda_seed_practices")
    header = sample["notify_data"]["header"]
    built = IoTDAEvent.build(
        resource="device.message",
        event="report",
        body=sample["notify_data"]["body"],
        event_time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        tags=[("testTagName", "testTagValue")],
        with_ms=False,
        **{k: header[k] for k in ("app_id", "device_id", "node_id", "product_id", "gateway_id")},
    )
    assert_json_equal(built.dump(), {**sample, "event_time": "20240102T030405Z"})
