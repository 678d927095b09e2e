"""Parent side of the Python runtime: a pool of isolated worker processes.

User code runs in :mod:`invoker.runtime.python_worker` child processes, never in the
service. Whatever the code does -- raise, hang, ``os._exit``, segfault, allocate without
bound, print megabytes -- the worst outcome is a dead worker and a precise
:class:`InvocationResult`; the event loop here only ever waits on pipes, futures and
short /proc reads.

Pool rules: warm workers are keyed by (URN, code digest) and run one invocation at a
time; an invocation with a new digest retires the function's old workers; idle workers
die after ``idle_ttl_s``; at most ``max_workers`` processes exist, and when the pool is
full an idle worker of another function is evicted, otherwise the invocation waits for
a worker to free up (per-function concurrency is the invoker's business).

Limits enforced per invocation: the timeout (cold start included; the worker's whole
process group is SIGKILLed when it passes), memory (VmRSS polled every 50 ms plus the
worker's own per-invocation peak, with RLIMIT_AS in the worker as a backstop), result
size, and log size (the last ``log_limit_bytes`` of output are kept).

Logs: the worker does not buffer output; print/logger/C-level/subprocess writes reach
its stdout/stderr pipes at once and are drained here continuously (a full pipe would
block the child) into the current request's bounded buffer, split at end-of-request
markers. So a killed request keeps every line it wrote. ``duration_ms`` runs from
getting a worker to the result, cold start included, like the timeout.

Known limit: a process that user code moves out of the worker's process group (setsid)
survives the group kill; only a container/cgroup boundary would catch that.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from invoker.runtime.base import (
    ErrorCategory,
    FunctionSpec,
    InvocationError,
    InvocationRequest,
    InvocationResult,
)
from invoker.runtime.context import alias_from_urn, iso_timestamp, worker_env
from invoker.runtime.invoke_log import finish_line, start_line

__all__ = ["PythonRuntime"]

_POLL_S = 0.05  # RSS / deadline poll period while a worker runs
_EXIT_GRACE_S = 0.2  # after an exit, how long a result frame already in flight may take
_MARKER_WAIT_S = 1.0  # wait for the end-of-request markers on stdout/stderr
_DRAIN_WAIT_S = 1.0  # after a kill, wait for the pipes to deliver the partial logs
_REAP_WAIT_S = 5.0
_HEADER_MAX = 1024 * 1024  # worker headers are small: errors are bounded in the worker
_IDLE_LOG_LIMIT = 8 * 1024  # output a worker writes between requests (shown with the next)
_STDERR_TAIL = 2048  # raw stderr quoted in CRASHED messages
_ERROR_LOG_LIMIT = 8 * 1024  # the error block appended to a failed request's log
_RLIMIT_AS_HEADROOM_MB = 1024
# Parent of the ``invoker`` package: the only thing the worker needs on PYTHONPATH.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class _LogBuffer:
    """Bytes that keep only the last ``limit`` written, counting what was dropped.

    Every log path goes through one of these, so a function printing gigabytes costs
    us at most ``limit`` bytes of memory (bytearray front-deletion is amortised O(1)).
    """

    __slots__ = ("_buf", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._buf = bytearray()
        self.dropped = 0

    def write(self, data: bytes) -> None:
        self._buf += data
        excess = len(self._buf) - self.limit
        if excess > 0:
            del self._buf[:excess]
            self.dropped += excess

    def take(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        self.dropped = 0
        return data

    def __len__(self) -> int:
        return len(self._buf)

    def text(self) -> str:
        data = bytes(self._buf)
        dropped = self.dropped
        if not dropped:
            return data.decode("utf-8", "replace")
        # Start at a line boundary when one is near, so the log does not open mid-line.
        nl = data.find(b"\n", 0, 1024)
        if nl >= 0:
            data = data[nl + 1 :]
            dropped += nl + 1
        return f"[... {dropped} bytes of earlier output truncated ...]\n" + data.decode("utf-8", "replace")


class _StreamSplitter:
    """Routes one worker output pipe into per-request logs at end-of-request markers.

    The worker writes ``NUL nonce ":" seq NUL`` to the pipe after each request's last
    output; everything before it belongs to request ``seq`` and is removed from the
    text. Markers can straddle reads, so a possible marker prefix is carried over.
    """

    _MAX_MARKER = 64

    def __init__(self, prefix: bytes, target: _LogBuffer, on_marker: Any, tail: _LogBuffer | None) -> None:
        self.prefix = prefix
        self.target = target
        self.done_seq = 0
        self._on_marker = on_marker
        self._tail = tail
        self._carry = b""

    def _emit(self, data: bytes) -> None:
        if data:
            self.target.write(data)
            if self._tail is not None:
                self._tail.write(data)

    def feed(self, data: bytes) -> None:
        if self._carry:
            data, self._carry = self._carry + data, b""
        prefix = self.prefix
        while True:
            i = data.find(prefix)
            if i < 0:
                break
            end = data.find(b"\x00", i + len(prefix))
            if end < 0:
                if len(data) - i <= self._MAX_MARKER:
                    self._emit(data[:i])
                    self._carry = data[i:]
                    return
                break  # too long to be a marker: it is just output
            seq_text = data[i + len(prefix) : end]
            if not seq_text.isdigit():
                self._emit(data[: end + 1])
                data = data[end + 1 :]
                continue
            self._emit(data[:i])
            data = data[end + 1 :]
            self.done_seq = int(seq_text)
            self._on_marker(self)
        # Hold back a trailing fragment that may be the start of the next marker.
        start = data.rfind(b"\x00", max(0, len(data) - len(prefix)))
        if start >= 0 and prefix.startswith(data[start:]):
            self._emit(data[:start])
            self._carry = data[start:]
        else:
            self._emit(data)

    def flush(self) -> None:
        carry, self._carry = self._carry, b""
        self._emit(carry)


class _WorkerProtocol(asyncio.SubprocessProtocol):
    """Receives the worker's stdout/stderr as it arrives and notices its exit at once.

    Used instead of ``asyncio.subprocess.Process``: its ``wait()`` only returns once
    every pipe is closed, which a grandchild holding stdout can postpone forever, and
    data callbacks let us drain continuously without reader tasks.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.streams: dict[int, _StreamSplitter] = {}
        self.on_exit: Any = None

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        stream = self.streams.get(fd)
        if stream is not None and isinstance(data, bytes):
            stream.feed(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        stream = self.streams.get(fd)
        if stream is not None:
            stream.flush()

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)
        if self.on_exit is not None:
            self.on_exit()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Worker:
    """One worker process and its pipes; owned by the pool."""

    def __init__(
        self,
        spec: FunctionSpec,
        transport: asyncio.SubprocessTransport,
        protocol: _WorkerProtocol,
        home: str,
        marker: bytes,
        initial_log: _LogBuffer,
    ) -> None:
        self.urn = spec.urn
        self.digest = spec.code_digest
        self.key = (spec.urn, spec.code_digest)
        self.transport = transport
        self.protocol = protocol
        self.pid: int = transport.get_pid()
        self.home = home
        self.busy = True
        self.retired = False
        self.kill_reason: str | None = None
        self.last_used = time.monotonic()
        self.seq = 0
        self.marker_wait_s = _MARKER_WAIT_S
        self.marker_event = asyncio.Event()
        self.idle_log = _LogBuffer(_IDLE_LOG_LIMIT)
        self.stderr_tail = _LogBuffer(_STDERR_TAIL)
        self.out = _StreamSplitter(marker, initial_log, self._on_marker, None)
        self.err = _StreamSplitter(marker, initial_log, self._on_marker, self.stderr_tail)
        protocol.streams = {1: self.out, 2: self.err}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pipe_transports: list[asyncio.BaseTransport] = []

    @property
    def exited(self) -> asyncio.Future[None]:
        return self.protocol.exited

    def _on_marker(self, stream: _StreamSplitter) -> None:
        if stream.done_seq == self.seq:
            stream.target = self.idle_log  # later output waits for the next request
        self.marker_event.set()

    def begin(self, log: _LogBuffer) -> int:
        """Start routing output to a new request's log; returns the request's seq."""
        self.seq += 1
        pending = self.idle_log.take()
        if pending:
            log.write(pending)
        self.out.target = log
        self.err.target = log
        self.marker_event.clear()
        return self.seq

    async def wait_markers(self, seq: int) -> None:
        """Wait until stdout and stderr have delivered everything request ``seq`` wrote."""
        deadline = time.monotonic() + self.marker_wait_s
        while self.out.done_seq < seq or self.err.done_seq < seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.protocol.closed.done():
                # The user closed or redirected fd 1/2; stop paying the wait every time.
                self.marker_wait_s = 0.05
                return
            self.marker_event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.marker_event.wait()

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        assert self.writer is not None
        if body:
            header["body_len"] = len(body)
        raw = json.dumps(header, separators=(",", ":")).encode()
        self.writer.write(len(raw).to_bytes(4, "big") + raw)
        if body:
            self.writer.write(body)

    def kill(self, reason: str) -> None:
        """SIGKILL the worker's whole process group (its subprocesses die with it)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        # The group outlives the leader while any member lives, so killing it after
        # the leader exited still reaches stray grandchildren.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if self.transport.get_returncode() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.transport.kill()

    async def wait_drained(self, within_s: float) -> None:
        """Give the pipes time to deliver what a dead worker wrote (partial logs)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await asyncio.shield(self.protocol.closed)


