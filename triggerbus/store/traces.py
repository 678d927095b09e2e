"""CTS traces: the one audit log of Triggerbus, as the store keeps it.

Every management operation (and every internal action worth auditing, such as a Kafka
record dropped for its size) is one CTS trace: the JSON object a CTS trigger delivers as
``{"cts": <trace>}`` (contract §1.13). :meth:`Store.audit` — the call components have
always made — writes one; the management API writes one per request (see
:mod:`triggerbus.api.traces`). There is no second log.

A trace is stored with three things beside it:

* ``detail`` — the caller's own audit detail (what ``audit_log()`` returns; kept out
  of the trace JSON so the CTS shape stays the documented one). ``None`` when no component
  audited the operation (a refused request, an operation only the API layer knows):
  ``audit_log()`` keeps showing exactly what components audited, the trace API shows all;
* ``targets`` — the CTS-trigger deliveries it still owes (trigger id + function URN),
  written in the *same* row as the trace, so a crash between storing the trace and
  enqueuing its invocations leaves a durable to-do list (see :mod:`connectors.cts`);
* ``recorded`` — when it was stored (retention, replay).

Why the request scope: an API request such as "enable this trigger" reaches the store's
``audit("enableTrigger", ...)`` deep inside :class:`triggerbus.triggers.TriggerManager`,
and the API layer also wants to record the request (caller address, HTTP status). Both
would give *two* traces of one operation, and a CTS trigger on ``enableTrigger`` would
fire twice. So while an API request is being handled, ``audit()`` of a management
operation is handed to the request (:class:`AuditScope`), which writes one trace per
operation with the HTTP outcome. Outside a request — or for actions that are not
management operations — ``audit()`` writes a ``SystemAction`` trace at once.
"""

from __future__ import annotations

import json
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from schemas.triggers import redact_event_data

SERVICE_TYPE = "FunctionGraph"
SYSTEM_USER = "triggerbus"
TRACE_STATUSES = ("normal", "warning", "incident")
MAX_TRACE_PART_BYTES = 16 * 1024  # request / response / detail kept per trace

# The management operations and their CTS resource types (user guide §20, Table 20-1, plus
# the operations Triggerbus adds: async config, checkpoints, trigger updates).
RESOURCE_TYPES: dict[str, str] = {
    "createFunction": "Functions",
    "deleteFunction": "Functions",
    "updateFunctionConfig": "Functions",
    "updateFunctionCode": "Functions",
    "updateAsyncInvokeConfig": "Functions",
    "deleteAsyncInvokeConfig": "Functions",
    "cancelAsyncInvocation": "Functions",
    "redriveAsyncInvocation": "Functions",
    "publishFunctionVersion": "FunctionVersions",
    "createVersionAlias": "FunctionVersionsAlias",
    "updateVersionAlias": "FunctionVersionsAlias",
    "deleteVersionAlias": "FunctionVersionsAlias",
    "createTrigger": "Trigger",
    "deleteTrigger": "Trigger",
    "enableTrigger": "Trigger",
    "disableTrigger": "Trigger",
    "updateTrigger": "Trigger",
    "setTriggerCheckpoint": "Trigger",
}
# Internal actions recorded as SystemAction traces.
SYSTEM_RESOURCE_TYPES: dict[str, str] = {
    "kafkaRecordDropped": "Trigger",
    "kafkaStartPosition": "Trigger",
    "smnMqttMessageDropped": "topic",
}
# Extra names whose values never reach a trace (beyond the trigger schemas' secret fields).
EXTRA_SECRET_NAMES = frozenset(
    {"credentials", "app_code", "auth_token", "secret", "secret_key", "access_key", "x-auth-token"}
)


def trace_status_for(code: int) -> str:
    """CTS levels: normal for success, warning for a client error, incident for a server error."""
    if code >= 500:
        return "incident"
    if code >= 400:
        return "warning"
    return "normal"


def now_ms() -> int:
    return int(time.time() * 1000)


