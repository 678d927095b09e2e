"""The FunctionGraph ``context`` object handed to user code, and the worker environment.

User code written for FunctionGraph calls camelCase getters on ``context``
(``getRequestID()``, ``getUserData('k')``, ``getLogger().info(...)`` ...). This module
reproduces that surface so such code runs unchanged. It is imported by the worker
process at every cold start, so it must stay light: standard library only, and nothing
heavier than ``time`` at import time (the parent-only helpers import what they need
lazily or only for type checking).
"""

from __future__ import annotations

import time

# Not ``typing.TYPE_CHECKING``: importing typing (and dataclasses, collections.abc)
# would add several milliseconds to every cold start. Type checkers key on the name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from invoker.runtime.base import FunctionSpec

__all__ = [
    "DEFAULT_MAX_RESP_BODY_SIZE",
    "FunctionContext",
    "FunctionInfo",
    "FunctionLogger",
    "alias_from_urn",
    "cpu_millicores",
    "iso_timestamp",
    "worker_env",
]

DEFAULT_MAX_RESP_BODY_SIZE = 6_291_456  # FunctionGraph RUNTIME_MAX_RESP_BODY_SIZE default
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def iso_timestamp(t: float | None = None) -> str:
    """UTC time as ``YYYY-MM-DDTHH:MM:SS.mmmZ``, the stamp used on every log line we write."""
    if t is None:
        t = time.time()
    ms = int(t * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"


def cpu_millicores(memory_mb: int) -> int:
    """CPU share FunctionGraph pairs with a memory size, in millicores.

    FunctionGraph scales CPU with memory; we report 1000 millicores per GB with a
    100-millicore floor. It is informational (``getCPUNumber``, ``RUNTIME_CPU``): this
    runtime does not throttle CPU.
    """
    return max(100, memory_mb * 1000 // 1024)


def alias_from_urn(urn: str, version: str) -> str:
    """The alias a URN was invoked through, or "" when its qualifier is the version itself."""
    qualifier = urn.rsplit(":", 1)[-1] if urn.count(":") >= 7 else ""
    return qualifier if qualifier and qualifier != version else ""


class FunctionInfo:
    """Per-function facts the context exposes; built from the worker's init frame.

    A plain slotted class rather than a dataclass: ``dataclasses`` imports ``inspect``,
    which alone costs a cold start ~15 ms.
    """

    __slots__ = (
        "alias",
        "credentials",
        "handler",
        "memory_mb",
        "name",
        "package",
        "project_id",
        "region",
        "timeout_s",
        "user_data",
        "version",
    )

    def __init__(
        self,
        *,
        name: str = "",
        version: str = "latest",
        package: str = "default",
        project_id: str = "",
        region: str = "",
        handler: str = "index.handler",
        memory_mb: int = 128,
        timeout_s: int = 3,
        alias: str = "",
        user_data: Mapping[str, str] | None = None,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.package = package
        self.project_id = project_id
        self.region = region
        self.handler = handler
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.alias = alias
        self.user_data: Mapping[str, str] = dict(user_data or {})
        self.credentials: Mapping[str, str] = dict(credentials or {})


class FunctionLogger:
    """What ``context.getLogger()`` returns.

    Lines carry the request ID explicitly, which is why FunctionGraph recommends this
    logger over ``print`` when requests interleave. Lines go to the worker's stdout in
    order with ``print`` output, so the parent files them under the right request.
    """

    __slots__ = ("_request_id", "_sink")

    def __init__(self, request_id: str, sink: Callable[[str], None]) -> None:
        self._request_id = request_id
        self._sink = sink

    def _log(self, level: str, msg: object, args: tuple[object, ...]) -> None:
        text = str(msg)
        if args:  # tolerate logging-style calls: logger.info("x=%s", x)
            try:
                text = text % args
            except (TypeError, ValueError):
                text = " ".join([text, *map(str, args)])
        self._sink(f"{iso_timestamp()} {self._request_id} {level} {text}\n")

    def debug(self, msg: object, *args: object) -> None:
        self._log("DEBUG", msg, args)

    def info(self, msg: object, *args: object) -> None:
        self._log("INFO", msg, args)

    def warning(self, msg: object, *args: object) -> None:
        self._log("WARN", msg, args)

    def warn(self, msg: object, *args: object) -> None:
        self._log("WARN", msg, args)

    def error(self, msg: object, *args: object) -> None:
        self._log("ERROR", msg, args)


class FunctionContext:
    """The FunctionGraph Python ``context``: one per invocation.

    ``deadline`` is a ``time.monotonic()`` value. On Linux that clock is
    CLOCK_MONOTONIC, shared by all processes, so the parent can hand its own deadline
    to the worker and both agree on the remaining time, cold start included.
    """

    def __init__(
        self,
        request_id: str,
        deadline: float,
        info: FunctionInfo,
        log_sink: Callable[[str], None],
        trace: Mapping[str, str] | None = None,
    ) -> None:
        self._request_id = request_id
        self._deadline = deadline
        self._info = info
        self._logger = FunctionLogger(request_id, log_sink)
        self._trace = trace or {}

    def getRequestID(self) -> str:
        return self._request_id

    def getTraceParent(self) -> str:
        """Triggerbus extension: the W3C ``traceparent`` of this invocation ("" when untraced).

        Hand it to an OpenTelemetry propagator (or as an outgoing ``traceparent`` header)
        so the function's own spans join the trace the event came with.
        """
        return self._trace.get("traceparent", "")

    def getTraceState(self) -> str:
        """Triggerbus extension: the W3C ``tracestate`` that came with ``traceparent`` ("" if none)."""
        return self._trace.get("tracestate", "")

    def getTraceID(self) -> str:
        """Triggerbus extension: the 32-hex-digit trace id of ``traceparent`` ("" when untraced)."""
        parts = self.getTraceParent().split("-")
        return parts[1] if len(parts) >= 4 else ""

    def getRemainingTimeInMilliSeconds(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def getRunningTimeInSeconds(self) -> int:
        """The function timeout; FunctionGraph documents this getter as "obtains the timeout"."""
        return self._info.timeout_s

    def getUserData(self, key: str, default: str | None = None) -> str | None:
        return self._info.user_data.get(key, default)

    def getLogger(self) -> FunctionLogger:
        return self._logger

    def getFunctionName(self) -> str:
        return self._info.name

    def getVersion(self) -> str:
        return self._info.version

    def getMemorySize(self) -> int:
        return self._info.memory_mb

    def getCPUNumber(self) -> int:
        return cpu_millicores(self._info.memory_mb)

    def getProjectID(self) -> str:
        return self._info.project_id

    def getPackage(self) -> str:
        return self._info.package

    def getAlias(self) -> str:
        return self._info.alias

    def _credential(self, key: str) -> str:
        return self._info.credentials.get(key, "")

    def getAccessKey(self) -> str:
        return self._credential("access_key")

    def getSecretKey(self) -> str:
        return self._credential("secret_key")

    def getSecurityAccessKey(self) -> str:
        return self._credential("security_access_key")

    def getSecuritySecretKey(self) -> str:
        return self._credential("security_secret_key")

    def getSecurityToken(self) -> str:
        return self._credential("security_token")

    def getToken(self) -> str:
        return self._credential("token")

    def __repr__(self) -> str:  # never leak credentials through a stray print(context)
        return f"<FunctionContext request_id={self._request_id!r} function={self._info.name!r}>"


def worker_env(
    spec: FunctionSpec,
    *,
    home: str,
    pythonpath: str,
    python: str,
    max_resp_body_size: int = DEFAULT_MAX_RESP_BODY_SIZE,
) -> dict[str, str]:
    """The complete environment of a worker process: minimal, and nothing from ours.

    The service's environment holds its own secrets (tokens, database URLs); user code
    must never see them, so nothing is inherited. Workers get a fixed PATH (plus the
    interpreter's directory, so ``python3`` in a subprocess is the same Python), a UTF-8
    locale, a private HOME, the PYTHONPATH the worker module needs (the worker drops it
    again before loading user code), and FunctionGraph's reserved RUNTIME_* variables.
    """
    import json  # parent-only; keeps the worker's import of this module cheap
    import os.path

    interp_dir = os.path.dirname(python)
    return {
        "PATH": f"{interp_dir}:{_DEFAULT_PATH}" if interp_dir else _DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "HOME": home,
        "PYTHONPATH": pythonpath,
        # glibc reserves 64 MB of address space per malloc arena (up to 8 per core);
        # under RLIMIT_AS that lets a few threads exhaust the limit without using memory.
        "MALLOC_ARENA_MAX": "2",
        "RUNTIME_PROJECT_ID": spec.project_id,
        "RUNTIME_FUNC_NAME": spec.name,
        "RUNTIME_FUNC_VERSION": spec.version,
        "RUNTIME_PACKAGE": spec.package,
        "RUNTIME_HANDLER": spec.handler,
        "RUNTIME_TIMEOUT": str(spec.timeout_s),
        "RUNTIME_USERDATA": json.dumps(dict(spec.user_data), ensure_ascii=False),
        "RUNTIME_MEMORY": str(spec.memory_mb),
        "RUNTIME_CPU": str(cpu_millicores(spec.memory_mb)),
        "RUNTIME_MAX_RESP_BODY_SIZE": str(max_resp_body_size),
        "RUNTIME_CODE_ROOT": str(spec.code_dir) if spec.code_dir is not None else "",
    }