class _Invocation:
    __slots__ = ("canceled", "request_id", "worker")

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.canceled: asyncio.Future[None] = loop.create_future()
        self.worker: _Worker | None = None


class _Abort(Exception):
    """Raised out of the pool wait: the invocation was canceled or the runtime closed."""

    def __init__(self, error: InvocationError) -> None:
        super().__init__(error.message)
        self.error = error


_NOTHING = object()  # _take found neither a worker nor a slot


def _rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB, or None once it is gone.

    A synchronous read on the event loop on purpose: procfs is generated in memory
    without I/O and takes microseconds, cheaper than a thread hop every 50 ms.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _consume_exception(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "worker process exited"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"worker process exited with signal {name}"
    return f"worker process exited with exit code {returncode}"


def _error_from_worker(raw: object) -> InvocationError:
    if not isinstance(raw, dict):
        return InvocationError(ErrorCategory.SYSTEM_ERROR, "worker sent a malformed error")
    try:
        category = ErrorCategory(str(raw.get("category")))
    except ValueError:
        category = ErrorCategory.SYSTEM_ERROR
    stack = raw.get("stack")
    return InvocationError(
        category,
        str(raw.get("message", ""))[:_HEADER_MAX],
        error_type=str(raw.get("type") or ""),
        stack=[str(s) for s in stack] if isinstance(stack, list) else [],
    )


class PythonRuntime:
    """Runs FunctionGraph Python functions (``handler(event, context)``) in worker processes.

    Implements :class:`invoker.runtime.base.Runtime`. Never raises for anything user
    code does; every failure is an :class:`InvocationResult` with an error category.
    """

    def __init__(
        self,
        *,
        max_workers: int = 8,
        idle_ttl_s: float = 300.0,
        python: str = sys.executable,
        max_result_bytes: int = 6 * 1024 * 1024,
        log_limit_bytes: int = 64 * 1024,
        work_root: Path | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._idle_ttl_s = idle_ttl_s
        self._python = python
        self._max_result_bytes = max_result_bytes
        self._log_limit = log_limit_bytes
        # Workers' HOME/cwd directories live here; a service that was SIGKILLed cannot
        # remove them, so the owner of work_root clears it at start.
        self._work_root = work_root
        self._workers: set[_Worker] = set()  # live workers, busy or idle
        self._idle: dict[tuple[str, str], list[_Worker]] = {}
        self._spawning = 0  # pool slots reserved by spawns in progress
        # Callers waiting for a worker, oldest first. A freed worker or slot is handed to
        # the oldest (``_wake``); ``_handoffs`` counts those woken but not yet running, so
        # newcomers queue behind them instead of grabbing what was handed over.
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._handoffs = 0
        self._running: dict[str, _Invocation] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # -- Runtime protocol -------------------------------------------------------------

    async def start(self) -> None:
        """Start the idle-worker reaper (also started lazily by the first invoke)."""
        if self._reaper is None and not self._closed:
            self._reaper = asyncio.create_task(self._reap_idle_loop(), name="python-runtime-reaper")

    async def close(self) -> None:
        """Kill every worker and wait until all of them are reaped; idempotent."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for worker in list(self._workers):
            if worker.busy:
                worker.kill("closed")  # its invocation notices, reports, and removes it
            else:
                self._remove(worker, "closed")
        self._wake()
        for _ in range(100):  # running invocations finish quickly once their worker died
            if not self._running:
                break
            await asyncio.sleep(0.02)
        for worker in list(self._workers):
            self._remove(worker, "closed")
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def invoke(self, spec: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        await self.start()
        loop = asyncio.get_running_loop()
        started_wall = time.time()
        inv = _Invocation(request.request_id, loop)
        self._running[request.request_id] = inv
        log = _LogBuffer(self._log_limit)
        body = b""
        error: InvocationError | None = None
        duration_ms = 0.0
        memory_mb = 0.0
        try:
            body, error, duration_ms, memory_mb = await self._invoke(spec, request, inv, log)
        except _Abort as abort:
            error = abort.error
        except BaseException as exc:
            # The caller canceled this coroutine (or we have a bug) mid-invocation: the
            # worker's state is unknown, so it must not go back to the pool.
            if inv.worker is not None and inv.worker.busy:
                self._remove(inv.worker, "abandoned")
            if not isinstance(exc, Exception):
                raise
            error = InvocationError(ErrorCategory.SYSTEM_ERROR, f"python runtime failure: {exc!r}")
        finally:
            if self._running.get(request.request_id) is inv:
                del self._running[request.request_id]
        result = InvocationResult(
            request_id=request.request_id,
            body=body,
            error=error,
            duration_ms=duration_ms,
            memory_used_mb=round(memory_mb, 3),
        )
        if error is not None:
            result.body = json.dumps(error.as_payload(), ensure_ascii=False).encode()
        result.logs = self._frame_logs(spec, result, log, started_wall)
        return result

    async def cancel(self, request_id: str) -> bool:
        """Stop a queued or running invocation; it returns CANCELED."""
        inv = self._running.get(request_id)
        if inv is None or inv.canceled.done():
            return False
        inv.canceled.set_result(None)
        if inv.worker is not None:
            inv.worker.kill("canceled")
        return True

    async def retire(self, urn: str) -> None:
        """Kill the function's idle workers now; busy ones die when their invocation ends."""
        for worker in list(self._workers):
            if worker.urn == urn:
                if worker.busy:
                    worker.retired = True
                else:
                    self._remove(worker, "retired")

    # -- introspection (tests, debugging) ---------------------------------------------

    def worker_pids(self, urn: str | None = None) -> list[int]:
        """PIDs of live workers (of one function if ``urn`` is given), sorted."""
        return sorted(w.pid for w in self._workers if urn is None or w.urn == urn)

    # -- invocation -------------------------------------------------------------------

    async def _invoke(
        self, spec: FunctionSpec, request: InvocationRequest, inv: _Invocation, log: _LogBuffer
    ) -> tuple[bytes, InvocationError | None, float, float]:
        """Acquire a worker, run the request on it; -> (body, error, duration_ms, memory_mb)."""
        if self._closed:
            return b"", InvocationError(ErrorCategory.SYSTEM_ERROR, "python runtime is closed"), 0.0, 0.0
        if spec.code_dir is None:
            msg = f"function {spec.urn} has no extracted code directory"
            return b"", InvocationError(ErrorCategory.SYSTEM_ERROR, msg), 0.0, 0.0
        timeout_s = request.timeout_s or spec.timeout_s
        worker = await self._acquire(spec, inv)
        t_start = time.monotonic()
        deadline = t_start + timeout_s  # cold start counts against the timeout
        peak = [0.0]

        def failed(err: InvocationError, since: float) -> tuple[bytes, InvocationError, float, float]:
            return b"", err, (time.monotonic() - since) * 1000, peak[0]

        worker_was_cold = worker is None
        if worker is None:  # a slot was reserved: cold start
            try:
                worker = await self._spawn(spec, log)
            except OSError as exc:
                msg = f"failed to start the Python worker: {exc}"
                return failed(InvocationError(ErrorCategory.SYSTEM_ERROR, msg), t_start)
            inv.worker = worker
            if inv.canceled.done():
                worker.kill("canceled")
            init = {
                "type": "init",
                "handler": spec.handler,
                "code_dir": str(spec.code_dir),
                "name": spec.name,
                "version": spec.version,
                "package": spec.package,
                "alias": alias_from_urn(spec.urn, spec.version),
                "project_id": spec.project_id,
                "region": spec.region,
                "memory_mb": spec.memory_mb,
                "timeout_s": spec.timeout_s,
                "user_data": dict(spec.user_data),
                "credentials": dict(spec.credentials),
                "max_result_bytes": self._max_result_bytes,
                "rlimit_as_mb": spec.memory_mb + _RLIMIT_AS_HEADROOM_MB,
                "marker": worker.out.prefix[1:-1].decode(),
            }
            got = await self._exchange(worker, inv, deadline, spec, timeout_s, peak, init, b"")
            if isinstance(got, InvocationError):
                return failed(got, t_start)
            ready = got[0]
            if ready.get("type") != "ready":
                err = self._protocol_failure(worker, f"expected a ready frame, got {ready.get('type')!r}")
                return failed(err, t_start)
            if ready.get("error"):
                # Do not keep a worker whose import failed: a fixed dependency (e.g. a
                # file the module reads at import) should be picked up next time.
                self._remove(worker, "load failed")
                return failed(_error_from_worker(ready["error"]), t_start)
        inv.worker = worker
        if inv.canceled.done():
            worker.kill("canceled")
        seq = worker.begin(log)
        header: dict[str, Any] = {"type": "invoke", "request_id": request.request_id, "seq": seq, "deadline": deadline}
        if request.trace:
            header["trace"] = request.trace  # context.getTraceParent() in the function
        got = await self._exchange(worker, inv, deadline, spec, timeout_s, peak, header, request.payload)
        if isinstance(got, InvocationError):
            return failed(got, t_start)
        # Measured like the timeout: from getting a worker, cold start included, so a
        # timed-out invocation reports a duration equal to its timeout. A warm worker's own
        # measurement replaces it below.
        duration_ms = (time.monotonic() - t_start) * 1000
        frame, body = got
        if frame.get("type") != "result" or frame.get("seq") != seq:
            err = self._protocol_failure(worker, "unexpected frame instead of the result")
            return failed(err, t_start)
        reported = frame.get("memory_used_mb")
        if isinstance(reported, int | float):
            peak[0] = max(peak[0], float(reported))
        executed = frame.get("duration_ms")
        if isinstance(executed, int | float) and not worker_was_cold:
            # Warm: report the function's own execution time (the parent's clock would add
            # event-loop queueing under load). Cold starts keep the wall time, which
            # includes starting the worker, as on FunctionGraph.
            duration_ms = float(executed)
        await worker.wait_markers(seq)
        if peak[0] > spec.memory_mb:
            # The allocation came and went between two polls; the worker's own peak
            # measurement still caught it. Its heap may stay bloated: do not reuse it.
            self._remove(worker, "memory")
            msg = f"runtime memory limit exceeded: used {peak[0]:.0f} MB of {spec.memory_mb} MB"
            return b"", InvocationError(ErrorCategory.MEMORY_EXCEEDED, msg), duration_ms, peak[0]
        if frame.get("ok"):
            self._release(worker, reusable=True)
            return body, None, duration_ms, peak[0]
        self._release(worker, reusable=not frame.get("retire"))
        return b"", _error_from_worker(frame.get("error")), duration_ms, peak[0]

    async def _exchange(
        self,
        worker: _Worker,
        inv: _Invocation,
        deadline: float,
        spec: FunctionSpec,
        timeout_s: float,
        peak: list[float],
        header: dict[str, Any],
        body: bytes,
    ) -> tuple[dict[str, Any], bytes] | InvocationError:
        """Send one frame and await the reply while enforcing timeout, memory and cancel.

        Any failure kills the worker, removes it from the pool and waits (bounded) for
        its pipes to deliver the partial logs before returning the error.
        """
        task = asyncio.ensure_future(self._send_recv(worker, header, body))
        # On the kill paths the read fails later with EOF; nobody needs that exception.
        task.add_done_callback(_consume_exception)
        watched: set[asyncio.Future[Any]] = {task, worker.exited, inv.canceled}
        try:
            while True:
                if inv.canceled.done():
                    return await self._fail(worker, "canceled", ErrorCategory.CANCELED, "function invocation canceled")
                if task.done():
                    if task.exception() is None:
                        return task.result()
                    return await self._lost(worker, f"worker protocol error: {task.exception()!r}")
                if self._closed:
                    return await self._fail(worker, "closed", ErrorCategory.SYSTEM_ERROR, "python runtime closed")
                now = time.monotonic()
                if now >= deadline:
                    msg = f"function invocation timed out after {_fmt_seconds(timeout_s)} s"
                    return await self._fail(worker, "timeout", ErrorCategory.TIMEOUT, msg)
                if worker.exited.done():
                    # A result written just before the exit may still be in the pipe.
                    await asyncio.wait({task}, timeout=_EXIT_GRACE_S)
                    if task.done() and task.exception() is None:
                        return task.result()
                    return await self._lost(worker, None)
                rss = _rss_mb(worker.pid)
                if rss is not None:
                    peak[0] = max(peak[0], rss)
                    if rss > spec.memory_mb:
                        msg = f"runtime memory limit exceeded: used {rss:.0f} MB of {spec.memory_mb} MB"
                        return await self._fail(worker, "memory", ErrorCategory.MEMORY_EXCEEDED, msg)
                await asyncio.wait(
                    watched,
                    timeout=min(_POLL_S, deadline - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            if not task.done():
                task.cancel()

    async def _send_recv(self, worker: _Worker, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        assert worker.reader is not None and worker.writer is not None
        worker.send(header, body)
        await worker.writer.drain()
        reader = worker.reader
        size = int.from_bytes(await reader.readexactly(4), "big")
        if size > _HEADER_MAX:
            raise ValueError(f"frame header of {size} bytes")
        frame = json.loads(await reader.readexactly(size))
        if not isinstance(frame, dict):
            raise ValueError("frame header is not an object")
        body_len = frame.get("body_len", 0)
        if not isinstance(body_len, int) or not 0 <= body_len <= self._max_result_bytes:
            raise ValueError(f"frame body of {body_len!r} bytes")
        return frame, await reader.readexactly(body_len) if body_len else b""

    async def _fail(self, worker: _Worker, reason: str, category: ErrorCategory, message: str) -> InvocationError:
        worker.kill(reason)
        self._remove(worker, reason)
        await worker.wait_drained(_DRAIN_WAIT_S)
        return InvocationError(category, message)

    async def _lost(self, worker: _Worker, problem: str | None) -> InvocationError:
        """The worker died or broke the protocol without us killing it: report it as CRASHED.

        ``problem`` is set when the result pipe failed (EOF, garbage) rather than the
        exit being seen first; a dying process is given a moment to exit so the report
        can name its exit code or signal.
        """
        if not worker.exited.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EXIT_GRACE_S):
                    await asyncio.shield(worker.exited)
        our_reason = worker.kill_reason  # set if we killed it (cancel, close) meanwhile
        returncode = worker.transport.get_returncode()
        worker.kill("crashed")
        self._remove(worker, "crashed")
        await worker.wait_drained(_DRAIN_WAIT_S)
        if our_reason == "closed":
            return InvocationError(ErrorCategory.SYSTEM_ERROR, "python runtime closed")
        if our_reason == "canceled":
            return InvocationError(ErrorCategory.CANCELED, "function invocation canceled")
        if returncode is not None:
            message = _exit_description(returncode)
        else:
            message = problem or "worker process stopped responding"
        tail = worker.stderr_tail.text().strip()
        if tail:
            message += f"; last stderr output:\n{tail}"
        return InvocationError(ErrorCategory.CRASHED, message)

    def _protocol_failure(self, worker: _Worker, problem: str) -> InvocationError:
        worker.kill("protocol")
        self._remove(worker, "protocol")
        return InvocationError(ErrorCategory.CRASHED, f"worker protocol error: {problem}")

    # -- pool -------------------------------------------------------------------------

    async def _acquire(self, spec: FunctionSpec, inv: _Invocation) -> _Worker | None:
        """A warm idle worker, or None after reserving a slot for a new one (cold start).

        First come, first served: while others wait, a newcomer queues behind them.
        """
        loop = asyncio.get_running_loop()
        handed = False  # woken by _wake: we hold a handoff and go first
        while True:
            if self._closed or inv.canceled.done():
                if handed:
                    self._pass_handoff()
                if self._closed:
                    raise _Abort(InvocationError(ErrorCategory.SYSTEM_ERROR, "python runtime is closed"))
                raise _Abort(InvocationError(ErrorCategory.CANCELED, "function invocation canceled"))
            self._retire_other_digests(spec.urn, spec.code_digest)
            if handed or not (self._waiters or self._handoffs):
                taken = self._take(spec)
                if taken is not _NOTHING:
                    if handed:
                        self._handoffs -= 1
                    return taken  # type: ignore[return-value]
            waiter: asyncio.Future[None] = loop.create_future()
            if handed:  # a spurious wake-up: keep our place at the head of the queue
                self._handoffs -= 1
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            try:
                await asyncio.wait({waiter, inv.canceled}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._pass_handoff()
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
            handed = waiter.done() and not waiter.cancelled()
            if not handed and waiter in self._waiters:
                self._waiters.remove(waiter)

    def _take(self, spec: FunctionSpec) -> _Worker | object | None:
        """A warm worker of ``spec``, None for a reserved spawn slot, or _NOTHING."""
        key = (spec.urn, spec.code_digest)
        idle = self._idle.get(key)
        while idle:
            worker = idle.pop()  # most recently used: lets the others age out
            if not idle:
                del self._idle[key]
            if not worker.exited.done():
                worker.busy = True
                return worker
            self._remove(worker, "exited")
            idle = self._idle.get(key)
        if len(self._workers) + self._spawning < self._max_workers:
            self._spawning += 1
            return None
        victim = min((w for ws in self._idle.values() for w in ws), key=lambda w: w.last_used, default=None)
        if victim is not None:
            self._remove(victim, "evicted")
            self._spawning += 1
            return None
        return _NOTHING

    def _pass_handoff(self) -> None:
        """We were handed a worker/slot but leave without it: hand it to the next waiter."""
        self._handoffs -= 1
        self._wake()

    def _retire_other_digests(self, urn: str, digest: str) -> None:
        for worker in list(self._workers):
            if worker.urn == urn and worker.digest != digest:
                if worker.busy:
                    worker.retired = True
                else:
                    self._remove(worker, "new code")

    def _release(self, worker: _Worker, *, reusable: bool) -> None:
        worker.busy = False
        worker.last_used = time.monotonic()
        if not reusable or worker.retired or self._closed or worker.exited.done():
            self._remove(worker, "retired")
        else:
            self._idle.setdefault(worker.key, []).append(worker)
            self._wake()

    def _remove(self, worker: _Worker, reason: str) -> None:
        """Take a worker out of the pool, kill it, and reap it in the background."""
        if worker not in self._workers:
            return
        self._workers.discard(worker)
        idle = self._idle.get(worker.key)
        if idle and worker in idle:
            idle.remove(worker)
            if not idle:
                del self._idle[worker.key]
        worker.kill(reason)
        task = asyncio.get_running_loop().create_task(self._reap(worker))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        self._wake()

    def _on_worker_exit(self, worker: _Worker) -> None:
        """An idle worker died by itself (e.g. a user thread called os._exit): drop it."""
        if worker in self._workers and not worker.busy:
            self._remove(worker, "exited")

    def _wake(self) -> None:
        """A worker or slot may have freed up: hand it to the oldest waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._handoffs += 1
                return

    async def _reap(self, worker: _Worker) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REAP_WAIT_S):
                await asyncio.shield(worker.exited)
        await worker.wait_drained(_DRAIN_WAIT_S)
        for transport in worker.pipe_transports:
            transport.close()
        worker.transport.close()
        await asyncio.to_thread(shutil.rmtree, worker.home, True)

    async def _reap_idle_loop(self) -> None:
        interval = min(max(self._idle_ttl_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            cutoff = time.monotonic() - self._idle_ttl_s
            for worker in [w for ws in self._idle.values() for w in ws]:
                if worker.last_used <= cutoff:
                    self._remove(worker, "idle")

    async def _spawn(self, spec: FunctionSpec, log: _LogBuffer) -> _Worker:
        """Start a worker process for ``spec``; consumes the slot ``_acquire`` reserved."""
        loop = asyncio.get_running_loop()
        req_r = req_w = res_r = res_w = -1
        home = ""
        try:
            # mkdtemp and pipe() are single cheap syscalls; no thread hop needed.
            home = tempfile.mkdtemp(prefix="triggerbus-fn-", dir=self._work_root)
            req_r, req_w = os.pipe()
            res_r, res_w = os.pipe()
            env = worker_env(
                spec,
                home=home,
                pythonpath=_PACKAGE_ROOT,
                python=self._python,
                max_resp_body_size=self._max_result_bytes,
            )
            marker = b"\x00TBEOR" + secrets.token_hex(8).encode() + b":"
            protocol = _WorkerProtocol(loop)
            argv = [
                self._python,
                "-S",
                "-u",
                "-m",
                "invoker.runtime.python_worker",
                "--fds",
                f"{req_r},{res_w}",
            ]
            transport, _ = await loop.subprocess_exec(
                lambda: protocol,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=home,
                pass_fds=(req_r, res_w),
                start_new_session=True,  # own process group: one killpg takes down everything
            )
        except BaseException:
            for fd in (req_r, req_w, res_r, res_w):
                if fd >= 0:
                    os.close(fd)
            if home:
                shutil.rmtree(home, ignore_errors=True)
            self._spawning -= 1
            self._wake()
            raise
        os.close(req_r)
        os.close(res_w)
        worker = _Worker(spec, transport, protocol, home, marker, log)
        self._spawning -= 1
        self._workers.add(worker)
        protocol.on_exit = lambda: self._on_worker_exit(worker)
        try:
            reader = asyncio.StreamReader()
            rtransport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(res_r, "rb", buffering=0)
            )
            worker.pipe_transports.append(rtransport)
            wtransport, wprotocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, os.fdopen(req_w, "wb", buffering=0)
            )
            worker.pipe_transports.append(wtransport)
            worker.reader = reader
            worker.writer = asyncio.StreamWriter(wtransport, wprotocol, None, loop)
        except BaseException:
            self._remove(worker, "spawn failed")
            raise
        return worker

    # -- logs -------------------------------------------------------------------------

    def _frame_logs(self, spec: FunctionSpec, result: InvocationResult, log: _LogBuffer, started: float) -> str:
        """FunctionGraph's request log: Start line, output, error summary, Finish line.

        The framing lines come from :mod:`invoke_log`, shared with the HTTP runtime, so
        every runtime's logs parse the same way.
        """
        rid = result.request_id
        parts = [start_line(rid, spec.version, started) + "\n"]
        text = log.text()
        if text:
            parts.append(text if text.endswith("\n") else text + "\n")
        err = result.error
        if err is not None:
            block = f"{iso_timestamp()} {rid} ERROR {err.error_type or err.category.value}: {err.message}\n"
            if err.stack:
                block += "".join(line + "\n" for line in err.stack)
            if len(block) > _ERROR_LOG_LIMIT:
                block = block[: _ERROR_LOG_LIMIT - 20] + "\n[... truncated ...]\n"
            parts.append(block)
        parts.append(finish_line(rid, result.duration_ms, result.memory_used_mb, err is None))
        return "".join(parts)
