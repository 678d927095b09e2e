"""HTTP functions (container-image style): POST <code_url>/invoke with the X-CFF-* headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from invoker.runtime.base import ErrorCategory, FunctionSpec, InvocationRequest
from invoker.runtime.http_runtime import HttpRuntime, parse_retry_after
from tests.integration.conftest import Harness

pytestmark = pytest.mark.integration


@dataclass
class FakeFunction:
    """A real HTTP server playing the user's container function."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "ok"
    throttles: int = 0
    retry_after: str = "1"  # the Retry-After of the 429s


@pytest.fixture
async def function_server() -> AsyncIterator[FakeFunction]:
    state = FakeFunction()

    async def invoke(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        state.requests.append({"headers": dict(request.headers), "body": body})
        mode = json.loads(body).get("mode", state.mode) if body else state.mode
        if mode == "text":
            return web.Response(text="plain words")
        if mode == "error":
            return web.Response(status=500, text="kaboom")
        if mode == "throttle" and state.throttles > 0:
            state.throttles -= 1
            return web.Response(status=429, headers={"Retry-After": state.retry_after})
        if mode == "slow":
            await asyncio.sleep(5)
        if mode == "huge":
            return web.Response(body=b"x" * (7 * 1024 * 1024))
        return web.json_response({"got": json.loads(body or b"{}")})

    app = web.Application()
    app.router.add_post("/invoke", invoke)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


def spec(url: str, timeout: int = 3) -> FunctionSpec:
    return FunctionSpec(
        urn="urn:fss:local:p:function:default:web:latest", name="web", package="default", version="latest",
        project_id="p", region="local", runtime="http", handler="", memory_mb=256, timeout_s=timeout,
        code_dir=None, code_digest="d", code_url=url, credentials={"access_key": "AK", "secret_key": "SK"},
    )  # fmt: skip


@pytest.fixture
async def runtime() -> AsyncIterator[HttpRuntime]:
    rt = HttpRuntime(max_result_bytes=6 * 1024 * 1024)
    await rt.start()
    yield rt
    await rt.close()


async def test_event_and_cff_headers_reach_the_function(runtime: HttpRuntime, function_server: FakeFunction) -> None:
    result = await runtime.invoke(spec(function_server.url), InvocationRequest("req-1", b'{"a": 1}', "async"))
    assert result.ok
    assert json.loads(result.body) == {"got": {"a": 1}}
    headers = function_server.requests[0]["headers"]
    assert headers["X-CFF-Request-Id"] == "req-1"
    assert headers["X-CFF-Func-Name"] == "web"
    assert headers["X-CFF-Func-Version"] == "latest"
    assert headers["X-CFF-Memory"] == "256"
    assert headers["X-CFF-Timeout"] == "3"
    assert headers["X-CFF-Project-Id"] == "p"
    assert headers["X-CFF-Package"] == "default"
    assert headers["X-CFF-Region"] == "local"
    assert headers["X-CFF-Invoke-Type"] == "async"
    assert headers["X-CFF-Access-Key"] == "AK"
    assert "Start invoke request 'req-1'" in result.logs


@pytest.mark.parametrize(
    ("mode", "category"),
    [
        ("error", ErrorCategory.CODE_EXCEPTION),
        ("throttle", ErrorCategory.THROTTLED),
        ("slow", ErrorCategory.TIMEOUT),
        ("huge", ErrorCategory.INVALID_RESULT),
    ],
)
async def test_failures_are_classified(
    runtime: HttpRuntime, function_server: FakeFunction, mode: str, category: ErrorCategory
) -> None:
    function_server.throttles = 1
    result = await runtime.invoke(
        spec(function_server.url, timeout=1), InvocationRequest("r", json.dumps({"mode": mode}).encode())
    )
    assert result.error is not None
    assert result.error.category is category
    if mode == "throttle":
        assert result.error.retry_after_s == 1.0
    if mode == "error":
        assert "answered 500: kaboom" in result.error.message


async def test_plain_text_results_become_json_strings(runtime: HttpRuntime, function_server: FakeFunction) -> None:
    result = await runtime.invoke(spec(function_server.url), InvocationRequest("r", b'{"mode": "text"}'))
    assert json.loads(result.body) == "plain words"


async def test_unreachable_function_is_a_system_error(runtime: HttpRuntime) -> None:
    result = await runtime.invoke(spec("http://127.0.0.1:9"), InvocationRequest("r", b"{}"))
    assert result.error is not None
    assert result.error.category is ErrorCategory.SYSTEM_ERROR
    assert "unreachable" in result.error.message


def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert 0 <= (parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT") or 0) > 1000


async def test_async_retry_honours_retry_after(harness: Harness, function_server: FakeFunction) -> None:
    body = {"func_name": "web", "runtime": "http", "code_url": function_server.url}
    async with harness.http.post(harness.fgs("/functions"), json=body) as resp:
        assert resp.status == 200, await resp.text()
    urn = harness.urn("web")
    function_server.throttles = 1
    rid = await harness.invoke_async(urn, {"mode": "throttle"})
    record = await harness.wait_terminal(urn, rid)
    assert record["status"] == "SUCCESS"
    first, second = record["attempt_details"]
    assert first["error_code"] == 4290
    from datetime import datetime

    gap = datetime.fromisoformat(second["start_time"]) - datetime.fromisoformat(first["end_time"])
    assert gap.total_seconds() >= 0.95  # waited for Retry-After: 1, not the 0.05 s test backoff
