"""EVENTGRID triggers through the real CloudEvents ingress of a real service.

Covered: structured, binary and batched ingest deliver the exact event to a real function;
the response comes after the invocations are durable and says what matched; event_types,
source and OBS bucket/prefix/suffix filters (with Key_encode); a resent event (same source
and id) runs once; invalid events get a precise 400 naming the attribute and batch index;
oversized bodies and events get a 413 FSS body; the ingress needs the management token.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from connectors.eventgrid import obs_record_to_cloudevent
from tests.integration.conftest import Harness
from tests.support.recording import REQUEST_RECORDER, read_jsonl
from tests.support.waiting import bounded_waits
from tests.unit.test_eventgrid_events import s3_record_of_the_real_sample

pytestmark = pytest.mark.integration

WAIT = 30.0
wait_for, _ = bounded_waits(WAIT, interval=0.05)
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
BATCH = {"Content-Type": "application/cloudevents-batch+json"}


# -- helpers ---------------------------------------------------------------------------------------------


def unique(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:10]}"


def cloud_event(**extra: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": unique("e-"), "source": "shop/orders", "type": "order.created", **extra}


async def recorder(h: Harness, tmp_path: Path) -> tuple[str, Path]:
    """A new REQUEST_RECORDER function: its URN and output file."""
    return await h.create_recorder(unique("eg"), REQUEST_RECORDER, tmp_path)


async def create_trigger(h: Harness, urn: str, event_data: dict[str, Any]) -> str:
    """An EVENTGRID trigger of ``urn`` (asserting 201): its id."""
    return str((await h.add_trigger(urn, "EVENTGRID", event_data))["trigger_id"])


async def post(
    h: Harness, channel: str, body: bytes | str, headers: dict[str, str], status: int = 200
) -> dict[str, Any]:
    data = body.encode() if isinstance(body, str) else body
    async with h.http.post(f"/eventgrid/channels/{channel}/events", data=data, headers=headers) as resp:
        result = dict(await resp.json())
        assert resp.status == status, result
    return result


async def delivered(h: Harness, urn: str, out: Path, response: dict[str, Any]) -> list[dict[str, Any]]:
    """The events the function got for ``response``'s invocations, once they all finished."""
    request_ids = [rid for event in response["events"] for rid in event["request_ids"]]
    for request_id in request_ids:
        record = await h.wait_terminal(urn, request_id)
        assert record["status"] == "SUCCESS", record
    by_id = {line["request_id"]: line["event"] for line in read_jsonl(out)}
    return [by_id[rid] for rid in request_ids]


# -- ingest modes -------------------------------------------------------------------------------------------


async def test_a_structured_event_reaches_the_function_exactly(harness: Harness, tmp_path: Path) -> None:
    urn, out = await recorder(harness, tmp_path)
    channel = unique("ch-")
    trigger_id = await create_trigger(harness, urn, {"channel_name": channel, "source_name": "shop/orders"})
    event = cloud_event(
        subject="orders/42",
        time="2026-09-30T03:24:43.167931174Z",
        datacontenttype="application/json",
        ttl="4000",
        traceparent="00-4bf92f3577b34da6-00f067aa0ba902b7-01",
        data={"order": 42, "items": ["a", "b"], "note": "größer"},
    )
    response = await post(harness, channel, json.dumps(event, ensure_ascii=False), STRUCTURED)
    (result,) = response["events"]
    assert (response["failed_count"], result["event_id"], result["matched_triggers"]) == (0, event["id"], 1)
    (got,) = await delivered(harness, urn, out, response)
    assert got == event
    record = await harness.record(urn, result["request_ids"][0])
    assert (record["trigger_id"], record["trigger_type"]) == (trigger_id, "EVENTGRID")
    assert record["source"]["event_id"] == event["id"]
    assert record["source"]["channel"] == channel


async def test_a_binary_mode_event_is_delivered_in_structured_form(harness: Harness, tmp_path: Path) -> None:
    urn, out = await recorder(harness, tmp_path)
    channel = unique("ch-")
    await create_trigger(harness, urn, {"channel_name": channel})
    event_id = unique("b-")
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "urn:device:7",
        "ce-type": "reading.taken",
        "ce-subject": "room%201",
        "ce-time": "2026-01-02T03:04:05Z",
        "ce-ttl": "4000",
        "Content-Type": "application/json",
    }
    json_response = await post(harness, channel, '{"celsius": 21.5}', headers)
    raw = bytes(range(200))
    blob_headers = {**headers, "ce-id": event_id + "-bin", "Content-Type": "application/octet-stream"}
    blob_response = await post(harness, channel, raw, blob_headers)
    (as_json,) = await delivered(harness, urn, out, json_response)
    (as_blob,) = await delivered(harness, urn, out, blob_response)
    common = {
        "specversion": "1.0",
        "source": "urn:device:7",
        "type": "reading.taken",
        "subject": "room 1",
        "time": "2026-01-02T03:04:05Z",
        "ttl": "4000",
    }
    assert as_json == {**common, "id": event_id, "datacontenttype": "application/json", "data": {"celsius": 21.5}}
    assert as_blob == {
        **common,
        "id": event_id + "-bin",
        "datacontenttype": "application/octet-stream",
        "data_base64": base64.b64encode(raw).decode(),
    }


