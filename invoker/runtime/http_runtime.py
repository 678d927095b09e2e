"""HTTP functions: POST the event to ``<code_url>/invoke``, as FunctionGraph does for
container-image event functions, with the ``X-CFF-*`` request headers.

A 2xx answer is the result (JSON kept as is; anything else becomes a JSON
string). 429 is a throttle and its ``Retry-After`` is honoured by the retry
policy; other statuses are function errors; connection failures are system errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from email.utils import parsedate_to_datetime

import aiohttp

from invoker.runtime.base import (
    ErrorCategory,
    FunctionSpec,
    InvocationError,
    InvocationRequest,
    InvocationResult,
)
from invoker.runtime.invoke_log import finish_line, start_line
from invoker.runtime.streams import read_bounded
from invoker.runtime.target_guard import GuardedResolver, TargetGuard, TargetRefused

MAX_RESULT_BYTES = 6 * 1024 * 1024


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class HttpRuntime:
    def __init__(self, *, max_result_bytes: int = MAX_RESULT_BYTES, guard: TargetGuard | None = None) -> None:
        self.max_result_bytes = max_result_bytes
        self.guard = guard  # never call the service's own API (invoker/runtime/target_guard.py)
        self._session: aiohttp.ClientSession | None = None
        self._running: dict[str, asyncio.Task[InvocationResult]] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, resolver=GuardedResolver(self.guard) if self.guard else None),
            auto_decompress=True,
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def retire(self, urn: str) -> None:
        return None

    async def cancel(self, request_id: str) -> bool:
        task = self._running.get(request_id)
        if task is None:
            return False
        task.cancel()
        return True

    @staticmethod
    def headers(spec: FunctionSpec, request: InvocationRequest) -> dict[str, str]:
        creds = spec.credentials
        headers = {
            "Content-Type": "application/json",
            "X-CFF-Request-Id": request.request_id,
            "X-CFF-Memory": str(spec.memory_mb),
            "X-CFF-Timeout": str(int(request.timeout_s or spec.timeout_s)),
            "X-CFF-Func-Version": spec.version,
            "X-CFF-Func-Name": spec.name,
            "X-CFF-Project-Id": spec.project_id,
            "X-CFF-Package": spec.package,
            "X-CFF-Region": spec.region,
            "X-CFF-Invoke-Type": request.invoke_type,
            **request.trace,  # W3C traceparent/tracestate: the function's spans continue ours
        }
        for header, key in (
            ("X-CFF-Access-Key", "access_key"),
            ("X-CFF-Secret-Key", "secret_key"),
            ("X-CFF-Security-Access-Key", "security_access_key"),
            ("X-CFF-Security-Secret-Key", "security_secret_key"),
            ("X-CFF-Security-Token", "security_token"),
            ("X-CFF-Auth-Token", "token"),
        ):
            if creds.get(key):
                headers[header] = creds[key]
        return headers

    async def invoke(self, spec: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        task = asyncio.ensure_future(self._invoke(spec, request))
        self._running[request.request_id] = task
        started = time.monotonic()
        try:
            return await task
        except asyncio.CancelledError:
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            error = InvocationError(ErrorCategory.CANCELED, "function invocation canceled")
            return self._result(spec, request, started, b"", error)
        finally:
            self._running.pop(request.request_id, None)

    async def _invoke(self, spec: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        if self._session is None:
            raise RuntimeError("HttpRuntime is not started")
        timeout = float(request.timeout_s or spec.timeout_s)
        url = (spec.code_url or "").rstrip("/") + "/invoke"
        started = time.monotonic()
        try:
            if self.guard is not None:  # literal addresses; names are checked by the resolver as they connect
                await self.guard.check(url, resolve=False)
        except TargetRefused as exc:
            error = InvocationError(ErrorCategory.SYSTEM_ERROR, f"HTTP function target refused: {exc}")
            return self._result(spec, request, started, b"", error)
        try:
            async with self._session.post(
                url,
                data=request.payload,
                headers=self.headers(spec, request),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                body, _ = await read_bounded(response.content, self.max_result_bytes)
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            error = InvocationError(ErrorCategory.TIMEOUT, f"function invocation timed out after {timeout:g} s")
            return self._result(spec, request, started, b"", error)
        except aiohttp.ClientError as exc:
            error = InvocationError(
                ErrorCategory.SYSTEM_ERROR, f"HTTP function at {url} unreachable: {type(exc).__name__}: {exc}"
            )
            return self._result(spec, request, started, b"", error)
        if len(body) > self.max_result_bytes:
            error = InvocationError(
                ErrorCategory.INVALID_RESULT,
                f"function response exceeds {self.max_result_bytes} bytes",
            )
            return self._result(spec, request, started, b"", error)
        if status == 429:
            error = InvocationError(
                ErrorCategory.THROTTLED,
                "HTTP function answered 429 Too Many Requests",
                retry_after_s=retry_after,
            )
            return self._result(spec, request, started, body, error)
        if not 200 <= status < 300:
            excerpt = body[:512].decode("utf-8", errors="replace")
            error = InvocationError(
                ErrorCategory.CODE_EXCEPTION,
                f"HTTP function answered {status}: {excerpt}",
                error_type=f"HTTP{status}",
            )
            return self._result(spec, request, started, body, error)
        return self._result(spec, request, started, _as_json(body), None)

    @staticmethod
    def _result(
        spec: FunctionSpec,
        request: InvocationRequest,
        started: float,
        body: bytes,
        error: InvocationError | None,
    ) -> InvocationResult:
        duration_ms = (time.monotonic() - started) * 1000
        logs = "\n".join(
            [
                start_line(request.request_id, spec.version),
                *([f"ERROR {error.message}"] if error else []),
                finish_line(request.request_id, duration_ms, 0.0, error is None),
            ]
        )
        if error is not None:
            body = json.dumps(error.as_payload()).encode()
        return InvocationResult(request.request_id, body, error, duration_ms=duration_ms, logs=logs)


def _as_json(body: bytes) -> bytes:
    try:
        json.loads(body)
    except ValueError:
        return json.dumps(body.decode("utf-8", errors="replace")).encode()
    return body
