"""Child side of the Python runtime: runs one user function, one invocation at a time.

Started by :mod:`invoker.runtime.python_runtime` as
``python -S -u -m invoker.runtime.python_worker --fds R,W`` in a clean environment and
its own session. Everything that can go wrong in user code happens in this process, so
the service only ever sees a result frame, an exit status, or a process it had to kill.

Protocol (on a dedicated pipe pair, because stdout/stderr belong to user code):
every frame is a 4-byte big-endian length, that many bytes of UTF-8 JSON (the header),
and, when the header has ``"body_len": N``, N raw bytes right after it. Bodies carry
the event and the result JSON verbatim, so neither side decodes and re-encodes
megabytes of payload just to move it (the parent would do that on its event loop).

parent -> worker
  ``{"type": "init", "handler", "code_dir", "name", "version", "package", "alias",
  "project_id", "region", "memory_mb", "timeout_s", "user_data", "credentials",
  "max_result_bytes", "rlimit_as_mb", "marker"}`` once, then
  ``{"type": "invoke", "request_id", "seq", "deadline", "body_len"[, "trace"]}`` + event bytes
  (``trace``: the W3C ``traceparent``/``tracestate`` the context exposes).
worker -> parent
  ``{"type": "ready"}`` or ``{"type": "ready", "error": {...}}`` after loading the
  handler, then per invoke ``{"type": "result", "request_id", "seq", "ok": true,
  "memory_used_mb", "body_len"}`` + result JSON bytes, or ``{"type": "result", ...,
  "ok": false, "error": {"category", "message", "type", "stack"}, "retire": bool}``.

Logs: ``print``, ``sys.stdout``/``sys.stderr``, ``context.getLogger()`` and anything
the process or its children write to fds 1/2 go straight to the stdout/stderr pipes,
unbuffered (``-u``), where the parent drains them continuously into a bounded
per-request buffer. Nothing is held here, so a request killed for a timeout or a
segfault still has every line it wrote. To attribute output exactly, the worker
writes an end-of-request marker (NUL + nonce + seq + NUL) to fds 1 and 2 after the
handler finished and before the result frame; pipes are FIFO, so everything before the
marker belongs to that request.

Cold start matters (every first invocation pays it), so this module imports only
``json``, ``os``, ``sys``, ``select``, ``_thread`` and the light context module at
start-up (``traceback`` and ``resource`` only when needed); ``-S`` skips ``site`` (and
with it the service's site-packages: a function ships its own dependencies, as on
FunctionGraph). Cold start measured ~40 ms, warm invocation ~1 ms.
"""

from __future__ import annotations

import _thread
import json
import os
import select
import sys
import time

from invoker.runtime.context import FunctionContext, FunctionInfo

TYPE_CHECKING = False  # see context.py: typing costs cold-start time
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any

    Frame = tuple[dict[str, Any], bytes]

MAX_HEADER_BYTES = 16 * 1024 * 1024
_MAX_STACK_FRAMES = 64
_MAX_STACK_LINE = 4096
_MAX_MESSAGE = 16 * 1024
_MB = 1024 * 1024


class ProtocolError(Exception):
    """The parent sent something that is not a frame; the worker cannot continue."""


def read_exact(fd: int, n: int) -> bytes:
    """Read exactly n bytes from a blocking fd; EOFError if the peer closed first."""
    chunks: list[bytes] = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def recv_frame(fd: int) -> Frame:
    size = int.from_bytes(read_exact(fd, 4), "big")
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header of {size} bytes")
    header = json.loads(read_exact(fd, size))
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    body_len = int(header.get("body_len", 0))
    return header, read_exact(fd, body_len) if body_len > 0 else b""


def send_frame(fd: int, header: dict[str, Any], body: bytes = b"") -> None:
    if body:
        header["body_len"] = len(body)
    raw = json.dumps(header, separators=(",", ":")).encode()
    write_all(fd, len(raw).to_bytes(4, "big") + raw)
    if body:
        write_all(fd, body)


def _error(category: str, message: str, type_: str = "", stack: list[str] | None = None) -> dict[str, Any]:
    return {"category": category, "message": message[:_MAX_MESSAGE], "type": type_, "stack": stack or []}


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a user exception whose __str__ itself raises
        return f"<unprintable {type(exc).__name__}>"


def _user_frames(tb: TracebackType | None) -> list[str]:
    """Formatted traceback frames of user code: ours and importlib's are noise to users."""
    import traceback  # only on the error path: ~7 ms to import

    frames = [
        f for f in traceback.extract_tb(tb) if f.filename != __file__ and not f.filename.startswith("<frozen importlib")
    ][-_MAX_STACK_FRAMES:]
    return [line.rstrip("\n")[:_MAX_STACK_LINE] for line in traceback.format_list(frames)]


