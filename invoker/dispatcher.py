"""Routes an invocation to the runtime that runs the function (Python worker or HTTP)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

from invoker.runtime.base import (
    ErrorCategory,
    FunctionSpec,
    InvocationError,
    InvocationRequest,
    InvocationResult,
    Runtime,
)
from schemas.functions import HTTP_RUNTIME

log = logging.getLogger(__name__)


def runtime_kind(spec: FunctionSpec) -> str:
    return "http" if spec.runtime == HTTP_RUNTIME else "python"


class Dispatcher:
    def __init__(self, runtimes: Mapping[str, Runtime]) -> None:
        self.runtimes = dict(runtimes)

    async def start(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.start()

    async def close(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.close()

    async def invoke(self, spec: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        """Run one invocation. Never raises: a runtime bug becomes a SYSTEM_ERROR result."""
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