async def test_a_batch_delivers_every_event_and_reports_each(harness: Harness, tmp_path: Path) -> None:
    urn, out = await recorder(harness, tmp_path)
    channel = unique("ch-")
    await create_trigger(harness, urn, {"channel_name": channel})
    batch = [cloud_event(data={"n": n}) for n in range(5)]
    response = await post(harness, channel, json.dumps(batch), BATCH)
    assert [e["event_id"] for e in response["events"]] == [e["id"] for e in batch]
    assert all(e["matched_triggers"] == 1 for e in response["events"])
    assert await delivered(harness, urn, out, response) == batch
    empty = await post(harness, channel, "[]", BATCH)
    assert empty == {"failed_count": 0, "events": []}


# -- matching -------------------------------------------------------------------------------------------------


async def test_event_types_and_channels_decide_who_is_invoked(harness: Harness, tmp_path: Path) -> None:
    created_urn, created_out = await recorder(harness, tmp_path)
    any_urn, any_out = await recorder(harness, tmp_path)
    channel = unique("ch-")
    await create_trigger(harness, created_urn, {"channel_name": channel, "event_types": ["order.created"]})
    await create_trigger(harness, any_urn, {"channel_name": channel})
    created, cancelled = cloud_event(), cloud_event(type="order.cancelled")
    response = await post(harness, channel, json.dumps([created, cancelled]), BATCH)
    assert [e["matched_triggers"] for e in response["events"]] == [2, 1]
    await _wait_all(harness, response, [created_urn, any_urn])
    assert [line["event"]["type"] for line in read_jsonl(created_out)] == ["order.created"]
    assert sorted(line["event"]["type"] for line in read_jsonl(any_out)) == ["order.cancelled", "order.created"]
    elsewhere = await post(harness, unique("other-"), json.dumps(cloud_event()), STRUCTURED)
    assert elsewhere["events"][0]["matched_triggers"] == 0


async def _wait_all(h: Harness, response: dict[str, Any], urns: list[str]) -> None:
    """Wait until each invocation of ``response`` is SUCCESS under whichever function it belongs to."""
    for request_id in (rid for e in response["events"] for rid in e["request_ids"]):

        async def finished(rid: str = request_id) -> bool:
            for urn in urns:
                async with h.http.get(h.fgs(f"/functions/{urn}/async-invocations/{rid}")) as resp:
                    if resp.status == 200 and (await resp.json())["status"] == "SUCCESS":
                        return True
            return False

        await wait_for(finished, f"invocation {request_id}")


async def test_obs_events_filter_on_bucket_prefix_suffix_and_decode_keys(harness: Harness, tmp_path: Path) -> None:
    photos_urn, photos_out = await recorder(harness, tmp_path)
    docs_urn, docs_out = await recorder(harness, tmp_path)
    channel = unique("ch-")
    obs = {"channel_name": channel, "source_name": "HC.OBS.DWR", "event_types": ["OBS:DWR:ObjectCreated:PUT"]}
    await create_trigger(
        harness,
        photos_urn,
        {**obs, "bucket": "media-bucket", "prefix": "photos/", "suffix": ".jpg", "Key_encode": False},
    )
    await create_trigger(harness, docs_urn, {**obs, "bucket": "media-bucket", "prefix": "docs/"})
    record = copy.deepcopy(s3_record_of_the_real_sample())
    record["s3"]["bucket"]["name"] = "media-bucket"
    record["s3"]["object"]["key"] = "photos%2Fcat+1.jpg"  # as OBS encodes "photos/cat 1.jpg"
    event = obs_record_to_cloudevent(record)
    other_bucket = copy.deepcopy(record)
    other_bucket["s3"]["bucket"]["name"] = "another-bucket"
    other_bucket["responseElements"]["x-amz-request-id"] = unique("r")
    response = await post(harness, channel, json.dumps([event, obs_record_to_cloudevent(other_bucket)]), BATCH)
    assert [e["matched_triggers"] for e in response["events"]] == [1, 0]
    (got,) = await delivered(harness, photos_urn, photos_out, response)
    expected = copy.deepcopy(event)
    expected["data"]["obs"]["object"]["key"] = "photos/cat 1.jpg"
    expected["subject"] = "photos/cat 1.jpg"
    assert got == expected
    assert read_jsonl(docs_out) == []


