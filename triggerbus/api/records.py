"""Async invocation records: list (FunctionGraph query API), active ones, one record's detail."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from invoker.records import RecordQuery
from schemas.errors import bad_request, not_found
from schemas.records import AsyncStatus
from triggerbus.api.common import json_response, query_int, service

BASE = "/v2/{project_id}/fgs/functions/{function_urn}"
MAX_ACTIVE_IDS = 10


def parse_query_time(name: str, raw: str) -> float:
    """``YYYY-MM-DDTHH:mm:ss`` in UTC as FunctionGraph documents it; an explicit offset or Z is honoured."""
    text = raw.strip().replace(" ", "T")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{name}: {raw!r} is not a time like 2024-05-01T08:30:00 (UTC)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


async def list_invocations(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    q = request.query
    status = None
    if q.get("status"):
        try:
            status = AsyncStatus(q["status"].upper())
        except ValueError:
            raise bad_request(
                f"status: must be one of {', '.join(s.value for s in AsyncStatus)} (got {q['status']!r})"
            ) from None
    limit = query_int(request, "limit", 100, low=1, high=500)
    marker = query_int(request, "marker", 0, low=0, high=10**9)
    end = parse_query_time("query_end_time", q["query_end_time"]) if q.get("query_end_time") else time.time()
    begin = parse_query_time("query_begin_time", q["query_begin_time"]) if q.get("query_begin_time") else end - 3600
    if begin > end:
        raise bad_request("query_begin_time must not be after query_end_time")
    source = {k[len("source.") :]: v for k, v in q.items() if k.startswith("source.") and len(k) > len("source.")}
    query = RecordQuery(
        function_urn=fn.qualified_urn,
        status=status,
        request_id=q.get("request_id") or None,
        begin=None if q.get("request_id") or q.get("redrive_of") else begin,
        end=None if q.get("request_id") or q.get("redrive_of") else end,
        trigger_id=q.get("trigger_id") or None,
        source=source,
        redrive_of=q.get("redrive_of") or None,
        marker=marker,
        limit=limit,
    )
    records, count = await svc.store.list_records(query)
    next_marker = marker + len(records) if marker + len(records) < count else 0
    return json_response(
        {"invocations": [r.to_api().dump() for r in records], "count": count, "next_marker": next_marker}
    )


async def active_invocations(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    ids = [i for i in request.query.get("requests", "").split(",") if i.strip()]
    if not ids:
        raise bad_request("requests: give 1 to 10 comma-separated request ids")
    if len(ids) > MAX_ACTIVE_IDS:
        raise bad_request(f"requests: at most {MAX_ACTIVE_IDS} request ids per call (got {len(ids)})")
    found = []
    for request_id in ids:
        record = await svc.store.get_record(request_id.strip())
        if record is not None and record.function_urn == fn.qualified_urn and not record.status.terminal:
            found.append(record.to_api().dump())
    return json_response({"invocations": found, "count": len(found), "next_marker": 0})


async def get_invocation(request: web.Request) -> web.Response:
    """Triggerbus extension: one record with its attempts, payload and destination."""
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    record = await svc.store.get_record(request.match_info["request_id"])
    if record is None or record.function_urn != fn.qualified_urn:
        raise not_found(f"async invocation {request.match_info['request_id']} of {fn.name} does not exist")
    attempts = await svc.store.list_attempts(record.request_id)
    body = record.to_api().dump()
    body["payload"] = record.payload.decode("utf-8", errors="replace")
    body["response"] = record.response.decode("utf-8", errors="replace")
    body["destination"] = record.destination
    body["attempt_details"] = [
        {
            "n": a.n,
            "start_time": datetime.fromtimestamp(a.start, UTC).isoformat(timespec="milliseconds"),
            "end_time": datetime.fromtimestamp(a.end, UTC).isoformat(timespec="milliseconds") if a.end else "",
            "status": a.status,
            "error_code": a.error_code,
            "error_message": a.error_message,
            "duration_ms": round(a.duration_ms, 3),
            "memory_used_mb": round(a.memory_mb, 3),
            "logs": a.logs,
        }
        for a in attempts
    ]
    return json_response(body)


async def redrive_invocation(request: web.Request) -> web.Response:
    """Triggerbus extension: run a FAIL or DISCARD invocation again under a new request id."""
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    old = request.match_info["request_id"]
    new = await svc.invocations.redrive(fn.qualified_urn, old)
    return json_response({"request_id": new, "redrive_of": old}, status=202)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post(BASE + "/async-invocations/{request_id}/redrive", redrive_invocation)
    router.add_get(BASE + "/async-invocations", list_invocations)
    router.add_get(BASE + "/async-invocations/{request_id}", get_invocation)
    router.add_get(BASE + "/active-async-invocations", active_invocations)
