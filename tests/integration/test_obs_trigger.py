"""OBS triggers against real S3 servers pushing real bucket notifications to a real service.

The S3 server is Ceph radosgw (tests/support/rgw.py): a bucket notification topic pushes each event
to the trigger's webhook URL, as RGW does in production. The SNS path (AWS style) runs against moto:
S3 -> SNS topic -> HTTP subscription. The SNS subscription handshake is checked with a stand-in SNS
endpoint that records what is fetched.

Covered: an upload becomes exactly the documented OBS event, filtered by events/prefix/suffix; the
webhook refuses requests without the trigger's token; a notification sent twice runs once; the
webhook answers 5xx until the invocation is durable and RGW's persistent topic sends it again; the
SNS handshake fetches only the configured endpoint; moto's SNS notifications; EVENTGRID triggers
get the HC.OBS.DWR form of the same upload; reconciliation invokes uploads whose notification was
lost, once, and leaves older objects alone; the recursion guard; the seed best practices
(thumbnail and watermark with Pillow).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import random
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from PIL import Image

from tests.integration.conftest import Harness, S3Server, make_settings, running
from tests.support import rgw as rgw_support
from tests.support.recording import REQUEST_RECORDER, read_jsonl
from tests.support.rgw import RGW
from tests.support.waiting import bounded_waits

pytestmark = pytest.mark.integration

WAIT = 45.0
CODE = "OBS"
wait_for, wait_until = bounded_waits(WAIT, interval=0.05)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ALL_EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]


@pytest.fixture(scope="module")
def rgw() -> Iterator[RGW]:
    """A real radosgw for this module (TRIGGERBUS_TEST_RGW, or one started here in ~20 s)."""
    server = rgw_support.from_env_or_start()
    yield server
    server.stop()


# -- helpers ---------------------------------------------------------------------------------------------


def unique(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:10]}"


def new_bucket(server: RGW | Any, name: str = "tb-") -> str:
    bucket = unique(name)
    server.minio().make_bucket(bucket)
    return bucket


async def recorder(h: Harness, tmp_path: Path, **user_data: str) -> tuple[str, Path]:
    """A new REQUEST_RECORDER function (with ``user_data`` besides "out"): its URN and output file."""
    return await h.create_recorder(unique("obs"), REQUEST_RECORDER, tmp_path, user_data=user_data)


async def create_obs_trigger(h: Harness, urn: str, event_data: dict[str, Any]) -> dict[str, Any]:
    """An OBS trigger (event type ObjectCreated) of ``urn``, asserting 201: the created trigger."""
    return await h.add_trigger(urn, CODE, event_data, event_type_code="ObjectCreated")


def webhook_url(created: dict[str, Any]) -> str:
    """The URL to give the S3 server: event_data.webhook_url with the token shown at creation."""
    return str(created["event_data"]["webhook_url"]).replace("{webhook_token}", created["state"]["webhook_token"])


async def records_of(h: Harness, urn: str, trigger_id: str, **source: str) -> list[dict[str, Any]]:
    """The invocation records of ``trigger_id`` whose ``source.<key>`` match ``source``."""
    return await h.invocations(urn, trigger_id=trigger_id, **{f"source.{k}": v for k, v in source.items()})


async def s3(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking S3 client call, off the event loop."""
    return await asyncio.to_thread(call, *args, **kwargs)


async def put(server: RGW | Any, bucket: str, key: str, data: bytes) -> str:
    result = await s3(server.minio().put_object, bucket, key, io.BytesIO(data), len(data))
    return str(result.etag).strip('"')


async def wire(server: RGW, bucket: str, url: str, events: list[str], *, persistent: bool = False) -> str:
    """RGW setup for a trigger: a topic pushing to its webhook URL, and the bucket's notification."""
    config_id = unique("tb-")
    arn = await s3(server.create_webhook_topic, config_id, url, persistent=persistent)
    await s3(server.notify, bucket, arn, events, config_id=config_id)
    return config_id


