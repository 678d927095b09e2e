"""OBS trigger events: S3 notifications of every server become exactly the classic OBS event.

Golden inputs in tests/fixtures/obs_golden are real captures (Ceph RGW 16.2 webhook pushes, moto's
SNS HTTP deliveries) and a MinIO webhook body in MinIO's format; the ``*_obs_event.json`` files are
the documented OBS events (contract §1.3a) the connector must produce from them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.eventgrid import obs_record_to_cloudevent
from connectors.obs import (
    NotificationError,
    ObjectEvent,
    ObjectFilter,
    normalize_record,
    parse_event_time,
    parse_notification,
    recursion_findings,
    request_id_for,
    synthetic_event,
)
from schemas.async_config import DestinationConfig, DestinationKind
from schemas.events.obs import OBSEvent

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "obs_golden"
EVENTGRID_GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "obs_eventgrid_cloudevent.json"
KEY = "photos/summer 2024/a+b.jpg"


def load(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def only_event(document: Any, region: str = "eu-de") -> ObjectEvent:
    notification = parse_notification(document, region=region)
    assert len(notification.events) == 1, notification
    return notification.events[0]


@pytest.mark.parametrize(
    "capture",
    ["rgw_put", "rgw_delete", "moto_sns_put", "moto_sns_delete", "minio_webhook_put"],
)
def test_notification_becomes_the_documented_obs_event(capture: str) -> None:
    event = only_event(load(f"{capture}_notification.json"))
    expected = load(f"{capture}_obs_event.json")
    assert {"Records": [event.record]} == expected
    # The documented model reads it back unchanged: exactly the documented keys, nothing else.
    assert OBSEvent.model_validate(expected).dump() == expected
    record = expected["Records"][0]
    assert record["eventVersion"] == "2.0"
    assert record["eventSource"] == "aws:s3"
    assert not record["eventName"].startswith("s3:")


def test_every_server_flavour_decodes_to_the_same_key_and_encodes_it_as_obs_does() -> None:
    """RGW sends the key raw, AWS/moto and MinIO URL-encoded: all become OBS's quote_plus form."""
    for capture in ("rgw_put", "moto_sns_put", "minio_webhook_put"):
        event = only_event(load(f"{capture}_notification.json"))
        assert event.key == KEY
        assert event.record["s3"]["object"]["key"] == "photos%2Fsummer+2024%2Fa%2Bb.jpg"


def test_rgw_specifics_are_normalized() -> None:
    raw = load("rgw_put_notification.json")["Records"][0]
    assert raw["eventSource"] == "ceph:s3" and raw["eventVersion"] == "2.2"
    record = only_event({"Records": [raw]}, region="eu-de").record
    assert record["awsRegion"] == "eu-de"  # RGW leaves it empty: the service's region stands in
    assert record["eventTime"] == "2026-11-23T23:55:52.162Z"  # microseconds cut to OBS's milliseconds
    assert record["s3"]["bucket"]["ownerIdentity"] == {"PrincipalId": "test"}  # RGW spells principalId
    assert record["s3"]["object"]["versionId"] == "null"  # "" on an unversioned RGW bucket
    for extra in ("eventId", "opaqueData"):
        assert extra not in record
    assert set(record["s3"]["object"]) == {"key", "eTag", "size", "versionId", "sequencer"}


def test_sns_test_events_and_unsubscribe_notes_are_ignored() -> None:
    assert parse_notification(load("moto_sns_test_event.json"), region="r").ignored == 1
    direct = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2024-01-01T00:00:00.000Z", "Bucket": "b"}
    assert parse_notification(direct, region="r").events == []
    unsubscribe = {"Type": "UnsubscribeConfirmation", "TopicArn": "arn:aws:sns:r:1:t", "Message": "bye"}
    assert parse_notification(unsubscribe, region="r").ignored == 1


def test_sns_subscription_confirmation_is_recognized() -> None:
    body = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
        "Message": "You have chosen to subscribe to the topic",
        "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37",
    }
    notification = parse_notification(body, region="r")
    assert notification.confirmation is not None
    assert notification.confirmation.subscribe_url == body["SubscribeURL"]
    assert notification.events == []


