"""What the invoker needs from a function runtime, and what a runtime reports back.

A runtime turns (function spec, event) into an :class:`InvocationResult`. It never
raises for anything the user's code does: a crash, hang, memory blow-up or bad
return value comes back as a result with an :class:`ErrorCategory`, so the invoker
can apply the retry policy and write a precise async-status record.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class ErrorCategory(enum.StrEnum):
    """Failure causes, after FunctionGraph's request-log "cause analysis" list."""

    CODE_EXCEPTION = "code_exception"  # handler raised
    LOAD_FAILED = "load_failed"  # handler module/function could not be imported/found
    INIT_FAILED = "init_failed"  # initializer failed
    TIMEOUT = "timeout"  # ran longer than the function timeout
    MEMORY_EXCEEDED = "memory_exceeded"  # used more than memory_size
    CRASHED = "crashed"  # worker process died (os._exit, signal, segfault)
    INVALID_RESULT = "invalid_result"  # result not JSON-serialisable or over the size cap
    THROTTLED = "throttled"  # HTTP function answered 429
    SYSTEM_ERROR = "system_error"  # our side failed (spawn failed, HTTP target unreachable ...)
    CANCELED = "canceled"  # stopped through the cancel API


# Integer error codes stored in async-status records (``error_code``; 0 = success).
ERROR_CODES: dict[ErrorCategory, int] = {
    ErrorCategory.CODE_EXCEPTION: 4101,
    ErrorCategory.LOAD_FAILED: 4102,
    ErrorCategory.INIT_FAILED: 4103,
    ErrorCategory.TIMEOUT: 4104,
    ErrorCategory.MEMORY_EXCEEDED: 4105,
    ErrorCategory.CRASHED: 4106,
    ErrorCategory.INVALID_RESULT: 4107,
    ErrorCategory.THROTTLED: 4290,
    ErrorCategory.SYSTEM_ERROR: 5000,
    ErrorCategory.CANCELED: 4208,
}


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """Everything a runtime needs to run one function version."""

    urn: str  # qualified URN, e.g. urn:fss:local:proj:function:default:hello:latest
    name: str
    package: str
    version: str
    project_id: str
    region: str
    runtime: str  # "Python3.9" ... or "http"
    handler: str  # "index.handler" for Python
    memory_mb: int
    timeout_s: int
    code_dir: Path | None  # extracted code for Python runtimes
    code_digest: str  # changes whenever code or config changes; warm workers of an old digest are retired
    code_url: str | None = None  # base URL for the http runtime
    user_data: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)  # access_key, secret_key, security_* ...
    max_instances: int = 10


@dataclass(slots=True)
class InvocationRequest:
    request_id: str
    payload: bytes  # the event, UTF-8 JSON
    invoke_type: str = "async"  # "sync" | "async"
    timeout_s: float | None = None  # overrides spec.timeout_s (e.g. APIG backend timeout)
    trace: dict[str, str] = field(default_factory=dict)  # W3C trace context for the function (invoker.tracing)
    trace_links: list[str] = field(default_factory=list)  # other contexts this invocation continues (a batch)


@dataclass(slots=True)
class InvocationError:
    category: ErrorCategory
    message: str
    error_type: str = ""  # exception class name for code exceptions
    stack: list[str] = field(default_factory=list)
    retry_after_s: float | None = None  # from a 429 Retry-After header

    @property
    def code(self) -> int:
        return ERROR_CODES[self.category]

    def as_payload(self) -> dict[str, object]:
        """The FunctionGraph error document user tools parse (errorMessage/errorType/stackTrace)."""
        return {
            "errorMessage": self.message,
            "errorType": self.error_type or self.category.value,
            "stackTrace": self.stack,
        }


@dataclass(slots=True)
class InvocationResult:
    request_id: str
    body: bytes  # JSON of the handler's return value, or of error.as_payload() on failure
    error: InvocationError | None = None
    duration_ms: float = 0.0
    memory_used_mb: float = 0.0
    logs: str = ""  # bounded log text, including the Start/Finish invoke request lines

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def billing_duration_ms(self) -> int:
        """Duration rounded up to the whole millisecond (FunctionGraph logs 1.077ms -> 2ms)."""
        return max(1, math.ceil(self.duration_ms))


class Runtime(Protocol):
    """A runtime runs invocations; it owns its processes/connections."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def invoke(self, spec: FunctionSpec, request: InvocationRequest) -> InvocationResult: ...

    async def cancel(self, request_id: str) -> bool:
        """Stop a running invocation; True if it was running here."""
        ...

    async def retire(self, urn: str) -> None:
        """Drop warm state (workers, connections) of a function that changed or was deleted."""
        ...