def new_trace_id() -> str:
    return str(uuid.uuid4())


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: ("******" if str(k).lower() in EXTRA_SECRET_NAMES and v not in (None, "", {}) else _mask(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def redact_secrets(value: Any) -> Any:
    """A copy safe to keep in a trace: every documented secret field masked, URI passwords too."""
    return _mask(redact_event_data("", {"value": value})["value"])


def bounded(value: Any, limit: int = MAX_TRACE_PART_BYTES) -> Any:
    """``value`` as JSON-able data, replaced by a short note when its JSON is over ``limit`` bytes."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    if len(text.encode()) <= limit:
        return json.loads(text)
    return {"omitted": f"{len(text.encode())} bytes (over the {limit}-byte trace limit)"}


def system_trace(action: str, resource: str, detail: dict[str, Any]) -> dict[str, Any]:
    """The trace of an internal action (``Store.audit`` outside an API request)."""
    moment = now_ms()
    return {
        "time": moment,
        "user": {"name": SYSTEM_USER, "id": "", "domain": {"name": "", "id": ""}},
        "request": {},
        "response": bounded(redact_secrets(detail)),
        "code": 200,
        "service_type": "SMN" if SYSTEM_RESOURCE_TYPES.get(action) == "topic" else SERVICE_TYPE,
        "resource_type": RESOURCE_TYPES.get(action) or SYSTEM_RESOURCE_TYPES.get(action, ""),
        "resource_name": resource,
        "resource_id": resource,
        "trace_name": action,
        "trace_type": "SystemAction",
        "record_time": moment,
        "trace_id": new_trace_id(),
        "trace_status": "normal",
        "trace_rating": "normal",
    }


@dataclass(slots=True)
class TraceEntry:
    """One stored trace with its bookkeeping (see the module docstring)."""

    trace: dict[str, Any]
    detail: dict[str, Any] | None = field(default_factory=dict)  # None: no component audited it
    targets: list[dict[str, str]] = field(default_factory=list)  # deliveries still owed
    recorded: float = field(default_factory=time.time)

    @property
    def trace_id(self) -> str:
        return str(self.trace["trace_id"])


def trace_columns(trace: dict[str, Any]) -> dict[str, Any]:
    """The searchable scalar fields of a trace (the stores index them)."""
    resource_id = trace.get("resource_id", "")
    user = trace.get("user")
    return {
        "time_ms": int(trace.get("time") or 0),
        "trace_name": str(trace.get("trace_name", "")),
        "trace_type": str(trace.get("trace_type", "")),
        "service_type": str(trace.get("service_type", "")),
        "resource_type": str(trace.get("resource_type", "")),
        "resource_id": resource_id if isinstance(resource_id, str) else json.dumps(resource_id, sort_keys=True),
        "resource_name": str(trace.get("resource_name", "")),
        "trace_status": str(trace.get("trace_status", "")),
        "user_name": str(user.get("name", "")) if isinstance(user, dict) else "",
    }


@dataclass(slots=True)
class TraceQuery:
    """A page of traces, newest first. ``after`` is the trace id that ended the previous page."""

    begin_ms: int | None = None
    end_ms: int | None = None
    trace_name: str | None = None
    trace_type: str | None = None
    service_type: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    resource_name: str | None = None
    trace_status: str | None = None
    user: str | None = None
    trace_id: str | None = None
    audited_only: bool = False  # only traces some component audited (``detail`` not None)
    after: str | None = None
    limit: int = 100

    def filters(self) -> dict[str, str]:
        """Equality filters on :func:`trace_columns` names."""
        pairs = {
            "trace_name": self.trace_name,
            "trace_type": self.trace_type,
            "service_type": self.service_type,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "resource_name": self.resource_name,
            "trace_status": self.trace_status,
            "user_name": self.user,
        }
        return {k: v for k, v in pairs.items() if v is not None}


class UnknownMarker(ValueError):
    """The ``after`` trace of a page query does not exist (any more)."""


def audit_view(entry: TraceEntry) -> dict[str, Any]:
    """The ``audit_log()`` shape older callers read: ts, action, resource, detail."""
    return {
        "ts": entry.recorded,
        "action": entry.trace.get("trace_name", ""),
        "resource": entry.trace.get("resource_id", ""),
        "detail": entry.detail or {},
        "trace_id": entry.trace_id,
    }


# -- the request scope -------------------------------------------------------------------------------


@dataclass(slots=True)
class AuditedOperation:
    action: str
    resource: str
    detail: dict[str, Any]


class AuditScope:
    """Collects the management operations one API request performed (see the module docstring).

    Tasks started while the request runs inherit the context variable; ``close()`` when
    the request ends makes later ``audit()`` calls from such tasks write directly.
    """

    def __init__(self) -> None:
        self.operations: list[AuditedOperation] = []
        self.open = True

    def absorb(self, action: str, resource: str, detail: dict[str, Any]) -> bool:
        if not self.open or action not in RESOURCE_TYPES:
            return False
        self.operations.append(AuditedOperation(action, resource, json.loads(detail_json(detail))))
        return True

    def close(self) -> None:
        self.open = False


CURRENT_AUDIT_SCOPE: ContextVar[AuditScope | None] = ContextVar("triggerbus_audit_scope", default=None)


def absorbed_by_request(action: str, resource: str, detail: dict[str, Any]) -> bool:
    """True when the running API request takes this audit entry (it writes the trace)."""
    scope = CURRENT_AUDIT_SCOPE.get()
    return scope is not None and scope.absorb(action, resource, detail)


def detail_json(detail: dict[str, Any]) -> str:
    """The audit detail as stored: secrets masked, bounded, datetimes and the like as strings."""
    return json.dumps(bounded(redact_secrets(detail)), default=str)


def system_entry(action: str, resource: str, detail: dict[str, Any]) -> TraceEntry:
    """What ``Store.audit`` stores when no API request takes the entry."""
    return TraceEntry(system_trace(action, resource, detail), detail=json.loads(detail_json(detail)))
