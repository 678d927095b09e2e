"""Console pages: async invocation records (filters, paging), one record, the redrive action."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from invoker.records import RecordQuery
from schemas.errors import bad_request, not_found
from schemas.records import AsyncStatus
from triggerbus.api.common import service
from triggerbus.console.functions import current_project, function_of, remember_project
from triggerbus.console.render import MAX_MARKER, page, record_path, redirect
from triggerbus.invocations import REDRIVABLE

PAGE_SIZES = (20, 50, 100, 200, 500)
DEFAULT_WINDOW_S = 86400.0
MAX_SOURCE_PAIRS = 8


@dataclass(slots=True)
class RecordFilter:
    function: str = ""
    status: str = ""
    begin: str = ""  # YYYY-MM-DDTHH:MM[:SS], UTC, as the datetime-local inputs send it
    end: str = ""
    request_id: str = ""
    source: str = ""  # key=value pairs, space or comma separated
    limit: int = 50
    marker: int = 0
    pairs: dict[str, str] = field(default_factory=dict)

    def params(self, **changes: Any) -> dict[str, Any]:
        values = {
            "function": self.function,
            "status": self.status,
            "begin": self.begin,
            "end": self.end,
            "request_id": self.request_id,
            "source": self.source,
            "limit": self.limit,
            "marker": self.marker,
        }
        values.update(changes)
        return values


def _time(name: str, raw: str) -> float | None:
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace(" ", "T").replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{name}: {raw!r} is not a time like 2024-05-01T08:30 (UTC)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def parse_source(text: str) -> dict[str, str]:
    """``topic=orders partition=0`` (or comma separated) -> the API's ``source.<key>`` filters."""
    pairs: dict[str, str] = {}
    for item in text.replace(",", " ").split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise bad_request(f"source: {item!r} is not key=value (e.g. topic=orders partition=0 offset=42)")
        pairs[key] = value
    if len(pairs) > MAX_SOURCE_PAIRS:
        raise bad_request(f"source: at most {MAX_SOURCE_PAIRS} key=value pairs")
    return pairs


def parse_filter(request: web.Request) -> RecordFilter:
    q = request.query
    status = q.get("status", "").upper()
    if status and status not in AsyncStatus.__members__:
        raise bad_request(f"status: must be one of {', '.join(s.value for s in AsyncStatus)} (got {status!r})")
    try:
        limit = int(q.get("limit") or 50)
        marker = min(max(0, int(q.get("marker") or 0)), MAX_MARKER)
    except ValueError:
        raise bad_request("limit and marker must be integers") from None
    source = q.get("source", "").strip()
    return RecordFilter(
        function=q.get("function", ""),
        status=status,
        begin=q.get("begin", "").strip(),
        end=q.get("end", "").strip(),
        request_id=q.get("request_id", "").strip(),
        source=source,
        limit=limit if limit in PAGE_SIZES else 50,
        marker=marker,
        pairs=parse_source(source),
    )


async def records_page(request: web.Request) -> web.Response:
    svc = service(request)
    project = current_project(request)
    flt = parse_filter(request)
    functions, _ = await svc.store.list_functions(project, 0, 400)
    records: list[Any] = []
    count = 0
    fn = None
    if not flt.function and functions:
        flt.function = functions[0].qualified_urn
    if flt.function:
        fn = await svc.registry.require(flt.function)
        flt.function = fn.qualified_urn
        end = _time("end", flt.end) or time.time()
        begin = _time("begin", flt.begin) or end - DEFAULT_WINDOW_S
        query = RecordQuery(
            function_urn=fn.qualified_urn,
            status=AsyncStatus(flt.status) if flt.status else None,
            request_id=flt.request_id or None,
            begin=None if flt.request_id else begin,
            end=None if flt.request_id else end,
            source=flt.pairs,
            marker=flt.marker,
            limit=flt.limit,
        )
        records, count = await svc.store.list_records(query)
    shown_to = flt.marker + len(records)
    response = page(
        request,
        "records.html",
        title="Async invocation records",
        project=project,
        functions=functions,
        flt=flt,
        fn=fn,
        statuses=[s.value for s in AsyncStatus],
        page_sizes=PAGE_SIZES,
        records=records,
        count=count,
        next_params=flt.params(marker=shown_to) if shown_to < count else None,
        prev_params=flt.params(marker=max(0, flt.marker - flt.limit)) if flt.marker else None,
    )
    return remember_project(request, response)


async def record_page(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await function_of(request)
    record = await svc.store.get_record(request.match_info["request_id"])
    if record is None or record.function_urn != fn.qualified_urn:
        raise not_found(f"async invocation {request.match_info['request_id']} of {fn.name} does not exist")
    attempts = await svc.store.list_attempts(record.request_id)
    redrives, _ = await svc.store.list_records(
        RecordQuery(function_urn=fn.qualified_urn, redrive_of=record.request_id, limit=20)
    )
    return page(
        request,
        "record.html",
        title=f"Record {record.request_id}",
        fn=fn,
        record=record,
        attempts=attempts,
        redrives=redrives,
        redrivable=record.status in REDRIVABLE,
    )


async def redrive(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await function_of(request)
    new_id = await svc.invocations.redrive(fn.qualified_urn, request.match_info["request_id"])
    return redirect(record_path(fn.qualified_urn, new_id))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/records", records_page)
    router.add_get("/functions/{urn}/records/{request_id}", record_page)
    router.add_post("/functions/{urn}/records/{request_id}/redrive", redrive)