def test_events_obs_does_not_document_are_ignored() -> None:
    template = load("minio_webhook_put_notification.json")
    names = ["s3:ObjectAccessed:Get", "s3:ObjectCreated:PutTagging", "s3:ObjectRemoved:NoOP", "ObjectCreated:Put"]
    records = [{**template["Records"][0], "eventName": name} for name in names]
    notification = parse_notification({"Records": records}, region="r")
    assert [e.event_name for e in notification.events] == ["ObjectCreated:Put"]
    assert notification.ignored == 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("eventName"), "Records[0].eventName: is required"),
        (lambda r: r["s3"]["object"].pop("key"), "Records[0].s3.object.key: is required"),
        (lambda r: r["s3"]["bucket"].update(name=""), "Records[0].s3.bucket.name: is required"),
        (lambda r: r.update(eventTime="yesterday"), "Records[0].eventTime: expected an RFC 3339 time"),
        (lambda r: r["s3"]["object"].update(size=True), "Records[0].s3.object.size: must be a non-negative"),
        (lambda r: r.update(s3="x"), "Records[0].s3: must be a JSON object"),
        (lambda r: r.update(userIdentity="x"), "Records[0]: userIdentity, requestParameters"),
    ],
)
def test_malformed_records_are_refused_with_the_field_named(mutate: Any, message: str) -> None:
    record = load("minio_webhook_put_notification.json")["Records"][0]
    mutate(record)
    with pytest.raises(NotificationError) as caught:
        parse_notification({"Records": [record]}, region="r")
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body: must be a JSON object"),
        ({"hello": 1}, 'expected an S3 event notification {"Records": [...]}'),
        ({"Records": {}}, "Records: must be a JSON array"),
        ({"Type": "Notification", "TopicArn": "a", "Message": "{nope"}, "Message: is not JSON"),
        ({"Type": "Notification", "TopicArn": "a", "Message": 5}, "Message: an SNS Notification carries"),
        ({"Type": "SubscriptionConfirmation", "TopicArn": "a"}, "SubscribeURL: is required"),
    ],
)
def test_malformed_bodies_are_refused(body: Any, message: str) -> None:
    with pytest.raises(NotificationError, match=message.replace("[", r"\[").replace("{", r"\{")):
        parse_notification(body, region="r")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-12-02T09:49:37.939Z", datetime(2024, 12, 2, 9, 49, 37, 939000, UTC)),
        ("2024-12-02T09:49:37.939123456Z", datetime(2024, 12, 2, 9, 49, 37, 939123, UTC)),
        ("2024-12-02T10:49:37+01:00", datetime(2024, 12, 2, 9, 49, 37, tzinfo=UTC)),
        ("2024-12-02T09:49:37", datetime(2024, 12, 2, 9, 49, 37, tzinfo=UTC)),
    ],
)
def test_event_times_of_every_precision_parse(text: str, expected: datetime) -> None:
    assert parse_event_time(text, "Records[0]") == expected


def test_filters_match_event_names_wildcards_and_the_decoded_key() -> None:
    event = only_event(load("rgw_put_notification.json"))
    base = {"bucket": "capture-in", "events": ["s3:ObjectCreated:*"]}
    assert ObjectFilter.of(base).matches(event)
    assert ObjectFilter.of({**base, "events": ["s3:ObjectCreated:Put"]}).matches(event)
    assert not ObjectFilter.of({**base, "events": ["s3:ObjectCreated:Post"]}).matches(event)
    assert not ObjectFilter.of({**base, "events": ["s3:ObjectRemoved:*"]}).matches(event)
    assert ObjectFilter.of({**base, "prefix": "photos/summer 2024/", "suffix": "+b.jpg"}).matches(event)
    assert not ObjectFilter.of({**base, "prefix": "photos%2F"}).matches(event)  # filters see the decoded key
    assert not ObjectFilter.of({**base, "suffix": ".png"}).matches(event)
    assert not ObjectFilter.of({**base, "bucket": "other-bucket"}).matches(event)


