"""Routes an invocation to the runtime that runs the function (Python worker or HTTP)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

from invoker import tracing
from invoker.observer import NOOP, Observer
from invoker.runtime.base import (
    ErrorCategory,
    FunctionSpec,
    InvocationError,
    InvocationRequest,
    InvocationResult,
    Runtime,
)
from invoker.runtime.invoke_log import finish_text, start_text
from schemas.functions import HTTP_RUNTIME
from triggerbus.logs import log_context

log = logging.getLogger(__name__)


def runtime_kind(spec: FunctionSpec) -> str:
    return "http" if spec.runtime == HTTP_RUNTIME else "python"


class Dispatcher:
    def __init__(self, runtimes: Mapping[str, Runtime], *, observer: Observer = NOOP) -> None:
        self.runtimes = dict(runtimes)
        self.observer = observer  # sees every run, sync and async

    async def start(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.start()

    async def close(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.close()

    async def invoke(self, spec: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        """Run one invocation. Never raises: a runtime bug becomes a SYSTEM_ERROR result."""
        self.observer.invocation_started(spec.urn, request.invoke_type)
        result: InvocationResult | None = None
        try:
            result = await self._traced(spec, request)
            return result
        finally:  # None: abandoned (the service is stopping)
            self.observer.invocation_finished(spec.urn, request.invoke_type, result)

    async def _traced(self, spec: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        """FunctionGraph's ``Start``/``Finish invoke request`` lines in the service log and, when
        tracing, an *invoke* span around the run whose context the function receives."""
        attributes = {
            "faas.invoked_name": spec.name,
            "faas.invocation_id": request.request_id,
            "triggerbus.function_urn": spec.urn,
            "triggerbus.invoke_type": request.invoke_type,
        }
        with (
            tracing.span(
                f"invoke {spec.name}", request.trace, kind="client", links=request.trace_links, attributes=attributes
            ) as span,
            log_context(request_id=request.request_id, function_urn=spec.urn, trace_id=span.trace_id),
        ):
            request.trace = span.carrier
            log.info(start_text(request.request_id, spec.version))
            result = await self._invoke(spec, request)
            log.info(finish_text(request.request_id, result.duration_ms, result.memory_used_mb, result.ok))
            if result.error is not None:
                span.fail(f"{result.error.category.value}: {result.error.message}")
            return result

    async def _invoke(self, spec: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        kind = runtime_kind(spec)
        runtime = self.runtimes.get(kind)
        started = time.monotonic()
        if runtime is None:
            error = InvocationError(ErrorCategory.SYSTEM_ERROR, f"no {kind} runtime is configured")
            return InvocationResult(request.request_id, _error_body(error), error)
        try:
            return await runtime.invoke(spec, request)
        except Exception as exc:
            log.exception("runtime %s failed on request %s", kind, request.request_id)
            error = InvocationError(ErrorCategory.SYSTEM_ERROR, f"runtime failure: {type(exc).__name__}: {exc}")
            return InvocationResult(
                request.request_id, _error_body(error), error, duration_ms=(time.monotonic() - started) * 1000
            )

    async def cancel(self, request_id: str) -> bool:
        for runtime in self.runtimes.values():
            if await runtime.cancel(request_id):
                return True
        return False

    async def retire(self, urn: str) -> None:
        for runtime in self.runtimes.values():
            await runtime.retire(urn)


def _error_body(error: InvocationError) -> bytes:
    return json.dumps(error.as_payload()).encode()
