"""What every benchmark in ``bench/`` shares: the service in a subprocess, CPU seconds, tables, the command line.

Every bench measures Triggerbus against baselines *in the same run*, so the pieces that set up a
run -- a fresh ``python -m triggerbus.cli serve`` with the bench token, the no-op function, CPU
accounting from ``/proc``, percentiles, the Markdown tables, ``--json`` and Ctrl-C -- must be the
same for all of them, or their results would not compare. They live here once, so that a fix
(a server that outlives a bench, a percentile off by one) reaches every bench.

What only the trigger benches share (HTTP access to triggers, polling a phase, reading latencies
back from the records, the raw baseline subprocess) is in :mod:`bench._triggers`; what only the
Redis-stream benches (DIS, LTS) share is in :mod:`bench._stream_trigger`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"
PROJECT = "bench"
FUNCTION = "noop"
URN = f"urn:fss:local:{PROJECT}:function:default:{FUNCTION}:latest"
FGS = f"/v2/{PROJECT}/fgs"
NOOP_SOURCE = "def handler(event, context):\n    return None\n"
POLL_S = 0.05  # how often a phase polls the service (one poll costs the server ~1 ms of CPU)
STALL_S = 60.0  # give up on a phase after this long without progress


# -- the no-op function ----------------------------------------------------------------------------------


def default_workers() -> int:
    """The service's own default for TRIGGERBUS_MAX_WORKERS."""
    return max(4, 2 * (os.cpu_count() or 2))