def test_one_object_is_one_request_whatever_carried_it() -> None:
    """Same upload, seen by RGW, through SNS (moto) or by a reconciliation scan: one request id per
    trigger. A different trigger, a different ETag or a removal is another request."""
    rgw = only_event(load("rgw_put_notification.json"))
    moto = only_event(load("moto_sns_put_notification.json"))
    scan = synthetic_event(
        bucket="capture-in",
        key=KEY,
        etag='"4b3e2355a4a96876d671bff87a566e74"',
        size=1234,
        last_modified=datetime(2026, 11, 23, 23, 55, 52, tzinfo=UTC),
        version_id="",
        region="eu-de",
        configuration_id="",
    )
    post = normalize_record({**load("rgw_put_notification.json")["Records"][0], "eventName": "ObjectCreated:Post"},
                            region="r")  # fmt: skip
    assert post is not None
    ids = {request_id_for("t1", e) for e in (rgw, moto, scan, post)}
    assert len(ids) == 1
    assert request_id_for("t2", rgw) not in ids
    changed = normalize_record(
        {**load("rgw_put_notification.json")["Records"][0], "s3": {
            **load("rgw_put_notification.json")["Records"][0]["s3"],
            "object": {"key": KEY, "eTag": "0" * 32, "sequencer": "1"}}},
        region="r",
    )  # fmt: skip
    assert changed is not None and request_id_for("t1", changed) not in ids
    removed = only_event(load("rgw_delete_notification.json"))
    assert request_id_for("t1", removed) not in ids
    removed_again = normalize_record(
        {**load("rgw_delete_notification.json")["Records"][0], "s3": {
            **load("rgw_delete_notification.json")["Records"][0]["s3"],
            "object": {"key": KEY, "sequencer": "88D2046B62F7FFFF"}}},
        region="r",
    )  # fmt: skip
    assert removed_again is not None and request_id_for("t1", removed_again) != request_id_for("t1", removed)


def test_synthetic_events_keep_the_documented_shape_and_say_what_they_are() -> None:
    moment = datetime(2025, 1, 2, 3, 4, 5, 678000, UTC)
    event = synthetic_event(
        bucket="in-bucket",
        key="a b/c.jpg",
        etag="abc",
        size=42,
        last_modified=moment,
        version_id="",
        region="eu-de",
        configuration_id="obs-event-1",
    )
    document = json.loads(event.payload())
    record = document["Records"][0]
    assert record["triggerbus"] == {"synthetic": True, "reason": "reconciliation"}
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["eventTime"] == "2025-01-02T03:04:05.678Z"
    assert record["s3"]["object"] == {
        "key": "a+b%2Fc.jpg",
        "eTag": "abc",
        "size": 42,
        "versionId": "null",
        "sequencer": f"{int(moment.timestamp() * 1000):032X}",
    }
    # Functions reading the documented fields see a valid OBS event; the marker is an addition.
    without_marker = {"Records": [{k: v for k, v in record.items() if k != "triggerbus"}]}
    assert OBSEvent.model_validate(document).dump() == without_marker
    assert event.synthetic
    multipart = synthetic_event(
        bucket="in-bucket",
        key="big.bin",
        etag="d41d8cd98f00b204e9800998ecf8427e-12",
        size=None,
        last_modified=moment,
        version_id="",
        region="r",
        configuration_id="",
    )
    assert multipart.event_name == "ObjectCreated:CompleteMultipartUpload"


def test_an_eventgrid_obs_record_is_accepted_too() -> None:
    data = json.loads(EVENTGRID_GOLDEN.read_text())["data"]
    event = normalize_record(data, region="r")
    assert event is not None
    assert (event.bucket, event.key, event.event_name) == ("developer-test-example", "test.tar", "ObjectCreated:Put")
    assert event.record["eventSource"] == "aws:s3"
    assert event.record["awsRegion"] == "cn-east-3"


def test_the_writer_of_an_object_is_read_from_rgw_and_minio_metadata() -> None:
    urn = "urn:fss:local:p:function:default:f:latest"
    rgw = load("rgw_put_notification.json")["Records"][0]
    rgw["s3"]["object"]["metadata"].append({"key": "x-amz-meta-x-triggerbus-function", "val": urn})
    minio = load("minio_webhook_put_notification.json")["Records"][0]
    minio["s3"]["object"]["userMetadata"]["X-Amz-Meta-X-Triggerbus-Function"] = urn
    for raw in (rgw, minio):
        event = normalize_record(raw, region="r")
        assert event is not None and event.written_by == urn
    aws = json.loads(load("moto_sns_put_notification.json")["Message"])["Records"][0]
    plain = normalize_record(aws, region="r")
    assert plain is not None and plain.written_by == ""  # AWS reports no metadata


