"""The function log of one async invocation, by request id (Triggerbus extension).

``GET /v2/{project_id}/fgs/functions/{function_urn}/async-invocations/{request_id}/logs``
answers JSON ``{"request_id", "function_urn", "status", "attempts": [{"n", "status", "logs"}]}``,
or, with ``Accept: text/plain`` (or ``?format=text``), the attempts' logs one after the other
as plain text (each attempt is framed by its ``Start``/``Finish invoke request`` lines).
``?attempt=N`` keeps only attempt N. Each attempt's log is bounded when it is captured
(``TRIGGERBUS_FUNCTION_LOG_BYTES``, see docs/observability.md).
"""

from __future__ import annotations

from aiohttp import web

from schemas.errors import bad_request, not_found
from triggerbus.api.common import json_response, query_int, service

PATH = "/v2/{project_id}/fgs/functions/{function_urn}/async-invocations/{request_id}/logs"


def _wants_text(request: web.Request) -> bool:
    chosen = request.query.get("format", "").lower()
    if chosen not in ("", "json", "text"):
        raise bad_request(f"format: must be json or text (got {chosen!r})")
    if chosen:
        return chosen == "text"
    accept = request.headers.get("Accept", "")
    return "text/plain" in accept and "application/json" not in accept


async def invocation_logs(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    request_id = request.match_info["request_id"]
    record = await svc.store.get_record(request_id)
    if record is None or record.function_urn != fn.qualified_urn:
        raise not_found(f"async invocation {request_id} of {fn.name} does not exist")
    attempts = await svc.store.list_attempts(request_id)
    if "attempt" in request.query:
        wanted = query_int(request, "attempt", 1, low=1, high=10_000)
        attempts = [a for a in attempts if a.n == wanted]
    if _wants_text(request):
        text = "".join(a.logs if a.logs.endswith("\n") else a.logs + "\n" for a in attempts if a.logs)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")
    return json_response(
        {
            "request_id": request_id,
            "function_urn": record.function_urn,
            "status": record.status.value,
            "attempts": [{"n": a.n, "status": a.status, "logs": a.logs} for a in attempts],
        }
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(PATH, invocation_logs)