def noop_zip() -> bytes:
    """The no-op function's code package, as the service stores it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("index.py", NOOP_SOURCE)
    return buffer.getvalue()


def noop_handler() -> Callable[[Any, Any], Any]:
    """The same no-op ``handler(event, context)``, for the baselines that call it in-process."""
    namespace: dict[str, Any] = {}
    exec(compile(NOOP_SOURCE, "index.py", "exec"), namespace)
    handler: Callable[[Any, Any], Any] = namespace["handler"]
    return handler


def function_body(max_instances: int = 0, name: str = FUNCTION) -> dict[str, Any]:
    """The create-function request of the no-op function (every bench invokes the same one, by default
    under the name :data:`FUNCTION`)."""
    body: dict[str, Any] = {
        "func_name": name,
        "runtime": "Python3.9",
        "handler": "index.handler",
        "code_type": "zip",
        "func_code": {"file": base64.b64encode(noop_zip()).decode()},
        "timeout": 10,
        "memory_size": 256,
    }
    if max_instances:
        body["max_instance_num"] = max_instances
    return body


async def create_function(http: aiohttp.ClientSession, base: str, max_instances: int = 0, name: str = FUNCTION) -> None:
    """Create the no-op function (as ``name``) on the service at ``base`` (``http`` carries the token)."""
    async with http.post(f"{base}{FGS}/functions", json=function_body(max_instances, name)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"create function: HTTP {resp.status}: {await resp.text()}")


# -- statistics ------------------------------------------------------------------------------------------


@dataclass
class Dist:
    """Percentiles (nearest rank) of a sample, in milliseconds."""

    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Dist:
        if not values_ms:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        ordered = sorted(values_ms)

        def rank(q: float) -> float:
            return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]

        return cls(len(ordered), sum(ordered) / len(ordered), rank(50), rank(95), rank(99), ordered[-1])


def iso_ts(text: str) -> float:
    """Epoch seconds of an ISO 8601 time from the records API (``Z`` or an offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def evenly(items: Sequence[Any], most: int) -> list[Any]:
    """At most ``most`` of ``items``, evenly spread from the first to the last (all if fewer)."""
    if len(items) <= most:
        return list(items)
    picks = sorted({round(k * (len(items) - 1) / max(1, most - 1)) for k in range(most)})
    return [items[i] for i in picks]


# -- CPU accounting from /proc (Linux; silently absent elsewhere) ----------------------------------------
# On a small machine the load generator, the service, its workers and the brokers share the CPUs, so
# every bench reports who used how much of them.

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid``, including children it has reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # fields[0] is the state (field 3 of stat)
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICK


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                found.extend(int(x) for x in fh.read().split())
    return found


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = _children(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(_children(child))
    return out


def cpu_snapshot(root: int) -> dict[int, float]:
    snap: dict[int, float] = {}
    for pid in (root, *descendants(root)):
        value = _cpu_s(pid)
        if value is not None:
            snap[pid] = value
    return snap


def cpu_delta(before: dict[int, float], after: dict[int, float], root: int) -> tuple[float, float]:
    """(CPU seconds of ``root`` itself, of its descendants) between two snapshots."""
    own = after.get(root, 0.0) - before.get(root, 0.0)
    rest = sum(value - before.get(pid, 0.0) for pid, value in after.items() if pid != root)
    return own, rest


def cpu_mark(pid: int | None) -> dict[int, float]:
    """A snapshot to measure from; empty when there is no process (or no /proc) to read."""
    return cpu_snapshot(pid) if pid else {}


def cpu_since(mark: dict[int, float], pid: int | None) -> float | None:
    """CPU seconds of ``pid`` and its descendants since ``mark`` (None if unknown)."""
    if not pid or not mark:
        return None
    return sum(cpu_delta(mark, cpu_snapshot(pid), pid))


def cpu_split_since(mark: dict[int, float], pid: int) -> tuple[float | None, float | None]:
    """(service, its worker processes) CPU seconds since ``mark``, or (None, None) if unknown."""
    if not mark:
        return None, None
    return cpu_delta(mark, cpu_snapshot(pid), pid)


# -- servers in subprocesses -----------------------------------------------------------------------------
# The service and the baseline servers run as subprocesses, so that the load generator does not share
# their event loop and their CPU seconds can be told apart.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This environment, with the repository importable (``python -m bench...`` and ``triggerbus.cli``)."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath, **extra}


async def wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(base + "/health") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server did not become healthy in {timeout} s:\n{log.read_text()[-4000:]}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (graceful), then SIGKILL; also kill descendants that outlived it, by pid."""
    family = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for pid in family:  # workers run in their own sessions; normally the server reaped them already
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def server_process(argv: list[str], env: dict[str, str], port: int, log: Path) -> AsyncIterator[int]:
    """Start a server subprocess, wait for /health, yield its pid; always stopped afterwards."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        yield proc.pid
    finally:
        stop_process(proc)


@contextlib.asynccontextmanager
async def triggerbus_server(data_dir: Path, log: Path, **env: str) -> AsyncIterator[tuple[str, int]]:
    """``python -m triggerbus.cli serve`` on a free port with the bench token and ``env``: (base URL, pid)."""
    port = free_port()
    argv = [sys.executable, "-m", "triggerbus.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    async with server_process(argv, child_env(TRIGGERBUS_TOKEN=TOKEN, **env), port, log) as pid:
        yield f"http://127.0.0.1:{port}", pid


def service_session() -> aiohttp.ClientSession:
    """The bench's client for the service's management APIs (token, generous timeout)."""
    return aiohttp.ClientSession(headers={"X-Auth-Token": TOKEN}, timeout=aiohttp.ClientTimeout(total=120))


async def serve_until_stopped(app: web.Application, port: int, on_stop: Callable[[], None] | None = None) -> None:
    """Serve ``app`` (plus ``/health``) on 127.0.0.1 with the service's ``AppRunner`` settings until SIGINT/SIGTERM.

    The baseline servers are held to the service's HTTP stack, so that their difference to it is
    what the service does, not how it serves. ``on_stop`` runs after the server closed.
    """

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)  # as triggerbus.server
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if on_stop is not None:
            on_stop()


def durable_sqlite(path: str, synchronous: str, schema: str) -> sqlite3.Connection:
    """A baseline's own durable store: WAL and ``synchronous`` as the service's, autocommit, ``schema`` made."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(schema)
    return conn


class SqliteWriter:
    """A durable baseline's store: one transaction (one fsync) per call, on one thread of its own.

    The naive way to be durable before answering: the event loop never blocks, and callers queue
    behind each other's commits (the service group-commits instead).
    """

    def __init__(self, path: str, synchronous: str, schema: str) -> None:
        self.conn = durable_sqlite(path, synchronous, schema)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite")

    def _commit(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        for row in rows:
            self.conn.execute(sql, row)
        self.conn.execute("COMMIT")

    async def write(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """``sql`` once per row, in one committed transaction."""
        await asyncio.get_running_loop().run_in_executor(self.executor, self._commit, sql, rows)

    def close(self) -> None:
        self.executor.shutdown()
        self.conn.close()


# -- waiting for a phase ------------------------------------------------------------------------------------


async def poll_until(probe: Callable[[], Awaitable[tuple[bool, Any]]], interval: float = POLL_S) -> bool:
    """Call ``probe`` every ``interval`` s until it says the phase is done: True.

    ``probe()`` answers (done: all was sent and processed, a progress marker). False when the
    marker has not changed for :data:`STALL_S`: the phase stalled (the caller says so and goes on).
    """
    marker: Any = object()
    last_progress = time.monotonic()
    while True:
        done, now = await probe()
        if done:
            return True
        if now != marker:
            marker, last_progress = now, time.monotonic()
        elif time.monotonic() - last_progress > STALL_S:
            return False
        await asyncio.sleep(interval)


# -- the report -----------------------------------------------------------------------------------------


def num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0 or math.isnan(value) or math.isnan(base):
        return "-"
    r = value / base
    return f"1/{1 / r:,.0f}x" if 0 < r < 0.01 else f"{r:.3g}x"


def pair(d: Dist | None) -> str:
    """``p50 / p99`` of a latency, or ``-``."""
    if d is None or d.n == 0:
        return "-"
    return f"{num(d.p50)} / {num(d.p99)}"


def per_item_ms(n: int, *seconds: float | None) -> float | None:
    """Milliseconds per item of a sum of CPU seconds (None if any is unknown)."""
    if n <= 0 or any(x is None for x in seconds):
        return None
    return sum(x for x in seconds if x is not None) * 1000 / n


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table, numbers right-aligned (docs/benchmarks.md takes them as printed)."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]))
        return "| " + " | ".join(out) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    for row in rows:
        print(line(row))


def print_section(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A ``## title`` and its table, each after a blank line."""
    print()
    print(f"## {title}")
    print()
    print_table(header, rows)


def print_heading(title: str, info: dict[str, Any]) -> None:
    """``# Triggerbus <title> benchmark`` and the run's machine and settings, one line."""
    print(f"# Triggerbus {title} benchmark")
    print()
    print("  ".join(f"{k}={v}" for k, v in info.items()))


def step(text: str) -> None:
    """Progress on stderr (the results go to stdout)."""
    print(f"  .. {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def fs_type(path: Path) -> str:
    """The filesystem type holding ``path`` (fsync cost depends on it), from /proc/mounts."""
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], f"{parts[2]} ({parts[0]} on {parts[1]})"
    return kind


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on a shared machine shows here."""
    with contextlib.suppress(OSError), open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])
    return "?"


def machine_basics() -> dict[str, Any]:
    """The first keys of every bench's ``machine``: CPUs, platform, Python and SQLite versions."""
    model = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def paced_info(args: argparse.Namespace) -> str:
    """The ``paced`` entry of ``machine``."""
    return f"{args.paced_rate:g}/s for {args.paced_seconds:g} s" if args.paced_rate > 0 else "off"


def paced_count(args: argparse.Namespace) -> int:
    """How many sends the paced phase makes (0: ``--paced-rate 0``, no paced phase)."""
    return max(1, round(args.paced_rate * args.paced_seconds)) if args.paced_rate > 0 else 0


def step_done(started: float) -> None:
    """The last progress line: how long the run took, and how busy the machine was at its end."""
    step(f"done in {time.perf_counter() - started:.0f} s; load average now {load_average()}")


def command_line(module: str) -> str:
    """How this run was started, for the results."""
    return " ".join(["python", "-m", module, *sys.argv[1:]])


def run_results(module: str, info: dict[str, Any], started: float, **fields: Any) -> dict[str, Any]:
    """A run's JSON: ``command``, ``machine``, ``fields`` in order, then ``seconds`` since ``started``."""
    return {"command": command_line(module), "machine": info, **fields, "seconds": time.perf_counter() - started}


# -- the command line -----------------------------------------------------------------------------------


def bench_parser(module: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"python -m {module}", description=description)


def batch_sizes(most: int) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated batch sizes from 1 to ``most``."""

    def parse(text: str) -> list[int]:
        values = [int(x) for x in text.split(",") if x.strip()]
        if not values or any(not 1 <= v <= most for v in values):
            raise argparse.ArgumentTypeError(f"batch sizes are integers between 1 and {most}, comma-separated")
        return values

    return parse


def add_paced_args(parser: argparse.ArgumentParser, rate: float, rate_help: str) -> None:
    """``--paced-rate`` and ``--paced-seconds``: the low, steady load that shows the pipeline's own latency."""
    parser.add_argument("--paced-rate", type=float, default=rate, help=rate_help)
    parser.add_argument("--paced-seconds", type=float, default=3.0, help="paced phase length (default 3 s)")


def add_service_args(parser: argparse.ArgumentParser, *, sync: bool) -> None:
    """``--workers`` (and with ``sync``, ``--sync``): how the service under test is configured."""
    parser.add_argument("--workers", "-w", type=int, default=default_workers(), help="service worker processes")
    if sync:
        add_sync_arg(parser)


def add_sync_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL", help="SQLite synchronous (default FULL)")


def add_output_args(parser: argparse.ArgumentParser, tmp_dir: str = "where data directories go") -> None:
    """``--tmp-dir`` and ``--json``."""
    parser.add_argument("--tmp-dir", default=None, help=f"{tmp_dir} (default: system temp dir)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write all results to this JSON file")


@contextlib.contextmanager
def bench_tmp(prefix: str, parent: str | None) -> Iterator[Path]:
    """The run's temporary directory (data dirs, logs); removed afterwards, whatever is left in it."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent, ignore_cleanup_errors=True) as name:
        yield Path(name)


def bench_main(
    run: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
    json_out: str | None,
    interrupted: str = "servers stopped, temporary data removed",
) -> None:
    """Run a bench: SIGTERM acts like Ctrl-C (servers stopped, temp data removed, exit 130); ``--json``."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        results = asyncio.run(run())
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults written to {json_out}")


def helper_main(main: Coroutine[Any, Any, None]) -> None:
    """Run a bench's helper subprocess (a raw baseline); SIGTERM or Ctrl-C end it quietly."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main)
