"""Invocation API end to end: sync and async calls, records and their queries, cancel, limits."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime

import pytest

from tests.integration.conftest import Harness

pytestmark = pytest.mark.integration

ECHO = """
import time
def handler(event, context):
    print("echo", event)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("fail"):
        raise RuntimeError("asked to fail")
    return {"event": event, "request_id": context.getRequestID()}
"""


async def test_sync_invoke_returns_the_result_and_fg_headers(harness: Harness) -> None:
    urn = await harness.create_function("echo", ECHO)
    async with harness.http.post(
        harness.fgs(f"/functions/{urn}/invocations"), json={"a": 1}, headers={"X-Cff-Log-Type": "tail"}
    ) as resp:
        body = await resp.json()
        headers = resp.headers
    assert resp.status == 200
    assert body["event"] == {"a": 1}
    assert body["request_id"] == headers["X-Cff-Request-Id"]
    assert headers["X-Is-Func-Err"] == "false"
    summary = json.loads(headers["X-Cff-Invoke-Summary"])
    assert set(summary) == {"duration", "billingDuration", "memorySize", "memoryUsed"}
    assert summary["memorySize"] == 256
    log = base64.b64decode(headers["X-Cff-Function-Log"]).decode()
    assert f"Start invoke request '{body['request_id']}', version: latest" in log
    assert "echo {'a': 1}" in log
    assert f"Finish invoke request '{body['request_id']}'(invoke Success), duration: " in log
    assert "billing duration: " in log and "memory used: " in log


async def test_sync_invoke_v1_wraps_the_result(harness: Harness) -> None:
    urn = await harness.create_function("echo1", ECHO)
    async with harness.http.post(
        harness.fgs(f"/functions/{urn}/invocations"), json={"b": 2}, headers={"X-CFF-Request-Version": "v1"}
    ) as resp:
        body = await resp.json()
    assert set(body) == {"request_id", "result", "log", "status", "error_code"}
    assert json.loads(body["result"])["event"] == {"b": 2}
    assert body["status"] == 200


async def test_sync_function_error(harness: Harness) -> None:
    urn = await harness.create_function("failing", ECHO)
    async with harness.http.post(harness.fgs(f"/functions/{urn}/invocations"), json={"fail": True}) as resp:
        body = await resp.json()
        assert resp.headers["X-Is-Func-Err"] == "true"
        assert resp.headers["X-Func-Err-Code"] == "4101"
    assert body["errorType"] == "RuntimeError"
    assert body["errorMessage"] == "asked to fail"
    assert any("raise RuntimeError" in line for line in body["stackTrace"])


async def test_sync_timeout_is_reported(harness: Harness) -> None:
    urn = await harness.create_function("sleepy", ECHO, timeout=3)
    async with harness.http.post(harness.fgs(f"/functions/{urn}/invocations"), json={"sleep": 10}) as resp:
        body = await resp.json()
        assert resp.headers["X-Func-Err-Code"] == "4104"
    assert "timed out" in body["errorMessage"]


async def test_sync_over_max_instances_is_throttled(harness: Harness) -> None:
    urn = await harness.create_function("single", ECHO, max_instance_num=1)
    slow = asyncio.create_task(harness.http.post(harness.fgs(f"/functions/{urn}/invocations"), json={"sleep": 1.5}))
    await asyncio.sleep(0.5)
    async with harness.http.post(harness.fgs(f"/functions/{urn}/invocations"), json={}) as resp:
        body = await resp.json()
    assert resp.status == 429
    assert body["error_code"] == "FSS.0429"
    assert "limit of 1 concurrent" in body["error_msg"]
    first = await slow
    assert first.status == 200
    first.release()


async def test_unknown_function_is_404(harness: Harness) -> None:
    urn = harness.urn("nobody")
    for path in ("invocations", "invocations-async"):
        async with harness.http.post(harness.fgs(f"/functions/{urn}/{path}"), json={}) as resp:
            body = await resp.json()
        assert resp.status == 404
        assert body["error_code"] == "FSS.0404"


async def test_request_bodies_are_bounded(harness: Harness) -> None:
    urn = await harness.create_function("bounded", ECHO)
    big_async = {"x": "a" * (256 * 1024)}
    async with harness.http.post(harness.fgs(f"/functions/{urn}/invocations-async"), json=big_async) as resp:
        assert resp.status == 413
        assert (await resp.json())["error_code"] == "FSS.0413"
    big_sync = {"x": "a" * (6 * 1024 * 1024)}
    async with harness.http.post(harness.fgs(f"/functions/{urn}/invocations"), json=big_sync) as resp:
        assert resp.status == 413
    async with harness.http.post(harness.fgs(f"/functions/{urn}/invocations"), data=b"{oops") as resp:
        assert resp.status == 400
        assert "not valid JSON" in (await resp.json())["error_msg"]


async def test_async_invoke_records_lifecycle(harness: Harness) -> None:
    urn = await harness.create_function("asyncecho", ECHO)
    rid = await harness.invoke_async(urn, {"n": 1})
    record = await harness.wait_terminal(urn, rid)
    assert record["status"] == "SUCCESS"
    assert record["error_code"] == 0
    assert record["error_message"] == ""
    assert record["start_time"] and record["end_time"]
    assert json.loads(record["payload"]) == {"n": 1}
    assert json.loads(record["response"])["request_id"] == rid
    assert len(record["attempt_details"]) == 1
    assert f"Start invoke request '{rid}'" in record["attempt_details"][0]["logs"]

    async with harness.http.get(harness.fgs(f"/functions/{urn}/async-invocations")) as resp:
        listing = await resp.json()
    assert listing["count"] == 1
    item = listing["invocations"][0]
    assert {"request_id", "status", "error_message", "error_code", "start_time", "end_time"} <= set(item)
    assert datetime.strptime(item["start_time"], "%Y-%m-%dT%H:%M:%S")  # FunctionGraph's format


async def test_async_failure_is_retried_then_fails(harness: Harness) -> None:
    urn = await harness.create_function("asyncfail", ECHO)
    async with harness.http.put(
        harness.fgs(f"/functions/{urn}/async-invoke-config"), json={"max_async_retry_attempts": 2}
    ) as resp:
        assert resp.status == 200
    rid = await harness.invoke_async(urn, {"fail": True})
    record = await harness.wait_terminal(urn, rid)
    assert record["status"] == "FAIL"
    assert record["attempts"] == 3
    assert record["error_code"] == 4101
    assert record["error_message"] == "RuntimeError: asked to fail"
    assert [a["n"] for a in record["attempt_details"]] == [1, 2, 3]


async def test_record_queries_filter_and_page(harness: Harness) -> None:
    urn = await harness.create_function("many", ECHO)
    ids = [await harness.invoke_async(urn, {"i": i, "fail": i % 3 == 0}) for i in range(9)]
    async with harness.http.put(
        harness.fgs(f"/functions/{urn}/async-invoke-config"), json={"max_async_retry_attempts": 0}
    ) as resp:
        assert resp.status == 200
    for rid in ids:
        await harness.wait_terminal(urn, rid)
    base = harness.fgs(f"/functions/{urn}/async-invocations")
    async with harness.http.get(base, params={"status": "FAIL"}) as resp:
        failed = await resp.json()
    assert failed["count"] == 3
    assert all(r["status"] == "FAIL" for r in failed["invocations"])
    async with harness.http.get(base, params={"request_id": ids[4]}) as resp:
        one = await resp.json()
    assert [r["request_id"] for r in one["invocations"]] == [ids[4]]

    seen: list[str] = []
    marker = 0
    while True:
        async with harness.http.get(base, params={"limit": 4, "marker": marker}) as resp:
            page = await resp.json()
        seen.extend(r["request_id"] for r in page["invocations"])
        if page["next_marker"] == 0:
            break
        marker = page["next_marker"]
    assert sorted(seen) == sorted(ids)

    future = datetime.fromtimestamp(time.time() + 7200, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    async with harness.http.get(base, params={"query_begin_time": future}) as resp:
        assert resp.status == 400  # begin after the default end (now)
    past = datetime.fromtimestamp(time.time() - 7200, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    async with harness.http.get(base, params={"query_end_time": past}) as resp:
        assert (await resp.json())["count"] == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "DONE"}, "status: must be one of WAIT, RUNNING, SUCCESS, FAIL, DISCARD"),
        ({"limit": "501"}, "limit: must be between 1 and 500 (got 501)"),
        ({"limit": "ten"}, "limit: must be an integer"),
        ({"marker": "-1"}, "marker: must be between 0"),
        ({"query_begin_time": "yesterday"}, "query_begin_time: 'yesterday' is not a time"),
    ],
)
async def test_record_query_validation(harness: Harness, params: dict, message: str) -> None:
    urn = await harness.create_function("q", ECHO)
    async with harness.http.get(harness.fgs(f"/functions/{urn}/async-invocations"), params=params) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert message in body["error_msg"]


async def test_active_invocations_and_cancel(harness: Harness) -> None:
    urn = await harness.create_function("slowone", ECHO, max_instance_num=1)
    running = await harness.invoke_async(urn, {"sleep": 5})
    waiting = await harness.invoke_async(urn, {"n": 2})
    await asyncio.sleep(1.0)
    async with harness.http.get(
        harness.fgs(f"/functions/{urn}/active-async-invocations"), params={"requests": f"{running},{waiting}"}
    ) as resp:
        active = await resp.json()
    statuses = {r["request_id"]: r["status"] for r in active["invocations"]}
    assert statuses == {running: "RUNNING", waiting: "WAIT"}

    for rid in (waiting, running):
        async with harness.http.post(harness.fgs(f"/functions/{urn}/cancel"), json={"request_id": rid}) as resp:
            assert resp.status == 200
            assert await resp.json() is None
    for rid in (waiting, running):
        record = await harness.wait_terminal(urn, rid, timeout=10)
        assert record["status"] == "DISCARD"
        assert record["error_code"] == 4208
        assert record["error_message"] == "function invocation canceled"

    async with harness.http.post(harness.fgs(f"/functions/{urn}/cancel"), json={"request_id": running}) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert "already finished" in body["error_msg"]
    async with harness.http.post(harness.fgs(f"/functions/{urn}/cancel"), json={"request_id": "nope"}) as resp:
        assert resp.status == 400
        assert "Invalid RequestId" in (await resp.json())["error_msg"]
    ids = ",".join(f"id{i}" for i in range(11))
    async with harness.http.get(
        harness.fgs(f"/functions/{urn}/active-async-invocations"), params={"requests": ids}
    ) as resp:
        assert resp.status == 400


async def test_large_payloads_arrive_whole(harness: Harness) -> None:
    urn = await harness.create_function(
        "size", "def handler(event, context):\n    return {'n': len(event['x'])}\n", memory_size=512
    )
    big = "a" * (5 * 1024 * 1024)  # many TCP chunks
    async with harness.http.post(harness.fgs(f"/functions/{urn}/invocations"), json={"x": big}) as resp:
        assert await resp.json() == {"n": len(big)}
    medium = "b" * (200 * 1024)
    rid = await harness.invoke_async(urn, {"x": medium})
    record = await harness.wait_terminal(urn, rid)
    assert json.loads(record["response"]) == {"n": len(medium)}
