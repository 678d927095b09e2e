"""CTS traces over HTTP: the management API audits itself, traces are queried and ingested.

* :func:`trace_middleware` records every management operation — a POST/PUT/DELETE on a
  ``/v2/...`` route other than the data-plane ones (invoking, publishing) — as one CTS trace
  (``trace_type`` ApiCall) with the caller's address, the HTTP status as ``code``, the
  level (``normal`` 2xx, ``warning`` 4xx, ``incident`` 5xx), the token identity as
  ``user.name`` and redacted request/response. The operation name comes from the
  component that performed it (``Store.audit``, handed over by the request scope of
  :mod:`triggerbus.store.traces`: a PUT on a trigger is ``enableTrigger``,
  ``disableTrigger`` or ``updateTrigger``), else from the route. The trace is stored before
  the response goes out. ``request`` holds the operation's parameters as the component
  recorded them (never a code package or a password); ``response`` the JSON answer.
* ``GET /v3/{project_id}/traces`` lists traces, CTS style: newest first,
  ``{"traces": [...], "meta_data": {"count", "marker"}}``, the last 7 days by default.
* ``POST /v3/{project_id}/traces`` ingests traces of other services (one trace, a list,
  or ``{"traces": [...]}``, at most 100), so CTS triggers can react to them.

Reads are not traced, nor are the ``/v3`` trace endpoints themselves.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from connectors.cts import CTSConnector
from schemas.errors import FSSError, bad_request, describe_validation_error
from schemas.events.cts import CTSTrace
from schemas.triggers import ALL_SECRET_NAMES
from schemas.urn import FunctionUrn
from triggerbus.api.common import json_response, project_id, query_int, read_json, service
from triggerbus.store.traces import (
    CURRENT_AUDIT_SCOPE,
    EXTRA_SECRET_NAMES,
    RESOURCE_TYPES,
    SERVICE_TYPE,
    TRACE_STATUSES,
    AuditScope,
    TraceEntry,
    TraceQuery,
    UnknownMarker,
    bounded,
    new_trace_id,
    now_ms,
    redact_secrets,
    trace_status_for,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TRACES = "/v3/{project_id}/traces"
DEFAULT_USER = "triggerbus-admin"
DEFAULT_WINDOW_MS = 7 * 86400 * 1000
MAX_INGEST = 100
MAX_INGEST_BODY = 1024 * 1024
MAX_RESPONSE_CAPTURE = 64 * 1024
TRACE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_SECRET_NAMES = ALL_SECRET_NAMES | EXTRA_SECRET_NAMES
_ECHOED_VALUE = re.compile(r"\(got .*\)$", re.DOTALL)

_FGS = "/v2/{project_id}/fgs"
_FUNCTION = _FGS + "/functions/{function_urn}"
_TRIGGERS = _FGS + "/triggers/{function_urn}"
_TRIGGER = _TRIGGERS + "/{trigger_type_code}/{trigger_id}"
_TOPICS = "/v2/{project_id}/notifications/topics"

# Mutating routes that move data, not configuration: not audited (as on FunctionGraph).
DATA_PLANE = frozenset(
    {
        ("POST", _FUNCTION + "/invocations"),
        ("POST", _FUNCTION + "/invocations-async"),
        ("POST", _TOPICS + "/{topic_urn}/publish"),
    }
)
# Route -> (trace name, service type, resource type), for requests no component audited
# (refused ones, mostly).
OPERATIONS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("POST", _FGS + "/functions"): ("createFunction", SERVICE_TYPE, "Functions"),
    ("DELETE", _FUNCTION): ("deleteFunction", SERVICE_TYPE, "Functions"),
    ("PUT", _FUNCTION + "/config"): ("updateFunctionConfig", SERVICE_TYPE, "Functions"),
    ("PUT", _FUNCTION + "/code"): ("updateFunctionCode", SERVICE_TYPE, "Functions"),
    ("PUT", _FUNCTION + "/async-invoke-config"): ("updateAsyncInvokeConfig", SERVICE_TYPE, "Functions"),
    ("DELETE", _FUNCTION + "/async-invoke-config"): ("deleteAsyncInvokeConfig", SERVICE_TYPE, "Functions"),
    ("POST", _FUNCTION + "/cancel"): ("cancelAsyncInvocation", SERVICE_TYPE, "Functions"),
    ("POST", _FUNCTION + "/async-invocations/{request_id}/redrive"): (
        "redriveAsyncInvocation",
        SERVICE_TYPE,
        "Functions",
    ),
    ("POST", _TRIGGERS): ("createTrigger", SERVICE_TYPE, "Trigger"),
    ("DELETE", _TRIGGERS): ("deleteTrigger", SERVICE_TYPE, "Trigger"),
    ("PUT", _TRIGGER): ("updateTrigger", SERVICE_TYPE, "Trigger"),
    ("DELETE", _TRIGGER): ("deleteTrigger", SERVICE_TYPE, "Trigger"),
    ("PUT", _TRIGGER + "/checkpoint"): ("setTriggerCheckpoint", SERVICE_TYPE, "Trigger"),
    ("POST", _TOPICS): ("createTopic", "SMN", "topic"),
    ("DELETE", _TOPICS + "/{topic_urn}"): ("deleteTopic", "SMN", "topic"),
}


def _cts(svc: Any) -> CTSConnector | None:
    return next((c for c in svc.connectors if isinstance(c, CTSConnector)), None)


async def record_trace(svc: Any, entry: TraceEntry) -> bool:
    """Store a trace and deliver it to matching CTS triggers (the CTS connector does both)."""
    connector = _cts(svc)
    if connector is not None:
        return await connector.record(entry)
    return bool(await svc.store.insert_trace(entry))


# -- the audit middleware ----------------------------------------------------------------------------


def _canonical(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


@web.middleware
async def trace_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    canonical = _canonical(request)
    if (
        request.method not in MUTATING
        or canonical is None
        or not canonical.startswith("/v2/")
        or (request.method, canonical) in DATA_PLANE
    ):
        return await handler(request)
    started = now_ms()
    scope = AuditScope()
    token = CURRENT_AUDIT_SCOPE.set(scope)
    try:
        response = await handler(request)
    except FSSError as exc:
        await _audit_request(request, canonical, scope, started, exc.status, exc.body())
        raise
    except web.HTTPException as exc:
        await _audit_request(request, canonical, scope, started, exc.status, {})
        raise
    except Exception:
        await _audit_request(request, canonical, scope, started, 500, {"error_code": "FSS.0500"})
        raise
    finally:
        scope.close()
        CURRENT_AUDIT_SCOPE.reset(token)
    await _audit_request(request, canonical, scope, started, response.status, _response_json(response))
    return response


def scrub_echoed_secrets(body: Any) -> Any:
    """An error body whose message quotes a refused secret value (``event_data.kafka_password:
    Input should be a valid string (got 12345)``) keeps the message, not the value."""
    if not isinstance(body, dict) or not isinstance(body.get("error_msg"), str):
        return body
    parts = []
    for part in body["error_msg"].split("; "):
        field = part.split(":", 1)[0].rsplit(".", 1)[-1].lower()
        parts.append(_ECHOED_VALUE.sub("(got ******)", part) if field in _SECRET_NAMES else part)
    return {**body, "error_msg": "; ".join(parts)}


def _response_json(response: web.StreamResponse) -> Any:
    body = getattr(response, "body", None)
    if not isinstance(body, bytes | bytearray) or not body:
        return {}
    if len(body) > MAX_RESPONSE_CAPTURE:
        return {"omitted": f"{len(body)} bytes"}
    try:
        return json.loads(body)
    except ValueError:
        return {}


async def _audit_request(
    request: web.Request, canonical: str, scope: AuditScope, started: int, status: int, response: Any
) -> None:
    svc = service(request)
    route = OPERATIONS.get((request.method, canonical))
    operations: list[tuple[str, str, str, str, dict[str, Any] | None]] = [
        (o.action, SERVICE_TYPE, RESOURCE_TYPES[o.action], o.resource, o.detail) for o in scope.operations
    ]
    if not operations and route is not None:  # no component audited it (refused, mostly)
        operations = [(route[0], route[1], route[2], _route_resource(request), None)]
    for trace_name, service_type, resource_type, resource_id, detail in operations:
        trace = _api_trace(
            request,
            svc,
            started=started,
            status=status,
            trace_name=trace_name,
            service_type=service_type,
            resource_type=resource_type,
            resource_id=resource_id,
            request_detail=detail,
            response=response,
        )
        try:
            await record_trace(svc, TraceEntry(trace, detail=detail))
        except Exception:
            log.exception("recording the trace of %s %s failed", request.method, request.path)


def _route_resource(request: web.Request) -> str:
    info = request.match_info
    for name in ("trigger_id", "topic_urn"):
        if info.get(name):
            return str(info[name])
    urn = FunctionUrn.try_parse(info.get("function_urn", ""))
    return urn.unqualified if urn is not None else ""


def _resource_name(request: web.Request, resource_id: str) -> str:
    own = FunctionUrn.try_parse(resource_id)
    if own is not None:
        return own.name
    function = FunctionUrn.try_parse(request.match_info.get("function_urn", ""))
    if function is not None:
        return function.name
    if resource_id.startswith("urn:smn:"):
        return resource_id.rsplit(":", 1)[-1]
    return resource_id


def _api_trace(
    request: web.Request,
    svc: Any,
    *,
    started: int,
    status: int,
    trace_name: str,
    service_type: str,
    resource_type: str,
    resource_id: str,
    request_detail: dict[str, Any] | None,
    response: Any,
) -> dict[str, Any]:
    level = trace_status_for(status)
    return {
        "time": started,
        "user": {"name": getattr(svc.settings, "audit_user", DEFAULT_USER), "id": "", "domain": {"name": "", "id": ""}},
        "request": bounded(redact_secrets(request_detail or {})),
        "response": bounded(redact_secrets(scrub_echoed_secrets(response))),
        "code": status,
        "service_type": service_type,
        "resource_type": resource_type,
        "resource_name": _resource_name(request, resource_id),
        "resource_id": resource_id,
        "trace_name": trace_name,
        "trace_type": "ApiCall",
        "record_time": now_ms(),
        "trace_id": new_trace_id(),
        "trace_status": level,
        "trace_rating": level,
        "source_ip": request.remote or "",
        "project_id": request.match_info.get("project_id", ""),
        "api_version": "v2",
        "read_only": False,
        "message": f"{request.method} {request.path}",
    }


# -- query ---------------------------------------------------------------------------------------------


def _query_ms(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:  # "²" is a digit to isdigit(); SQLite ints are 64-bit
        raise bad_request(f"{name}: must be a time in epoch milliseconds (got {raw[:40]!r})")
    return int(raw)


def _choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise bad_request(f"{name}: must be one of {', '.join(choices)} (got {raw[:40]!r})")
    return raw


async def list_traces(request: web.Request) -> web.Response:
    svc = service(request)
    project_id(request)
    q = request.query
    end = _query_ms(request, "to", now_ms())
    begin = _query_ms(request, "from", end - DEFAULT_WINDOW_MS)
    if begin > end:
        raise bad_request("from: must not be after to")
    limit = query_int(request, "limit", 10, low=1, high=200)
    kind = q.get("trace_type") or "system"
    if kind == "data":
        return json_response({"traces": [], "meta_data": {"count": 0, "marker": None}})
    status_a = _choice(request, "trace_rating", TRACE_STATUSES)
    status_b = _choice(request, "trace_status", TRACE_STATUSES)
    if status_a and status_b and status_a != status_b:
        raise bad_request("trace_rating and trace_status: give one level (they are the same filter)")
    query = TraceQuery(
        begin_ms=begin,
        end_ms=end,
        trace_name=q.get("trace_name") or None,
        trace_type=None if kind == "system" else kind,
        service_type=q.get("service_type") or None,
        resource_type=q.get("resource_type") or None,
        resource_id=q.get("resource_id") or None,
        resource_name=q.get("resource_name") or None,
        trace_status=status_a or status_b,
        user=q.get("user") or None,
        trace_id=q.get("trace_id") or None,
        after=q.get("next") or q.get("marker") or None,
        limit=limit + 1,
    )
    try:
        entries = await svc.store.list_traces(query)
    except UnknownMarker:
        raise bad_request(f"next: no trace {query.after!r} (a marker from an earlier page, or it expired)") from None
    page = entries[:limit]
    marker = page[-1].trace_id if len(entries) > limit else None
    return json_response({"traces": [e.trace for e in page], "meta_data": {"count": len(page), "marker": marker}})


# -- ingest --------------------------------------------------------------------------------------------


def _ingested_trace(item: Any, where: str, project: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise bad_request(f"{where}: must be a JSON object (one CTS trace)")
    try:
        model = CTSTrace.model_validate(item)
    except ValidationError as exc:
        raise bad_request(describe_validation_error(exc, where)) from None
    for name in ("service_type", "resource_type", "trace_name"):
        if not str(getattr(model, name)).strip():
            raise bad_request(f"{where}.{name}: is required (a non-empty string)")
    if model.trace_status and model.trace_status not in TRACE_STATUSES:
        raise bad_request(
            f"{where}.trace_status: must be one of {', '.join(TRACE_STATUSES)} (got {model.trace_status!r})"
        )
    if model.trace_id and not TRACE_ID_RE.match(model.trace_id):
        raise bad_request(f"{where}.trace_id: must be 1-64 letters, digits, '-' or '_' (got {model.trace_id[:80]!r})")
    trace = model.dump()
    now = now_ms()
    trace["trace_id"] = model.trace_id or new_trace_id()
    trace["trace_status"] = model.trace_status or "normal"
    trace["trace_type"] = model.trace_type or "ApiCall"
    trace["time"] = model.time or now
    trace["record_time"] = now  # when "CTS" received it
    trace.setdefault("project_id", project)
    return trace


async def ingest_traces(request: web.Request) -> web.Response:
    svc = service(request)
    project = project_id(request)
    body = await read_json(request, MAX_INGEST_BODY)
    if isinstance(body, dict) and isinstance(body.get("traces"), list):
        items, prefix = body["traces"], "traces"
    elif isinstance(body, list):
        items, prefix = body, "body"
    else:
        items, prefix = [body], "body"
    if not items:
        raise bad_request(f"{prefix}: give at least one trace")
    if len(items) > MAX_INGEST:
        raise bad_request(f"{prefix}: at most {MAX_INGEST} traces per request (got {len(items)})")
    many = prefix == "traces" or isinstance(body, list)
    traces = [_ingested_trace(item, f"{prefix}[{i}]" if many else prefix, project) for i, item in enumerate(items)]
    results = []
    for trace in traces:
        recorded = await record_trace(svc, TraceEntry(trace, detail=None, recorded=time.time()))
        results.append({"trace_id": trace["trace_id"], "status": "recorded" if recorded else "duplicate"})
    return json_response({"traces": results})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(TRACES, list_traces)
    router.add_post(TRACES, ingest_traces)