def _traceback_text(exc: BaseException, stack: list[str]) -> str:
    import traceback

    head = "Traceback (most recent call last):\n" + "".join(s + "\n" for s in stack) if stack else ""
    return head + "".join(traceback.format_exception_only(type(exc), exc))


def _status_kb(field: str) -> int:
    """A VmXXX figure of this process from /proc/self/status, in kB (0 if unavailable)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(field.encode()):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset VmHWM so it measures this invocation's peak, not the worker's lifetime peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _log_sink(text: str) -> None:
    """Where ``context.getLogger()`` writes: fd 1, in order with print() output.

    Written to the fd directly so a user who swapped ``sys.stdout`` for a buffer of
    their own still gets logger lines into the request log.
    """
    try:
        write_all(1, text.encode("utf-8", "backslashreplace"))
    except OSError:  # fd 1 closed by user code: the line is lost, the request is not
        return


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # user code may have closed or replaced them with anything
            pass


def _watch_parent(fd: int) -> None:
    """Exit when the service goes away, even while user code spins in a loop.

    Polling the request pipe with no events still reports POLLHUP once every writer
    (only the parent holds one) is closed, i.e. when the parent died. A raw ``_thread``
    costs nothing to import, unlike ``threading`` or ``ctypes`` for PR_SET_PDEATHSIG.
    """
    poller = select.poll()
    poller.register(fd, 0)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        if any(mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, mask in events):
            os._exit(0)


def _apply_limits(rlimit_as_mb: int) -> None:
    """Backstop limits: the parent's RSS watchdog is the real memory limit.

    RLIMIT_AS stops a runaway allocation (which may outrun a 50 ms RSS poll) long
    before it can exhaust the machine, turning it into a MemoryError here. Core dumps
    are off: a segfaulting function must not litter the code directory with cores.
    """
    import resource

    for limit, value in ((resource.RLIMIT_AS, rlimit_as_mb * _MB), (resource.RLIMIT_CORE, 0)):
        if value < 0:
            continue
        try:
            _, hard = resource.getrlimit(limit)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass


class Worker:
    """One loaded user function."""

    def __init__(self, init: dict[str, Any]) -> None:
        self.handler_name = str(init["handler"])
        self.code_dir = str(init["code_dir"])
        self.max_result_bytes = int(init["max_result_bytes"])
        self.marker = b"\x00" + str(init["marker"]).encode() + b":"
        self.info = FunctionInfo(
            name=str(init.get("name", "")),
            version=str(init.get("version", "latest")),
            package=str(init.get("package", "default")),
            project_id=str(init.get("project_id", "")),
            region=str(init.get("region", "")),
            handler=self.handler_name,
            memory_mb=int(init.get("memory_mb", 128)),
            timeout_s=int(init.get("timeout_s", 3)),
            alias=str(init.get("alias", "")),
            user_data=init.get("user_data") or {},
            credentials=init.get("credentials") or {},
        )
        self.fn: Any = None
        self.load_error: dict[str, Any] | None = None

    def load(self) -> dict[str, Any]:
        """Import the handler module (at cold start, like FunctionGraph) -> ready frame."""
        module_name, _, attr = self.handler_name.rpartition(".")
        if not module_name or not attr:
            self.load_error = _error("load_failed", f"handler '{self.handler_name}' is not of the form module.function")
            return {"type": "ready", "error": self.load_error}
        # The worker's own PYTHONPATH entry exists only to import this module; user code
        # gets the code directory first and nothing of the service.
        ours = set(filter(None, os.environ.pop("PYTHONPATH", "").split(os.pathsep)))
        sys.path[:] = [self.code_dir, *(p for p in sys.path[1:] if p not in ours)]
        try:
            os.chdir(self.code_dir)
            __import__(module_name)
            module = sys.modules[module_name]
        except MemoryError:
            self.load_error = _error("memory_exceeded", "runtime memory limit exceeded while loading the handler")
            return {"type": "ready", "error": self.load_error}
        except Exception as exc:
            stack = _user_frames(exc.__traceback__)
            message = f"failed to load handler '{self.handler_name}':\n" + _traceback_text(exc, stack)
            self.load_error = _error("load_failed", message, type(exc).__name__, stack)
            return {"type": "ready", "error": self.load_error}
        fn = getattr(module, attr, None)
        if fn is None:
            self.load_error = _error("load_failed", f"handler '{self.handler_name}' not found")
        elif not callable(fn):
            self.load_error = _error("load_failed", f"handler '{self.handler_name}' is not callable")
        else:
            self.fn = fn
            return {"type": "ready"}
        return {"type": "ready", "error": self.load_error}

    def invoke(self, header: dict[str, Any], payload: bytes) -> Frame:
        request_id = str(header.get("request_id", ""))
        seq = int(header.get("seq", 0))
        frame: dict[str, Any] = {"type": "result", "request_id": request_id, "seq": seq, "ok": False}
        body = b""
        peak_reset = _reset_peak_rss()
        started = time.perf_counter()
        try:
            body, error, retire = self._run(request_id, float(header["deadline"]), payload, header.get("trace"))
        except Exception as exc:  # a bug on our side; never let it kill the worker silently
            error, retire = _error("system_error", f"worker failure: {exc!r}"), True
        # Execution time as the function saw it; the parent's clock would add its own queueing.
        frame["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        self._end_of_request(seq)
        used_kb = _status_kb("VmHWM:" if peak_reset else "VmRSS:")
        frame["memory_used_mb"] = round(used_kb / 1024, 3)
        if error is None:
            frame["ok"] = True
            return frame, body
        if error["category"] == "memory_exceeded":
            error["message"] += f" (used {used_kb / 1024:.3f} MB of {self.info.memory_mb} MB)"
        frame["error"] = error
        frame["retire"] = retire
        return frame, b""

    def _run(
        self, request_id: str, deadline: float, payload: bytes, trace: dict[str, str] | None = None
    ) -> tuple[bytes, dict[str, Any] | None, bool]:
        if self.fn is None:
            return b"", self.load_error or _error("load_failed", "handler not loaded"), True
        try:
            event = json.loads(payload) if payload.strip() else {}
        except ValueError as exc:
            return b"", _error("system_error", f"event payload is not valid JSON: {exc}"), False
        context = FunctionContext(request_id, deadline, self.info, _log_sink, trace)
        try:
            result = self.fn(event, context)
        except MemoryError as exc:
            # Drop the traceback first: its frames pin whatever was being allocated.
            exc.__traceback__ = None
            return b"", _error("memory_exceeded", "runtime memory limit exceeded: MemoryError"), True
        except Exception as exc:
            stack = _user_frames(exc.__traceback__)
            return b"", _error("code_exception", _safe_str(exc), type(exc).__name__, stack), False
        finally:
            del event
        try:
            body = json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except MemoryError:
            return (
                b"",
                _error("memory_exceeded", "runtime memory limit exceeded serializing the result"),
                True,
            )
        except (TypeError, ValueError, RecursionError, OverflowError) as exc:
            message = f"function result is not JSON serializable: {_safe_str(exc)}"
            return b"", _error("invalid_result", message, type(exc).__name__), False
        if len(body) > self.max_result_bytes:
            message = f"function result is {len(body)} bytes, over the limit of {self.max_result_bytes} bytes"
            return b"", _error("invalid_result", message), False
        return body, None, False

    def _end_of_request(self, seq: int) -> None:
        """Flush user output, then mark the end of this request on fds 1 and 2."""
        _flush_std_streams()
        marker = self.marker + str(seq).encode() + b"\x00"
        for fd in (1, 2):
            try:
                write_all(fd, marker)
            except OSError:  # user code closed the fd; the parent times its wait out
                continue


def _parse_fds(argv: list[str]) -> tuple[int, int]:
    for i, arg in enumerate(argv):
        if arg == "--fds" and i + 1 < len(argv):
            req, res = argv[i + 1].split(",")
            return int(req), int(res)
    raise SystemExit("usage: python -m invoker.runtime.python_worker --fds REQ_FD,RES_FD")


def main(argv: list[str] | None = None) -> int:
    req_fd, res_fd = _parse_fds(sys.argv[1:] if argv is None else argv)
    # pass_fds made them inheritable; a subprocess of user code must not hold them.
    os.set_inheritable(req_fd, False)
    os.set_inheritable(res_fd, False)
    # A small stack for our watcher (it only polls), then the default again for user threads.
    _thread.stack_size(256 * 1024)
    _thread.start_new_thread(_watch_parent, (req_fd,))
    _thread.stack_size(0)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8", errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            continue
    try:
        header, _ = recv_frame(req_fd)
    except EOFError:
        return 0
    if header.get("type") != "init":
        raise ProtocolError(f"expected an init frame, got {header.get('type')!r}")
    _apply_limits(int(header.get("rlimit_as_mb", -1)))
    import faulthandler  # builtin; dumps the Python stack to stderr on SIGSEGV & co.

    faulthandler.enable(all_threads=False)
    worker = Worker(header)
    send_frame(res_fd, worker.load())
    while True:
        try:
            header, body = recv_frame(req_fd)
        except EOFError:
            return 0
        kind = header.get("type")
        if kind == "invoke":
            frame, out = worker.invoke(header, body)
            send_frame(res_fd, frame, out)
        elif kind == "exit":
            return 0
        else:
            raise ProtocolError(f"unexpected frame type {kind!r}")


if __name__ == "__main__":
    sys.exit(main())