async def test_a_resent_event_runs_once(harness: Harness, tmp_path: Path) -> None:
    urn, out = await recorder(harness, tmp_path)
    channel = unique("ch-")
    await create_trigger(harness, urn, {"channel_name": channel})
    event = json.dumps(cloud_event(data={"n": 1}))
    first = await post(harness, channel, event, STRUCTURED)
    await delivered(harness, urn, out, first)
    duplicates = harness.service.invoker.stats["duplicates"]
    again = await post(harness, channel, event, STRUCTURED)  # a producer retrying after a lost response
    assert again["events"][0]["request_ids"] == first["events"][0]["request_ids"]

    async def skipped() -> bool:
        return bool(harness.service.invoker.stats["duplicates"] > duplicates)

    await wait_for(skipped, "the invoker to skip the resent event")
    assert len(read_jsonl(out)) == 1


# -- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (json.dumps({"specversion": "1.0", "source": "s", "type": "t"}), STRUCTURED, 400, "id: is required"),
        (
            json.dumps(cloud_event(specversion="0.3")),
            STRUCTURED,
            400,
            "specversion: must be '1.0' (got '0.3')",
        ),
        (
            json.dumps(cloud_event(time="2026-02-30T00:00:00Z")),
            STRUCTURED,
            400,
            "time: is not a valid date-time (day is out of range for month) (got '2026-02-30T00:00:00Z')",
        ),
        (
            json.dumps([cloud_event(), {"specversion": "1.0", "id": "x", "type": "t"}]),
            BATCH,
            400,
            "events[1].source: is required",
        ),
        (json.dumps([cloud_event(), "nope"]), BATCH, 400, "events[1]: must be a JSON object (got string)"),
        (json.dumps(cloud_event()), BATCH, 400, "body: a cloudevents-batch must be a JSON array of events"),
        (
            "{not json",
            STRUCTURED,
            400,
            "request body is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        ),
        (
            "{}",
            {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "Content-Type": "application/json"},
            400,
            "ce-type header: is required",
        ),
        (
            json.dumps(cloud_event()),
            {"Content-Type": "application/json"},
            415,
            "Content-Type 'application/json' is not a CloudEvent: send application/cloudevents+json (one event), "
            "application/cloudevents-batch+json (a JSON array) or binary mode (ce-id, ce-source, ce-specversion, "
            "ce-type headers)",
        ),
    ],
    ids=[
        "no-id",
        "old-spec",
        "bad-time",
        "batch-index",
        "batch-non-object",
        "batch-not-array",
        "bad-json",
        "binary-no-type",
        "not-a-cloudevent",
    ],
)
async def test_invalid_requests_get_a_precise_fss_error(
    harness: Harness, tmp_path: Path, body: str, headers: dict[str, str], status: int, message: str
) -> None:
    urn, out = await recorder(harness, tmp_path)
    channel = unique("ch-")
    await create_trigger(harness, urn, {"channel_name": channel})
    result = await post(harness, channel, body, headers, status=status)
    code = {400: "FSS.0400", 415: "FSS.0415"}[status]
    assert result == {"error_code": code, "error_msg": message}
    assert not out.exists()  # nothing of a refused request is delivered, valid events included


async def test_oversized_bodies_and_events_get_413(harness: Harness) -> None:
    channel = unique("ch-")
    limit = harness.service.settings.max_sync_body
    huge = json.dumps(cloud_event(data="x" * (limit + 1)))
    result = await post(harness, channel, huge, STRUCTURED, status=413)
    assert result == {
        "error_code": "FSS.0413",
        "error_msg": f"request body of {len(huge)} bytes exceeds the {limit}-byte limit",
    }
    event_limit = harness.service.settings.max_async_body
    big = [cloud_event(), cloud_event(data="y" * event_limit)]
    result = await post(harness, channel, json.dumps(big), BATCH, status=413)
    size = len(json.dumps(big[1], separators=(",", ":")).encode())
    assert result == {
        "error_code": "FSS.0413",
        "error_msg": f"events[1]: {size} bytes as JSON exceeds the {event_limit}-byte limit of one event",
    }


async def test_the_ingress_needs_the_management_token(harness: Harness) -> None:
    async with harness.http.post(
        "/eventgrid/channels/default/events",
        data=json.dumps(cloud_event()),
        headers={**STRUCTURED, "X-Auth-Token": "wrong"},
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error_code"] == "FSS.0403"
    async with harness.http.post("/eventgrid/channels/bad%20name/events", data="{}", headers=STRUCTURED) as resp:
        assert resp.status == 400
        assert (await resp.json())["error_msg"].startswith("channel: 'bad name' must be 1-128 letters")
