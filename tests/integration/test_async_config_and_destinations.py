"""Async invoke config API, destination cycle rejection, and real deliveries (function and S3/OBS)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import boto3
import pytest

from tests.integration.conftest import Harness, S3Server, make_settings, running

pytestmark = pytest.mark.integration

OK = "def handler(event, context):\n    return 'hello world!'\n"
FAIL = "def handler(event, context):\n    raise KeyError('missing')\n"
SINK = "def handler(event, context):\n    return event\n"


def fn_dest(urn: str) -> dict[str, str]:
    return {"destination": "FunctionGraph", "param": json.dumps({"func_urn": urn})}


async def put_config(harness: Harness, urn: str, body: dict) -> tuple[int, dict]:
    async with harness.http.put(harness.fgs(f"/functions/{urn}/async-invoke-config"), json=body) as resp:
        return resp.status, await resp.json()


async def test_config_round_trip_in_fg_shape(harness: Harness) -> None:
    a = await harness.create_function("a", OK)
    b = await harness.create_function("b", SINK)
    status, config = await put_config(
        harness,
        a,
        {
            "max_async_retry_attempts": 3,
            "max_async_event_age_in_seconds": 600,
            "destination_config": {"on_success": fn_dest(b)},
        },
    )
    assert status == 200, config
    assert config["func_urn"] == a
    assert config["max_async_retry_attempts"] == 3
    assert config["max_async_event_age_in_seconds"] == 600
    on_success = config["destination_config"]["on_success"]
    assert on_success["destination"] == "FunctionGraph"
    assert isinstance(on_success["param"], str)  # a JSON string, as FunctionGraph documents
    assert json.loads(on_success["param"]) == {"func_urn": b}
    assert config["destination_config"]["on_failure"] is None
    assert config["created_time"] and config["last_modified"]
    async with harness.http.get(harness.fgs(f"/functions/{a}/async-invoke-config")) as resp:
        assert (await resp.json())["max_async_retry_attempts"] == 3
    async with harness.http.delete(harness.fgs(f"/functions/{a}/async-invoke-config")) as resp:
        assert resp.status == 204
    async with harness.http.get(harness.fgs(f"/functions/{a}/async-invoke-config")) as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_async_retry_attempts": 4}, "max_async_retry_attempts: Input should be less than or equal to 3"),
        ({"max_async_retry_attempts": -1}, "max_async_retry_attempts: Input should be greater than or equal to 0"),
        ({"max_async_event_age_in_seconds": 0}, "max_async_event_age_in_seconds: Input should be greater than"),
        ({"max_async_event_age_in_seconds": 86401}, "max_async_event_age_in_seconds: Input should be less than"),
        (
            {"destination_config": {"on_success": {"destination": "Email", "param": "{}"}}},
            "destination_config.on_success.destination: must be one of FunctionGraph, OBS, SMN, DIS",
        ),
        (
            {"destination_config": {"on_success": {"destination": "OBS", "param": "{not json"}}},
            "param must be a JSON string",
        ),
        (
            {"destination_config": {"on_failure": {"destination": "SMN", "param": '{"topic_urn": "x"}'}}},
            "topic_urn",
        ),
        (
            {"destination_config": {"on_failure": {"destination": "DIS", "param": '{"stream_name": "s"}'}}},
            "DIS is not available in this service",
        ),
        (
            {"destination_config": {"on_failure": {"destination": "OBS", "param": '{"bucket": "out-bucket"}'}}},
            "OBS is not available in this service; start the service with an S3 endpoint",
        ),
        (
            {"destination_config": {"on_success": fn_dest("urn:fss:local:proj1:function:default:ghost:latest")}},
            "destination function urn:fss:local:proj1:function:default:ghost:latest does not exist",
        ),
    ],
)
async def test_invalid_configs_are_refused_precisely(harness: Harness, body: dict, message: str) -> None:
    urn = await harness.create_function("cfg", OK)
    status, error = await put_config(harness, urn, body)
    assert status == 400, error
    assert error["error_code"] == "FSS.0400"
    assert message in error["error_msg"]


async def test_destination_cycles_are_refused(harness: Harness) -> None:
    a = await harness.create_function("ca", OK)
    b = await harness.create_function("cb", OK)
    c = await harness.create_function("cc", OK)
    assert (await put_config(harness, a, {"destination_config": {"on_success": fn_dest(b)}}))[0] == 200
    assert (await put_config(harness, b, {"destination_config": {"on_failure": fn_dest(c)}}))[0] == 200
    status, error = await put_config(harness, c, {"destination_config": {"on_success": fn_dest(a)}})
    assert status == 400
    assert "cycle" in error["error_msg"]
    assert "ca" in error["error_msg"] and "cb" in error["error_msg"] and "cc" in error["error_msg"]
    status, error = await put_config(harness, a, {"destination_config": {"on_failure": fn_dest(a)}})
    assert status == 400
    assert "cycle" in error["error_msg"]
    # replacing an edge that removes the cycle is fine
    assert (await put_config(harness, b, {}))[0] == 200
    assert (await put_config(harness, c, {"destination_config": {"on_success": fn_dest(a)}}))[0] == 200


async def test_function_destination_receives_the_failure_event(harness: Harness) -> None:
    failing = await harness.create_function("bad", FAIL)
    sink = await harness.create_function("sink", SINK)
    status, _ = await put_config(
        harness,
        failing,
        {"max_async_retry_attempts": 1, "destination_config": {"on_failure": fn_dest(sink)}},
    )
    assert status == 200
    rid = await harness.invoke_async(failing, {"order": 42})
    record = await harness.wait_terminal(failing, rid)
    assert record["status"] == "FAIL"
    assert record["destination"]["status"] == "delivered"
    sink_record = await harness.wait_terminal(sink, record["destination"]["request_id"])
    event = json.loads(sink_record["payload"])
    assert event["request_context"]["request_id"] == rid
    assert event["request_context"]["function_urn"] == failing
    assert event["request_context"]["condition"] == "UnhandledInvocationError"
    assert event["request_context"]["approximate_invoke_count"] == 2
    assert json.loads(event["request_payload"]) == {"order": 42}
    assert event["response_context"]["status_code"] == 500
    assert json.loads(event["response_payload"])["errorType"] == "KeyError"


async def test_obs_destination_writes_an_object_through_the_s3_api(tmp_path: Path, s3_server: S3Server) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="fg-results")
    settings = make_settings(
        tmp_path / "data",
        obs_endpoint=s3_server.endpoint,
        obs_access_key=s3_server.access_key,
        obs_secret_key=s3_server.secret_key,
    )
    async with running(settings) as harness:
        urn = await harness.create_function("obsok", OK)
        obs = {
            "destination": "OBS",
            "param": json.dumps({"bucket": "fg-results", "prefix": "success/", "expires": 5}),
        }
        status, body = await put_config(harness, urn, {"destination_config": {"on_success": obs}})
        assert status == 200, body
        rid = await harness.invoke_async(urn, {"file": "a.png"})
        deadline = time.monotonic() + 20
        while True:
            record = await harness.record(urn, rid)
            if record["destination"].get("status") == "delivered":
                break
            assert time.monotonic() < deadline, record
            await asyncio.sleep(0.1)
        assert record["destination"]["location"] == f"obs://fg-results/success/{rid}.json"
    obj = s3.get_object(Bucket="fg-results", Key=f"success/{rid}.json")
    event = json.loads(obj["Body"].read())
    assert event["request_context"]["request_id"] == rid
    assert event["response_payload"] == "hello world!"
    assert event["response_context"] == {"status_code": 200, "function_error": ""}
    assert obj["ContentType"] == "application/json"


async def test_obs_delivery_is_retried_until_the_bucket_exists(tmp_path: Path, s3_server: S3Server) -> None:
    settings = make_settings(
        tmp_path / "data",
        obs_endpoint=s3_server.endpoint,
        obs_access_key=s3_server.access_key,
        obs_secret_key=s3_server.secret_key,
    )
    s3 = boto3.client(
        "s3", endpoint_url=s3_server.endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    async with running(settings) as harness:
        urn = await harness.create_function("obslate", FAIL)
        obs = {"destination": "OBS", "param": json.dumps({"bucket": "late-bucket"})}
        assert (
            await put_config(harness, urn, {"max_async_retry_attempts": 0, "destination_config": {"on_failure": obs}})
        )[0] == 200
        rid = await harness.invoke_async(urn, {})
        deadline = time.monotonic() + 20
        while (await harness.record(urn, rid))["destination"].get("status") != "retrying":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        s3.create_bucket(Bucket="late-bucket")
        while (await harness.record(urn, rid))["destination"].get("status") != "delivered":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    body = json.loads(s3.get_object(Bucket="late-bucket", Key=f"{rid}.json")["Body"].read())
    assert body["request_context"]["condition"] == "UnhandledInvocationError"