def test_the_eventgrid_form_of_a_normalized_record() -> None:
    event = only_event(load("rgw_put_notification.json"))
    cloudevent = obs_record_to_cloudevent(event.record, event_id=event.eventgrid_id())
    assert cloudevent["source"] == "HC.OBS.DWR"
    assert cloudevent["type"] == "OBS:DWR:ObjectCreated:PUT"
    assert cloudevent["id"] == event.record["responseElements"]["x-amz-request-id"]
    assert cloudevent["data"]["obs"]["object"]["key"] == "photos%2Fsummer+2024%2Fa%2Bb.jpg"
    assert cloudevent["data"]["eventVersion"] == "3.0"
    # Without a request id (moto), the id is derived from the object: stable across deliveries.
    moto = only_event(load("moto_sns_put_notification.json"))
    assert moto.eventgrid_id() == only_event(load("moto_sns_put_notification.json")).eventgrid_id()


# ------------------------------------------------------------------------------ recursion guard

TRIGGER = ObjectFilter.of({"bucket": "in-bucket", "events": ["s3:ObjectCreated:*"]})


def destination(bucket: str, prefix: str = "") -> DestinationConfig:
    return DestinationConfig(destination=DestinationKind.OBS, param=json.dumps({"bucket": bucket, "prefix": prefix}))


def test_an_async_destination_into_the_trigger_bucket_is_refused() -> None:
    refusal, _ = recursion_findings(TRIGGER, "fn", {}, [("on_success", destination("in-bucket", "results"))])
    assert refusal is not None
    assert refusal.startswith("event_data.bucket: function fn sends its on_success results to bucket 'in-bucket'")
    assert "Use two buckets" in refusal


def test_a_destination_the_trigger_cannot_see_is_allowed() -> None:
    assert recursion_findings(TRIGGER, "fn", {}, [("on_failure", destination("out-bucket"))]) == (None, [])
    jpg_only = ObjectFilter.of({"bucket": "in-bucket", "events": ["s3:ObjectCreated:*"], "suffix": ".jpg"})
    assert recursion_findings(jpg_only, "fn", {}, [("on_success", destination("in-bucket"))]) == (None, [])
    uploads = ObjectFilter.of({"bucket": "in-bucket", "events": ["s3:ObjectCreated:*"], "prefix": "uploads/"})
    assert recursion_findings(uploads, "fn", {}, [("on_success", destination("in-bucket", "results"))]) == (None, [])


@pytest.mark.parametrize("key", ["output_bucket", "obs_output_bucket", "OUTPUT_BUCKET", "dest_bucket", "targetBucket"])
def test_an_output_bucket_in_user_data_equal_to_the_trigger_bucket_is_refused(key: str) -> None:
    refusal, _ = recursion_findings(TRIGGER, "thumbnailer", {key: "in-bucket"}, [])
    assert refusal is not None and f"(user_data {key})" in refusal


def test_an_output_prefix_the_trigger_does_not_match_is_allowed() -> None:
    uploads = ObjectFilter.of({"bucket": "in-bucket", "events": ["s3:ObjectCreated:*"], "prefix": "uploads/"})
    user_data = {"output_bucket": "in-bucket", "output_prefix": "thumbnails/"}
    assert recursion_findings(uploads, "fn", user_data, []) == (None, [])
    refusal, _ = recursion_findings(TRIGGER, "fn", user_data, [])  # no trigger prefix: it sees thumbnails/ too
    assert refusal is not None and "prefix 'thumbnails/'" in refusal


def test_inputs_and_other_buckets_are_fine_and_an_unclear_entry_is_a_warning() -> None:
    assert recursion_findings(TRIGGER, "fn", {"input_bucket": "in-bucket", "output_bucket": "out"}, []) == (None, [])
    refusal, warnings = recursion_findings(TRIGGER, "fn", {"bucket": "in-bucket"}, [])
    assert refusal is None
    assert warnings == [
        "user_data bucket names bucket 'in-bucket', the bucket this trigger listens to: if function fn writes "
        "there, each write triggers it again"
    ]
