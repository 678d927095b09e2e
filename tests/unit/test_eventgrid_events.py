"""EVENTGRID: CloudEvents validation (structured and binary), OBS record -> CloudEvent, matching."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from connectors.base import TriggerSpec
from connectors.eventgrid import Subscription, obs_event_type, obs_record_to_cloudevent, request_id_for
from schemas.events.eventgrid import CloudEventError, binary_cloudevent, check_rfc3339, validate_cloudevent
from schemas.events.obs import OBSCloudEvent
from tests.unit.test_event_schemas import assert_json_equal, golden

MINIMAL = {"specversion": "1.0", "id": "e-1", "source": "my/app", "type": "com.example.created"}


def s3_record_of_the_real_sample() -> dict[str, Any]:
    """The contract §1.3b OBS event's record, as an S3-style ``Records[]`` item carries it."""
    return {
        "eventVersion": "2.0",
        "eventSource": "aws:s3",
        "awsRegion": "cn-east-3",
        "eventTime": "2026-09-30T11:24:42.533Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "28a7528d52e5417cb9a0ac2dbb59ea05"},
        "requestParameters": {"sourceIPAddress": "10.147.244.52"},
        "responseElements": {"x-amz-request-id": "b27e6cbff1f6865c83111f130a982f56", "x-amz-id-2": ""},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "5d1b530b-be59-4fdc-adf7-f808cf06f8c9",
            "bucket": {
                "name": "developer-test-example",
                "ownerIdentity": {"PrincipalId": "28a7528d52e5417cb9a0ac2dbb59ea05"},
                "arn": "",
            },
            "object": {
                "key": "test.tar",
                "eTag": "6f9433fb110632de417e2e697dcb1b5f",
                "size": 112,
                "versionId": "G00101A0F057D2A5FFFFCB8700806592null",
                "sequencer": "1",
            },
        },
    }


# ---------------------------------------------------------------------------- OBS -> CloudEvent


def test_an_s3_record_becomes_the_real_obs_eventgrid_event() -> None:
    event = obs_record_to_cloudevent(s3_record_of_the_real_sample(), time="2026-09-30T03:24:43.167931174Z")
    assert_json_equal(event, golden("obs_eventgrid_cloudevent"))


def test_an_obs_shaped_record_converts_to_the_same_event() -> None:
    sample = golden("obs_eventgrid_cloudevent")
    event = obs_record_to_cloudevent(sample["data"], time=sample["time"])
    assert_json_equal(event, sample)


def test_the_converted_event_is_a_valid_cloudevent_and_obs_event() -> None:
    event = obs_record_to_cloudevent({**s3_record_of_the_real_sample(), "eventName": "s3:ObjectRemoved:Delete"})
    assert validate_cloudevent(event) == event
    assert OBSCloudEvent.model_validate(event).data.obs.bucket.name == "developer-test-example"
    assert event["type"] == "OBS:DWR:ObjectRemoved:Delete"
    assert event["data"]["eventName"] == "ObjectRemoved:Delete"
    check_rfc3339(event["time"])  # "now", in EventGrid's format


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ObjectCreated:Put", "OBS:DWR:ObjectCreated:PUT"),
        ("ObjectCreated:Post", "OBS:DWR:ObjectCreated:POST"),
        ("s3:ObjectCreated:Copy", "OBS:DWR:ObjectCreated:COPY"),
        ("ObjectCreated:CompleteMultipartUpload", "OBS:DWR:ObjectCreated:CompleteMultipartUpload"),
        ("ObjectRemoved:DeleteMarkerCreated", "OBS:DWR:ObjectRemoved:DeleteMarkerCreated"),
    ],
)
def test_obs_event_types(name: str, expected: str) -> None:
    assert obs_event_type(name) == expected


# ---------------------------------------------------------------------------- structured validation


def test_a_valid_event_keeps_attributes_extensions_and_data() -> None:
    event = {
        **MINIMAL,
        "subject": "orders/42",
        "time": "2026-09-30T03:24:43.167931174Z",
        "datacontenttype": "application/json",
        "dataschema": "",
        "ttl": 4000,
        "traceparent": "00-abc-def-01",
        "priority": 3,
        "urgent": True,
        "comment": None,
        "data": {"k": [1, 2]},
    }
    out = validate_cloudevent(event)
    assert out == {
        "specversion": "1.0",
        "id": "e-1",
        "source": "my/app",
        "type": "com.example.created",
        "subject": "orders/42",
        "time": "2026-09-30T03:24:43.167931174Z",
        "datacontenttype": "application/json",
        "dataschema": "",
        "ttl": "4000",
        "traceparent": "00-abc-def-01",
        "priority": 3,
        "urgent": True,
        "data": {"k": [1, 2]},
    }
    assert list(out)[:4] == ["specversion", "id", "source", "type"]
    assert "data" not in validate_cloudevent(MINIMAL)


