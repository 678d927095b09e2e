"""APIG triggers end to end: HTTP request -> APIG event -> function -> HTTP response."""

from __future__ import annotations

import base64
import json
import time

import aiohttp
import pytest

from tests.integration.conftest import TOKEN, Harness

pytestmark = pytest.mark.integration

ECHO_EVENT = """
import base64, json, time
def handler(event, context):
    mode = event["queryStringParameters"].get("mode", "echo")
    if mode == "plain":
        return "just a string"
    if mode == "raise":
        raise ValueError("secret internals")
    if mode == "sleep":
        time.sleep(3)
    if mode == "binary":
        return {"statusCode": 201, "headers": {"Content-Type": "application/octet-stream", "X-Custom": "yes"},
                "body": base64.b64encode(b"\\x00\\x01binary").decode(), "isBase64Encoded": True}
    return {"statusCode": "200", "headers": {"Content-Type": "application/json"},
            "body": json.dumps(event), "isBase64Encoded": "false"}
"""


async def add_apig(harness: Harness, urn: str, path: str = "/echo", **extra: object) -> dict:
    data = {
        "name": "API_echo",
        "path": path,
        "req_method": "ANY",
        "auth": "NONE",
        "protocol": "HTTP",
        "match_mode": "NORMAL",
        "env_name": "RELEASE",
        "type": 1,
        "func_info": {"timeout": 1000},
    }
    data.update(extra)
    async with harness.http.post(
        harness.fgs(f"/triggers/{urn}"), json={"trigger_type_code": "APIG", "event_data": data}
    ) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return dict(body)


@pytest.fixture
async def public() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession() as session:
        yield session  # type: ignore[misc]


async def test_request_becomes_the_documented_apig_event(harness: Harness, public: aiohttp.ClientSession) -> None:
    urn = await harness.create_function("apig", ECHO_EVENT)
    trigger = await add_apig(harness, urn)
    async with public.post(
        trigger["event_data"]["invoke_url"] + "?responseType=html&a=1",
        data=b'{"test":"body"}',
        headers={"X-Forwarded-Port": "443", "User-Agent": "pytest"},
    ) as resp:
        assert resp.status == 200
        event = json.loads(await resp.text())
        request_id = resp.headers["X-Request-Id"]
    assert event["httpMethod"] == "POST"
    assert event["path"] == "/echo"
    assert event["queryStringParameters"] == {"responseType": "html", "a": "1"}
    assert event["pathParameters"] == {}
    assert event["headers"]["x-forwarded-port"] == "443"
    assert event["headers"]["user-agent"] == "pytest"
    assert all(key == key.lower() for key in event["headers"])
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b'{"test":"body"}'
    context = event["requestContext"]
    assert context["apiId"] == trigger["event_data"]["api_id"]
    assert context["requestId"] == request_id
    assert context["stage"] == "RELEASE"
    assert context["sourceIp"] == "127.0.0.1"


async def test_response_mapping_and_errors(harness: Harness, public: aiohttp.ClientSession) -> None:
    urn = await harness.create_function("apig2", ECHO_EVENT)
    url = (await add_apig(harness, urn))["event_data"]["invoke_url"]
    async with public.get(url, params={"mode": "binary"}) as resp:
        assert resp.status == 201
        assert resp.headers["X-Custom"] == "yes"
        assert await resp.read() == b"\x00\x01binary"
    async with public.get(url, params={"mode": "plain"}) as resp:
        body = await resp.json()
        assert resp.status == 500
        assert "not a valid APIG response" in body["error_msg"]
    async with public.get(url, params={"mode": "raise"}) as resp:
        text = await resp.text()
        assert resp.status == 500
        assert "secret internals" not in text  # no stack traces to public callers
    started = time.monotonic()
    async with public.get(url, params={"mode": "sleep"}) as resp:
        assert resp.status == 504
        assert (await resp.json())["error_code"] == "APIG.0203"
    assert time.monotonic() - started < 2.5  # backend timeout 1000 ms, not the 3 s the function takes


async def test_routing_rules(harness: Harness, public: aiohttp.ClientSession) -> None:
    urn = await harness.create_function("router", ECHO_EVENT)
    await add_apig(harness, urn, path="/users/{id}", req_method="GET")
    await add_apig(harness, urn, path="/files", match_mode="SWA")
    base = harness.base_url + "/apig"
    async with public.get(base + "/users/42") as resp:
        assert (await resp.json())["pathParameters"] == {"id": "42"}
    async with public.post(base + "/users/42") as resp:
        assert resp.status == 404
        assert (await resp.json())["error_code"] == "APIG.0101"
    async with public.get(base + "/files/a/b.txt") as resp:
        assert (await resp.json())["pathParameters"] == {"": "a/b.txt"}
    async with public.get(base + "/nothing") as resp:
        assert resp.status == 404


async def test_auth_modes(harness: Harness, public: aiohttp.ClientSession) -> None:
    urn = await harness.create_function("authfn", ECHO_EVENT)
    iam = (await add_apig(harness, urn, path="/iam", auth="IAM"))["event_data"]["invoke_url"]
    app = (await add_apig(harness, urn, path="/app", auth="APP", app_code="0123456789abcdef0123"))["event_data"]
    async with public.get(iam) as resp:
        assert resp.status == 401
    async with public.get(iam, headers={"X-Auth-Token": TOKEN}) as resp:
        assert resp.status == 200
    async with public.get(app["invoke_url"], headers={"X-Apig-AppCode": "wrong"}) as resp:
        assert resp.status == 401
    async with public.get(app["invoke_url"], headers={"X-Apig-AppCode": "0123456789abcdef0123"}) as resp:
        assert resp.status == 200


async def test_async_apig_returns_202_and_a_record(harness: Harness, public: aiohttp.ClientSession) -> None:
    urn = await harness.create_function("apigasync", ECHO_EVENT)
    url = (await add_apig(harness, urn, path="/later", func_info={"timeout": 1000, "invocation_type": "async"}))[
        "event_data"
    ]["invoke_url"]
    async with public.put(url, json={"x": 1}) as resp:
        assert resp.status == 202
        rid = (await resp.json())["request_id"]
    record = await harness.wait_terminal(urn, rid)
    assert record["status"] == "SUCCESS"
    assert record["trigger_type"] == "APIG"
    assert json.loads(record["payload"])["httpMethod"] == "PUT"


async def test_oversized_body_is_413(harness: Harness, public: aiohttp.ClientSession) -> None:
    urn = await harness.create_function("apigbig", ECHO_EVENT)
    url = (await add_apig(harness, urn, path="/big"))["event_data"]["invoke_url"]
    async with public.post(url, data=b"x" * (6 * 1024 * 1024 + 1)) as resp:
        assert resp.status == 413
