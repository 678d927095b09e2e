"""Invoking functions: sync (``/invocations``), async (``/invocations-async``), cancel."""

from __future__ import annotations

import base64
import json

from aiohttp import web

from invoker import tracing
from invoker.runtime.base import ErrorCategory, InvocationResult
from schemas.errors import internal, throttled
from schemas.records import StopAsyncInvocationRequest
from triggerbus.api.common import json_response, parse_json, read_body, read_model, service

BASE = "/v2/{project_id}/fgs/functions/{function_urn}"
LOG_TAIL_BYTES = 4096


def _summary(result: InvocationResult, memory_size: int) -> str:
    return json.dumps(
        {
            "duration": round(result.duration_ms, 3),
            "billingDuration": result.billing_duration_ms,
            "memorySize": memory_size,
            "memoryUsed": round(result.memory_used_mb, 3),
        }
    )


async def invoke_sync(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    body = await read_body(request, svc.settings.max_sync_body)
    parse_json(body, empty={})  # the event must be JSON, as on FunctionGraph
    payload = body if body.strip() else b"{}"
    result = await svc.invocations.invoke_sync(fn.qualified_urn, payload, trace=tracing.from_headers(request.headers))
    error = result.error
    if error is not None and error.category is ErrorCategory.SYSTEM_ERROR:
        raise internal(f"invocation {result.request_id} failed: {error.message}")
    if error is not None and error.category is ErrorCategory.THROTTLED:
        raise throttled(f"the HTTP function throttled invocation {result.request_id}")
    headers = {
        "X-Cff-Request-Id": result.request_id,
        "X-Cff-Invoke-Summary": _summary(result, fn.memory_size),
        "X-CFF-Billing-Duration": str(result.billing_duration_ms),
        "X-Func-Err-Code": str(error.code if error else 0),
        "X-Is-Func-Err": "true" if error else "false",
    }
    version = request.headers.get("X-CFF-Request-Version", "v0").lower()
    headers["X-Cff-Response-Version"] = "v1" if version == "v1" else "v0"
    tail = request.headers.get("X-Cff-Log-Type", "").lower() == "tail"
    log_tail = result.logs.encode()[-LOG_TAIL_BYTES:].decode("utf-8", errors="ignore") if tail else ""
    if tail:
        headers["X-Cff-Function-Log"] = base64.b64encode(log_tail.encode()).decode()
    if version == "v1":
        return json_response(
            {
                "request_id": result.request_id,
                "result": result.body.decode("utf-8", errors="replace"),
                "log": log_tail,
                "status": 200 if error is None else 500,
                "error_code": "" if error is None else str(error.code),
            },
            headers=headers,
        )
    return web.Response(body=result.body, status=200, content_type="application/json", headers=headers)


async def invoke_async(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    body = await read_body(request, svc.settings.max_async_body)
    parse_json(body, empty={})
    payload = body.decode("utf-8") if body.strip() else "{}"
    request_id = await svc.invocations.enqueue(fn.qualified_urn, payload, trace=tracing.from_headers(request.headers))
    return json_response({"request_id": request_id}, status=202)


async def cancel(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    req = await read_model(request, StopAsyncInvocationRequest, 16 * 1024)
    await svc.invocations.cancel(fn.qualified_urn, req.request_id)
    return json_response(None)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post(BASE + "/invocations", invoke_sync)
    router.add_post(BASE + "/invocations-async", invoke_async)
    router.add_post(BASE + "/cancel", cancel)