def noise_jpeg(width: int = 320, height: int = 240) -> bytes:
    """Random pixels: incompressible enough that the JPEG is well over the guide's 28 KB."""
    rng = random.Random(7)
    image = Image.frombytes("RGB", (width, height), bytes(rng.getrandbits(8) for _ in range(width * height * 3)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


@functools.cache
def function_zip(fixture: str) -> str:
    """The fixture's index.py, the obs_client helper and Pillow (a function ships its own
    dependencies, as FunctionGraph's "pillow" dependency package does), base64-encoded."""
    import PIL

    site = Path(PIL.__file__).resolve().parents[1]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.write(FIXTURES / fixture / "index.py", "index.py")
        zf.write(FIXTURES / "obs_common" / "obs_client.py", "obs_client.py")
        for folder in ("PIL", "pillow.libs"):
            for path in sorted((site / folder).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    zf.write(path, str(path.relative_to(site)))
    return base64.b64encode(buffer.getvalue()).decode()


# -- an upload becomes the documented event ----------------------------------------------------------------


async def test_an_rgw_upload_reaches_the_function_as_the_exact_obs_event(tmp_path: Path, rgw: RGW) -> None:
    async with running(make_settings(tmp_path / "data", region="eu-de")) as h:
        urn, out = await recorder(h, tmp_path)
        bucket = new_bucket(rgw)
        event_data = {"bucket": bucket, "events": ["s3:ObjectCreated:*"], "name": "obs-event-1", "prefix": "photos/"}
        created = await create_obs_trigger(h, urn, {**event_data, "suffix": ".jpg"})
        trigger_id = created["trigger_id"]
        data = created["event_data"]
        assert data["webhook_url"] == f"{h.base_url}/obs/notifications/{trigger_id}/{{webhook_token}}"
        token = created["state"]["webhook_token"]
        assert len(token) >= 40 and token not in json.dumps(data)
        config_id = await wire(rgw, bucket, webhook_url(created), ALL_EVENTS)

        key = "photos/summer 2024/a+b.jpg"
        etag = await put(rgw, bucket, key, b"x" * 1234)
        await put(rgw, bucket, "other/a.jpg", b"prefix does not match")
        await put(rgw, bucket, "photos/a.png", b"suffix does not match")
        await s3(rgw.minio().remove_object, bucket, key)  # ObjectRemoved: not in the trigger's events

        await wait_until(lambda: read_jsonl(out), "the upload's invocation")
        state = await wait_for(
            lambda: _state_when(h, urn, trigger_id, lambda s: s["notifications"] >= 4), "all four notifications"
        )
        assert state["ignored"] == 3 and state["invocations"] == 1
        lines = read_jsonl(out)
        assert len(lines) == 1
        event = lines[0]["event"]
        record = event["Records"][0]
        obj = record["s3"]["object"]
        assert event == {
            "Records": [
                {
                    "eventVersion": "2.0",
                    "eventSource": "aws:s3",
                    "awsRegion": "eu-de",
                    "eventTime": record["eventTime"],
                    "eventName": "ObjectCreated:Put",
                    "userIdentity": {"principalId": "test"},
                    "requestParameters": {"sourceIPAddress": record["requestParameters"]["sourceIPAddress"]},
                    "responseElements": {
                        "x-amz-request-id": record["responseElements"]["x-amz-request-id"],
                        "x-amz-id-2": record["responseElements"]["x-amz-id-2"],
                    },
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "configurationId": config_id,
                        "bucket": {
                            "name": bucket,
                            "ownerIdentity": {"PrincipalId": "test"},
                            "arn": f"arn:aws:s3:::{bucket}",
                        },
                        "object": {
                            "key": "photos%2Fsummer+2024%2Fa%2Bb.jpg",
                            "eTag": etag,
                            "size": 1234,
                            "versionId": "null",
                            "sequencer": obj["sequencer"],
                        },
                    },
                }
            ]
        }
        assert record["responseElements"]["x-amz-request-id"] and obj["sequencer"]
        assert record["eventTime"].endswith("Z") and len(record["eventTime"]) == len("2024-12-02T09:49:37.939Z")
        # Where's my event: the invocation is found by its source coordinates.
        found = await records_of(h, urn, trigger_id, bucket=bucket, key=key)
        assert [r["request_id"] for r in found] == [lines[0]["request_id"]]

        # The token is shown once; afterwards only its place in the URL.
        async with h.http.get(h.fgs(f"/triggers/{urn}/OBS/{trigger_id}")) as resp:
            again = await resp.json()
        assert "webhook_token" not in again["state"] and token not in json.dumps(again)
        # OBS triggers cannot be disabled (a bucket notification, not a pull).
        async with h.http.put(h.fgs(f"/triggers/{urn}/OBS/{trigger_id}"), json={"trigger_status": "DISABLED"}) as resp:
            refused = await resp.json()
            assert resp.status == 400 and "cannot be disabled" in refused["error_msg"]


async def _state_when(h: Harness, urn: str, trigger_id: str, condition: Callable[[dict[str, Any]], bool]) -> Any:
    state = await h.trigger_state(urn, CODE, trigger_id)
    return state if condition(state) else None


# -- webhook auth and bad input -------------------------------------------------------------------------------


async def test_the_webhook_refuses_requests_without_the_trigger_token(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path)
        created = await create_obs_trigger(h, urn, {"bucket": "in-bucket", "events": ["s3:ObjectCreated:*"]})
        trigger_id = created["trigger_id"]
        # The one response that shows the token is audited (CTS trace) with the token masked.
        async with h.http.get("/v3/proj1/traces", params={"trace_name": "createTrigger"}) as resp:
            traces = await resp.text()
            assert resp.status == 200, traces
        assert trigger_id in traces and created["state"]["webhook_token"] not in traces
        body = json.loads((FIXTURES / "obs_golden" / "rgw_put_notification.json").read_text())
        body["Records"][0]["s3"]["bucket"]["name"] = "in-bucket"
        async with aiohttp.ClientSession(base_url=h.base_url) as anonymous:
            for path, status, code in (
                (f"/obs/notifications/{trigger_id}", 401, "FSS.0401"),
                (f"/obs/notifications/{trigger_id}/not-the-token", 403, "FSS.0403"),
                (f"/obs/notifications/{uuid.uuid4()}/{created['state']['webhook_token']}", 404, "FSS.0404"),
                ("/obs/events/anything", 404, "FSS.0404"),  # the shared URL is off without its token
            ):
                async with anonymous.post(path, json=body) as resp:
                    answer = await resp.json()
                    assert (resp.status, answer["error_code"]) == (status, code), (path, answer)
            # The management token is no substitute for the webhook token.
            async with anonymous.post(
                f"/obs/notifications/{trigger_id}/wrong", json=body, headers={"X-Auth-Token": h.service.token}
            ) as resp:
                assert resp.status == 403
            # Right token, bad bodies: precise 400s, nothing invoked.
            url = webhook_url(created).removeprefix(h.base_url)
            for bad, message in (
                (b"{not json", "request body is not valid JSON"),
                (b'{"Records": [{"eventName": "ObjectCreated:Put"}]}', "Records[0].s3: must be a JSON object"),
            ):
                async with anonymous.post(url, data=bad) as resp:
                    answer = await resp.json()
                    assert resp.status == 400 and answer["error_msg"].startswith(message), answer
            async with anonymous.post(url, json=body) as resp:
                accepted = await resp.json()
                assert resp.status == 200, accepted
        assert accepted["invocations"] == 1
        await h.wait_terminal(urn, accepted["request_ids"][0])
        assert len(read_jsonl(out)) == 1


# -- at-least-once, exactly one run per notification -------------------------------------------------------


async def test_a_notification_sent_twice_runs_once(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path)
        created = await create_obs_trigger(h, urn, {"bucket": "in-bucket", "events": ["s3:ObjectCreated:Put"]})
        body = json.loads((FIXTURES / "obs_golden" / "rgw_put_notification.json").read_text())
        body["Records"][0]["s3"]["bucket"]["name"] = "in-bucket"
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.post(webhook_url(created), json=body) as resp:
                first = await resp.json()
            await h.wait_terminal(urn, first["request_ids"][0])
            async with anonymous.post(webhook_url(created), json=body) as resp:
                second = await resp.json()
            # Sent again while the first is still queued: also recognized.
            body["Records"][0]["s3"]["object"]["eTag"] = "0123456789abcdef0123456789abcdef"
            async with anonymous.post(webhook_url(created), json=body) as resp:
                third = await resp.json()
            async with anonymous.post(webhook_url(created), json=body) as resp:
                fourth = await resp.json()
        assert (first["invocations"], first["duplicates"]) == (1, 0)
        assert (second["invocations"], second["duplicates"]) == (0, 1)
        assert second["request_ids"] == first["request_ids"]
        assert (third["invocations"], fourth["invocations"], fourth["duplicates"]) == (1, 0, 1)
        await h.wait_terminal(urn, third["request_ids"][0])
        assert len(read_jsonl(out)) == 2
        assert len(await records_of(h, urn, created["trigger_id"])) == 2


async def test_the_webhook_fails_until_the_invocation_is_durable_and_rgw_sends_it_again(
    tmp_path: Path, rgw: RGW
) -> None:
    """A persistent RGW topic keeps an event until the webhook says 2xx. While enqueuing fails
    (injected: the bus append raises) the webhook answers 503, so the upload is not lost."""
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await recorder(h, tmp_path)
        bucket = new_bucket(rgw)
        created = await create_obs_trigger(h, urn, {"bucket": bucket, "events": ["s3:ObjectCreated:*"]})
        trigger_id = created["trigger_id"]
        invocations = h.service.invocations
        real_enqueue = invocations.enqueue
        failures = {"left": 2}

        async def failing_enqueue(*args: Any, **kwargs: Any) -> str:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise OSError("disk full (injected)")
            return str(await real_enqueue(*args, **kwargs))

        invocations.enqueue = failing_enqueue
        await wire(rgw, bucket, webhook_url(created), ["s3:ObjectCreated:*"], persistent=True)
        await put(rgw, bucket, "retried.txt", b"keep me")
        # A new persistent topic's queue is picked up by RGW within ~30 s.
        lines = await wait_until(lambda: read_jsonl(out), "the retried invocation", timeout=90)
        state = await h.trigger_state(urn, CODE, trigger_id)
        assert failures["left"] == 0
        assert state["notifications"] >= 3  # two refused with 503, then accepted
        assert len(lines) == 1
        assert lines[0]["event"]["Records"][0]["s3"]["object"]["key"] == "retried.txt"
        assert len(await records_of(h, urn, trigger_id)) == 1


# -- SNS: handshake and notifications -----------------------------------------------------------------------


@pytest.fixture
async def sns_stand_in() -> AsyncIterator[tuple[str, str, list[str], list[str]]]:
    """Two HTTP servers: one plays the SNS endpoint (answers ConfirmSubscription), the other an
    unrelated internal host. Yields (sns url, other url, requests seen by sns, by the other)."""
    seen_sns: list[str] = []
    seen_other: list[str] = []

    async def sns(request: web.Request) -> web.Response:
        seen_sns.append(request.path_qs)
        if request.query.get("redirect"):
            raise web.HTTPFound(f"{other_url}/metadata")
        return web.Response(text="<ConfirmSubscriptionResponse/>", content_type="text/xml")

    async def other(request: web.Request) -> web.Response:
        seen_other.append(request.path_qs)
        return web.Response(text="secret internal data")

    runners = []
    urls = []
    for handler in (sns, other):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    other_url = urls[1]
    yield urls[0], urls[1], seen_sns, seen_other
    for runner in runners:
        await runner.cleanup()


async def test_the_sns_handshake_fetches_only_the_configured_endpoint(
    tmp_path: Path, sns_stand_in: tuple[str, str, list[str], list[str]]
) -> None:
    sns_url, other_url, seen_sns, seen_other = sns_stand_in
    async with running(make_settings(tmp_path / "data")) as h:
        urn, _ = await recorder(h, tmp_path)
        created = await create_obs_trigger(
            h, urn, {"bucket": "in-bucket", "events": ["s3:ObjectCreated:*"], "sns_endpoint": sns_url}
        )

        def confirmation(url: str) -> dict[str, str]:
            return {
                "Type": "SubscriptionConfirmation",
                "MessageId": str(uuid.uuid4()),
                "Token": "2336412f37",
                "TopicArn": "arn:aws:sns:eu-de:123456789012:uploads",
                "Message": "You have chosen to subscribe to the topic arn:aws:sns:eu-de:123456789012:uploads.",
                "SubscribeURL": url,
            }

        async with aiohttp.ClientSession() as anonymous:
            post = functools.partial(anonymous.post, webhook_url(created), headers={"Content-Type": "text/plain"})
            for foreign in (
                f"{other_url}/latest/meta-data",
                f"http://127.0.0.1:{sns_url.rsplit(':', 1)[1]}@{other_url.removeprefix('http://')}/x",
                "file:///etc/passwd",
            ):
                async with post(data=json.dumps(confirmation(foreign))) as resp:
                    refused = await resp.json()
                    assert resp.status == 400 and refused["error_msg"].startswith("SubscribeURL:"), refused
            async with post(data=json.dumps(confirmation(f"{sns_url}/?redirect=1"))) as resp:
                assert resp.status == 503  # redirects are not followed
            confirm = f"{sns_url}/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:eu-de:123456789012:uploads&Token=2"
            async with post(data=json.dumps(confirmation(confirm))) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
        assert answer == {"confirmed": True, "topic_arn": "arn:aws:sns:eu-de:123456789012:uploads"}
        assert seen_other == []
        assert seen_sns == ["/?redirect=1", confirm.removeprefix(sns_url)]
        assert (await h.trigger_state(urn, CODE, created["trigger_id"]))["subscriptions_confirmed"] == 1


async def test_moto_s3_notifications_through_sns_reach_the_function(tmp_path: Path, s3_server: S3Server) -> None:
    clients = {
        "endpoint_url": s3_server.endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": s3_server.access_key,
        "aws_secret_access_key": s3_server.secret_key,
    }
    sns, s3_client = boto3.client("sns", **clients), boto3.client("s3", **clients)
    async with running(make_settings(tmp_path / "data", region="eu-de")) as h:
        urn, out = await recorder(h, tmp_path)
        bucket = unique("tb-")
        await s3(s3_client.create_bucket, Bucket=bucket)
        created = await create_obs_trigger(
            h,
            urn,
            {
                "bucket": bucket,
                "events": ["s3:ObjectCreated:*"],
                "endpoint": s3_server.endpoint,
                "access_key": s3_server.access_key,
                "secret_key": s3_server.secret_key,
            },
        )
        assert created["event_data"]["secret_key"] == "******"
        topic = (await s3(sns.create_topic, Name=unique("tb-")))["TopicArn"]
        await s3(sns.subscribe, TopicArn=topic, Protocol="http", Endpoint=webhook_url(created))
        configuration = {"TopicConfigurations": [{"Id": "tb", "TopicArn": topic, "Events": ALL_EVENTS}]}
        await s3(
            s3_client.put_bucket_notification_configuration, Bucket=bucket, NotificationConfiguration=configuration
        )
        await s3(s3_client.put_object, Bucket=bucket, Key="in/a b.txt", Body=b"hello")
        await s3(s3_client.delete_object, Bucket=bucket, Key="in/a b.txt")  # not in the trigger's events
        lines = await wait_until(lambda: read_jsonl(out), "the SNS-delivered invocation")
        state = await wait_for(
            lambda: _state_when(h, urn, created["trigger_id"], lambda s: s["notifications"] >= 3),
            "test event, put and delete notifications",
        )
        assert state["invocations"] == 1
        record = lines[0]["event"]["Records"][0]
        assert (record["eventSource"], record["awsRegion"], record["eventName"]) == (
            "aws:s3",
            "us-east-1",
            "ObjectCreated:Put",
        )
        assert record["s3"]["object"]["key"] == "in%2Fa+b.txt"
        assert record["s3"]["object"]["size"] == 5
        assert len(read_jsonl(out)) == 1


# -- EventGrid ---------------------------------------------------------------------------------------------------


async def test_eventgrid_triggers_get_the_same_upload_as_a_cloudevent(tmp_path: Path, rgw: RGW) -> None:
    async with running(make_settings(tmp_path / "data")) as h:
        obs_urn, obs_out = await recorder(h, tmp_path)
        eg_urn, eg_out = await recorder(h, tmp_path)
        bucket = new_bucket(rgw)
        created = await create_obs_trigger(h, obs_urn, {"bucket": bucket, "events": ["s3:ObjectCreated:*"]})
        eventgrid = {
            "trigger_type_code": "EVENTGRID",
            "event_data": {
                "channel_name": "default",
                "source_name": "HC.OBS.DWR",
                "bucket": bucket,
                "event_types": ["OBS:DWR:ObjectCreated:PUT"],
            },
        }
        async with h.http.post(h.fgs(f"/triggers/{eg_urn}"), json=eventgrid) as resp:
            assert resp.status == 201, await resp.text()
        await wire(rgw, bucket, webhook_url(created), ["s3:ObjectCreated:*"])
        etag = await put(rgw, bucket, "docs/report 1.pdf", b"%PDF-1.4 report")
        eg_lines = await wait_until(lambda: read_jsonl(eg_out), "the EventGrid invocation")
        obs_lines = await wait_until(lambda: read_jsonl(obs_out), "the OBS invocation")
        cloudevent = eg_lines[0]["event"]
        obs_record = obs_lines[0]["event"]["Records"][0]
        assert cloudevent["source"] == "HC.OBS.DWR"
        assert cloudevent["type"] == "OBS:DWR:ObjectCreated:PUT"
        assert cloudevent["specversion"] == "1.0"
        assert cloudevent["id"] == obs_record["responseElements"]["x-amz-request-id"]
        assert cloudevent["subject"] == "docs%2Freport+1.pdf"
        data = cloudevent["data"]
        assert (data["eventVersion"], data["eventSource"], data["eventName"]) == ("3.0", "OBS", "ObjectCreated:Put")
        assert data["obs"]["bucket"]["name"] == bucket
        assert data["obs"]["object"]["key"] == "docs%2Freport+1.pdf"
        assert data["obs"]["object"]["eTag"] == etag
        assert len(read_jsonl(eg_out)) == 1


# -- reconciliation ---------------------------------------------------------------------------------------------


async def test_reconciliation_invokes_uploads_whose_notification_was_lost_once(tmp_path: Path, rgw: RGW) -> None:
    settings = make_settings(
        tmp_path / "data",
        obs_endpoint=rgw.endpoint,
        obs_access_key=rgw.access_key,
        obs_secret_key=rgw.secret_key,
        obs_reconcile_settle_s=1.0,
        obs_reconcile_lookback_s=30.0,
    )
    async with running(settings) as h:
        urn, out = await recorder(h, tmp_path)
        bucket = new_bucket(rgw)
        await put(rgw, bucket, "old.jpg", b"before the trigger existed")
        await asyncio.sleep(1.1)  # S3 times have millisecond precision; keep "before" unambiguous
        created = await create_obs_trigger(
            h, urn, {"bucket": bucket, "events": ["s3:ObjectCreated:*"], "reconcile_interval_s": 1}
        )
        trigger_id = created["trigger_id"]
        # No notification configured yet: this upload's notification is "lost".
        lost_etag = await put(rgw, bucket, "lost.jpg", b"nobody told the trigger")
        lines = await wait_until(lambda: read_jsonl(out), "the synthetic invocation")
        record = lines[0]["event"]["Records"][0]
        assert record["triggerbus"] == {"synthetic": True, "reason": "reconciliation"}
        assert record["eventName"] == "ObjectCreated:Put"
        assert record["s3"]["object"]["key"] == "lost.jpg" and record["s3"]["object"]["eTag"] == lost_etag
        assert record["s3"]["object"]["size"] == len(b"nobody told the trigger")

        # Now notifications flow; an object seen both ways runs once.
        await wire(rgw, bucket, webhook_url(created), ["s3:ObjectCreated:*"])
        await put(rgw, bucket, "seen.jpg", b"notified")
        uploaded_at = time.time()
        await wait_until(lambda: [x for x in read_jsonl(out) if "seen.jpg" in json.dumps(x)], "seen.jpg")
        # Let the scan pass over seen.jpg twice (settled: uploaded more than settle_s before the scan).
        scans_then = (await h.trigger_state(urn, CODE, trigger_id))["reconcile"]["scans"]
        await wait_for(
            lambda: _state_when(
                h,
                urn,
                trigger_id,
                lambda s: s["reconcile"]["scans"] >= scans_then + 2 and time.time() > uploaded_at + 3,
            ),
            "two more scans",
        )
        state = await h.trigger_state(urn, CODE, trigger_id)
        assert state["reconcile"]["synthetic_invocations"] == 1
        assert state["reconcile"]["last_error"] is None
        keys = sorted(line["event"]["Records"][0]["s3"]["object"]["key"] for line in read_jsonl(out))
        assert keys == ["lost.jpg", "seen.jpg"]  # not old.jpg, and seen.jpg once
        seen = await records_of(h, urn, trigger_id, key="seen.jpg")
        assert len(seen) == 1
        assert (await records_of(h, urn, trigger_id, key="lost.jpg", synthetic="true")) != []
        async with h.http.get(h.fgs(f"/triggers/{urn}/OBS/{trigger_id}/checkpoint")) as resp:
            checkpoint = await resp.json()
            assert resp.status == 200, checkpoint
        assert checkpoint["reconcile_interval_s"] == 1 and checkpoint["reconcile_since"]


# -- recursion guard --------------------------------------------------------------------------------------------


async def test_the_recursion_guard_refuses_a_function_writing_into_its_trigger_bucket(tmp_path: Path, rgw: RGW) -> None:
    settings = make_settings(
        tmp_path / "data", obs_endpoint=rgw.endpoint, obs_access_key=rgw.access_key, obs_secret_key=rgw.secret_key
    )
    async with running(settings) as h:
        # Declared output bucket (the best practices' user data) equal to the trigger's bucket.
        writer, _ = await recorder(h, tmp_path, output_bucket="images-in")
        body = {"trigger_type_code": "OBS", "event_data": {"bucket": "images-in", "events": ["s3:ObjectCreated:*"]}}
        async with h.http.post(h.fgs(f"/triggers/{writer}"), json=body) as resp:
            refused = await resp.json()
        assert resp.status == 400 and refused["error_code"] == "FSS.0400"
        assert refused["error_msg"].startswith(
            "event_data.bucket: function " + writer.split(":")[6] + " writes its output to bucket 'images-in' "
            "(user_data output_bucket), the bucket this trigger listens to"
        )
        # An OBS async destination into the same bucket.
        sink, _ = await recorder(h, tmp_path)
        config = {"destination_config": {"on_success": {"destination": "OBS", "param": '{"bucket": "images-in"}'}}}
        await h.set_async_config(sink, config)
        async with h.http.post(h.fgs(f"/triggers/{sink}"), json=body) as resp:
            refused = await resp.json()
        assert resp.status == 400 and "async invoke config, OBS destination" in refused["error_msg"]
        # Two buckets: fine. An unclear user-data entry: created, with a warning.
        unclear, _ = await recorder(h, tmp_path, bucket="images-in")
        async with h.http.post(h.fgs(f"/triggers/{unclear}"), json=body) as resp:
            created = await resp.json()
        assert resp.status == 201, created
        assert "user_data bucket names bucket 'images-in'" in created["event_data"]["recursion_warning"]


# -- the seed best practices --------------------------------------------------------------------------------------


async def _best_practice(
    h: Harness, rgw: RGW, fixture: str, user_data: Callable[[str], dict[str, str]]
) -> tuple[str, str, bytes, str]:
    """Function from tests/fixtures/<fixture>, OBS trigger on a new input bucket (events Post and Put,
    as in the guide), upload image.jpg; returns (function urn, output bucket, input image, trigger id)."""
    input_bucket, output_bucket = new_bucket(rgw, "tb-in-"), new_bucket(rgw, "tb-out-")
    body = {
        "func_name": unique("image"),
        "runtime": "Python3.9",
        "handler": "index.handler",
        "code_type": "zip",
        "func_code": {"file": function_zip(fixture)},
        "timeout": 40,
        "memory_size": 256,
        "user_data": {"obs_endpoint": rgw.endpoint, **user_data(output_bucket)},
        "credentials": {"access_key": rgw.access_key, "secret_key": rgw.secret_key},
    }
    async with h.http.post(h.fgs("/functions"), json=body) as resp:
        fn = await resp.json()
        assert resp.status == 200, fn
    urn = str(fn["func_urn"])
    created = await create_obs_trigger(
        h, urn, {"bucket": input_bucket, "events": ["s3:ObjectCreated:Post", "s3:ObjectCreated:Put"]}
    )
    await wire(rgw, input_bucket, webhook_url(created), ["s3:ObjectCreated:*"])
    image = noise_jpeg()
    assert len(image) > 28 * 1024  # the guide's image.jpg is over 28 KB
    await put(rgw, input_bucket, "image.jpg", image)
    return urn, output_bucket, image, created["trigger_id"]


async def _output(h: Harness, rgw: RGW, urn: str, trigger_id: str, bucket: str) -> bytes:
    found = await wait_for(lambda: records_of(h, urn, trigger_id, key="image.jpg"), "the invocation record")
    record = await h.wait_terminal(urn, found[0]["request_id"], timeout=WAIT)
    assert record["status"] == "SUCCESS", record

    def read() -> bytes:
        response = rgw.minio().get_object(bucket, "image.jpg")
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    return await s3(read)


async def test_thumbnail_best_practice(tmp_path: Path, rgw: RGW) -> None:
    async with running(make_settings(tmp_path / "data")) as h:
        urn, output_bucket, image, trigger_id = await _best_practice(
            h, rgw, "obs_thumbnail", lambda out: {"output_bucket": out}
        )
        thumbnail = await _output(h, rgw, urn, trigger_id, output_bucket)
    assert len(thumbnail) < len(image)
    with Image.open(io.BytesIO(thumbnail)) as small, Image.open(io.BytesIO(image)) as big:
        assert small.format == "JPEG"
        assert max(small.size) == 160 and small.size[0] < big.size[0]


async def test_watermark_best_practice(tmp_path: Path, rgw: RGW) -> None:
    async with running(make_settings(tmp_path / "data")) as h:
        urn, output_bucket, image, trigger_id = await _best_practice(
            h, rgw, "obs_watermark", lambda out: {"obs_output_bucket": out, "obs_region": "us-east-1"}
        )
        marked = await _output(h, rgw, urn, trigger_id, output_bucket)
    with Image.open(io.BytesIO(marked)) as result, Image.open(io.BytesIO(image)) as original:
        assert result.size == original.size
        width, height = result.size
        band = (width // 2, height - max(8, height // 8) // 2)  # inside the white band, right of the caption
        assert min(result.convert("RGB").getpixel(band)) > 200  # white watermark band
        assert sum(original.convert("RGB").getpixel(band)) < 3 * 250  # the original there is noise