@pytest.mark.parametrize("missing", ["id", "source", "specversion", "type"])
def test_each_required_attribute_is_named_when_missing(missing: str) -> None:
    event = {k: v for k, v in MINIMAL.items() if k != missing}
    with pytest.raises(CloudEventError) as info:
        validate_cloudevent(event)
    assert info.value.message == f"{missing}: is required"
    with pytest.raises(CloudEventError) as info:
        validate_cloudevent({**MINIMAL, missing: None})  # null counts as absent
    assert info.value.message == f"{missing}: is required"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"specversion": "0.3"}, "specversion: must be '1.0' (got '0.3')"),
        ({"specversion": 1.0}, "specversion: must be a string (got number)"),
        ({"id": ""}, "id: must not be empty"),
        ({"source": 17}, "source: must be a string (got number)"),
        ({"subject": ""}, "subject: must not be empty"),
        (
            {"time": "yesterday"},
            "time: must be an RFC 3339 timestamp such as 2026-09-30T03:24:43.167931174Z (got 'yesterday')",
        ),
        (
            {"time": "2026-13-01T00:00:00Z"},
            "time: is not a valid date-time (month must be in 1..12) (got '2026-13-01T00:00:00Z')",
        ),
        (
            {"time": "2026-01-01T00:00:00"},
            "time: must be an RFC 3339 timestamp such as 2026-09-30T03:24:43.167931174Z (got '2026-01-01T00:00:00')",
        ),
        ({"Upper": "x"}, "Upper: attribute names must be lower-case letters and digits only"),
        ({"x-ext": "x"}, "x-ext: attribute names must be lower-case letters and digits only"),
        ({"ext": {"a": 1}}, "ext: an extension attribute must be a string, integer or boolean (got object)"),
        ({"data": 1, "data_base64": "AA=="}, "data_base64: data and data_base64 cannot both be present"),
        ({"data_base64": "not base64!"}, "data_base64: is not valid base64"),
    ],
)
def test_invalid_events_get_a_precise_message(change: dict[str, Any], message: str) -> None:
    with pytest.raises(CloudEventError) as info:
        validate_cloudevent({**MINIMAL, **change})
    assert info.value.message == message


def test_batch_labels_name_the_index_and_non_objects_are_refused() -> None:
    with pytest.raises(CloudEventError) as info:
        validate_cloudevent({"id": "1"}, lambda name: f"events[3].{name}", whole="events[3]")
    assert info.value.message == "events[3].source: is required"
    with pytest.raises(CloudEventError) as info:
        validate_cloudevent(["not", "an", "event"], whole="events[0]")
    assert info.value.message == "events[0]: must be a JSON object (got array)"


@pytest.mark.parametrize(
    "text",
    ["2026-09-30T03:24:43Z", "2026-09-30t03:24:43.1+08:00", "2016-12-31T23:59:60Z", "2026-02-28T00:00:00-05:30"],
)
def test_rfc3339_accepts(text: str) -> None:
    check_rfc3339(text)


@pytest.mark.parametrize(
    "text", ["2026-02-30T00:00:00Z", "2026-09-30 03:24:43Z", "2026-09-30T25:00:00Z", "2026-09-30T03:24:43+24:00"]
)
def test_rfc3339_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        check_rfc3339(text)


# ---------------------------------------------------------------------------- binary mode


def headers(**extra: str) -> list[tuple[str, str]]:
    base = {"ce-specversion": "1.0", "ce-id": "b-1", "ce-source": "urn:dev", "ce-type": "t.created"}
    return [*base.items(), *((k.replace("_", "-"), v) for k, v in extra.items()), ("Host", "x")]


def test_binary_json_body_becomes_json_data() -> None:
    event = binary_cloudevent(
        headers(**{"CE-Subject": "a%20b%E2%82%AC", "ce-traceparent": "00-1"}), b'{"n": 1}', "application/json"
    )
    assert event == {
        "specversion": "1.0",
        "id": "b-1",
        "source": "urn:dev",
        "type": "t.created",
        "subject": "a b€",
        "datacontenttype": "application/json",
        "traceparent": "00-1",
        "data": {"n": 1},
    }


def test_binary_text_and_bytes_bodies() -> None:
    text = binary_cloudevent(headers(), "héllo".encode(), "text/plain; charset=utf-8")
    assert (text["data"], text["datacontenttype"]) == ("héllo", "text/plain; charset=utf-8")
    raw = bytes(range(256))
    blob = binary_cloudevent(headers(), raw, "application/octet-stream")
    assert base64.b64decode(blob["data_base64"]) == raw
    assert "data" not in blob
    empty = binary_cloudevent(headers(), b"", None)
    assert "data" not in empty and "datacontenttype" not in empty


@pytest.mark.parametrize(
    ("hdrs", "body", "ctype", "message"),
    [
        ([h for h in headers() if h[0] != "ce-type"], b"", None, "ce-type header: is required"),
        (headers(ce_specversion="0.3")[1:], b"", None, "ce-specversion header: must be '1.0' (got '0.3')"),
        ([*headers(), ("Ce-Id", "again")], b"", None, "ce-id header: given more than once"),
        (headers(ce_time="noon"), b"", None, None),
        (headers(), b"{broken", "application/json", None),
        (headers(ce_data="x"), b"", None, "ce-data header: not allowed in binary mode (use the body and Content-Type)"),
    ],
    ids=["no-type", "old-spec", "duplicate", "bad-time", "bad-json", "ce-data"],
)
def test_binary_errors(hdrs: list[tuple[str, str]], body: bytes, ctype: str | None, message: str | None) -> None:
    with pytest.raises(CloudEventError) as info:
        binary_cloudevent(hdrs, body, ctype)
    if message is not None:
        assert info.value.message == message
    elif b"{" in body:
        assert info.value.message.startswith("body: is not valid JSON for Content-Type application/json")
    else:
        assert info.value.message.startswith("ce-time header: must be an RFC 3339 timestamp")


# ---------------------------------------------------------------------------- matching


def subscription(**data: Any) -> Subscription:
    return Subscription.of(TriggerSpec("t-1", "urn:fss:local:p:function:default:f:latest", "EVENTGRID", data, 0.0))


def obs_event(key: str, bucket: str = "developer-test-example") -> dict[str, Any]:
    record = copy.deepcopy(s3_record_of_the_real_sample())
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["object"]["key"] = key
    return obs_record_to_cloudevent(record)


def test_channel_source_and_type_filters() -> None:
    event = validate_cloudevent(MINIMAL)
    assert subscription().matches("default", event)
    assert not subscription().matches("other", event)
    assert subscription(channel_name="orders").matches("orders", event)
    assert subscription(channel_id="c-42").matches("c-42", event)
    assert not subscription(channel_id="c-42").matches("default", event)
    assert subscription(source_name="my/app").matches("default", event)
    assert not subscription(source_name="HC.OBS.DWR").matches("default", event)
    assert subscription(event_types=["x", "com.example.created"]).matches("default", event)
    assert not subscription(event_types=["com.example.deleted"]).matches("default", event)


def test_obs_filters_look_at_the_decoded_key() -> None:
    photo = obs_event("photos%2Fcat+1.JPG")  # OBS-encoded "photos/cat 1.JPG"
    assert subscription(bucket="developer-test-example", prefix="photos/", suffix=".JPG").matches("default", photo)
    assert not subscription(prefix="docs/").matches("default", photo)
    assert not subscription(suffix=".jpg").matches("default", photo)
    assert not subscription(bucket="another-bucket").matches("default", photo)
    assert not subscription(prefix="photos/").matches("default", validate_cloudevent(MINIMAL))  # not an OBS event


def test_key_encode_false_delivers_decoded_keys() -> None:
    photo = obs_event("photos%2Fcat+1.jpg")
    before = copy.deepcopy(photo)
    decoded = subscription(Key_encode=False).shape(photo)
    assert decoded["data"]["obs"]["object"]["key"] == "photos/cat 1.jpg"
    assert decoded["subject"] == "photos/cat 1.jpg"
    assert photo == before  # the shared event is not modified
    assert subscription(Key_encode=True).shape(photo) is photo
    assert subscription().shape(photo) is photo  # unset: keys as OBS sends them


def test_request_ids_are_stable_per_trigger_and_event() -> None:
    event = validate_cloudevent(MINIMAL)
    assert request_id_for("t-1", event) == request_id_for("t-1", dict(event))
    assert request_id_for("t-1", event) != request_id_for("t-2", event)
    assert request_id_for("t-1", event) != request_id_for("t-1", {**event, "id": "e-2"})
