"""Async invocation benchmark: the accept path, end-to-end completions, and what bounds them.

Run ``python -m bench.async_invoke --help``. The default run takes well under a minute
on 2 cores. Nothing here asserts a speed: it measures Triggerbus and, in the same
run, on the same machine and with the same load generator, the baselines below, and
prints the ratios.

Why these baselines:

* **HTTP floor** -- a bare aiohttp server (same ``AppRunner`` settings as Triggerbus, a
  subprocess like it) that reads the body and answers 202 with a fresh UUID. Nothing
  accepted over HTTP with this stack and this client can be faster, so
  ``accept/s / floor/s`` is what durability, auth, validation and bookkeeping cost.
* **Durable-append floor** -- the same server, but each request first does one SQLite
  ``INSERT`` + ``COMMIT`` (WAL, the same ``synchronous`` as Triggerbus) on a single
  thread, so the event loop never blocks. That is the naive way to be "durable before
  202": one fsync per request, requests queued behind each other's fsyncs. Triggerbus
  group-commits (many callers share one fsync), so this ratio shows what group commit
  buys -- or costs, if Triggerbus does more writes per request than the naive service.
* **Handler called in-process** -- the no-op ``handler(event, context)`` called in a
  loop: the physical limit of "running a function", to show how much of everything
  else is overhead.
* **PythonRuntime direct** -- the same worker-process pool Triggerbus uses
  (:class:`invoker.runtime.python_runtime.PythonRuntime`, same ``max_workers``), driven
  directly from this process, sequentially and with the same concurrency as the HTTP
  clients. Triggerbus' completions/s divided by this rate is the overhead of bus,
  records and async invoker on top of process isolation.

Servers run as subprocesses (Triggerbus via ``python -m triggerbus.cli serve``) so the
load generator does not share their event loop; on a small machine they still share
the CPUs, which is why each phase also reports the CPU seconds used by the client, the
server and (for Triggerbus) its worker processes, read from ``/proc``.

Every phase starts with a warm-up (``--warmup`` requests, default 200) that is not
measured; for Triggerbus the warm-up invocations must also complete, so the workers
are warm when the measurement starts.
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
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from invoker.runtime.base import FunctionSpec, InvocationRequest
from invoker.runtime.codepkg import extract_zip
from invoker.runtime.python_runtime import PythonRuntime

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"
PROJECT = "bench"
FUNCTION = "noop"
URN = f"urn:fss:local:{PROJECT}:function:default:{FUNCTION}:latest"
INVOKE_PATH = f"/v2/{PROJECT}/fgs/functions/{URN}/invocations-async"
RECORDS_PATH = f"/v2/{PROJECT}/fgs/functions/{URN}/async-invocations"
NOOP_SOURCE = "def handler(event, context):\n    return None\n"
JSON_HEADERS = {"Content-Type": "application/json"}
STALL_S = 60.0  # give up waiting for completions after this long without progress


# -- small helpers ------------------------------------------------------------------------------


def default_workers() -> int:
    """The service's own default for TRIGGERBUS_MAX_WORKERS."""
    return max(4, 2 * (os.cpu_count() or 2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def noop_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("index.py", NOOP_SOURCE)
    return buffer.getvalue()


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


# -- CPU accounting from /proc (Linux; silently absent elsewhere) --------------------------------

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


# -- load generator -----------------------------------------------------------------------------


@dataclass
class Load:
    """One measured burst of POSTs: client-side latency from send to the full response."""

    name: str
    requests: int
    concurrency: int
    ok: int = 0
    errors: int = 0
    first_error: str = ""
    wall_s: float = 0.0
    rps: float = 0.0
    worst_1s: int | None = None  # fewest responses in any whole second of the run (stalls show here)
    latency_ms: Dist | None = None
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    worker_cpu_s: float | None = None
    t_start: float = field(default=0.0, repr=False)  # perf_counter of the first send
    request_ids: list[str] = field(default_factory=list, repr=False)
    sent_wall: list[float] = field(default_factory=list, repr=False)  # time.time() at each send

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        for private in ("t_start", "request_ids", "sent_wall"):
            data.pop(private)
        return data


@dataclass
class Progress:
    """Shared between a running :func:`drive` and an observer polling the server meanwhile."""

    accepted: int = 0
    finished: bool = False


def worst_second(done_at: Sequence[float], start: float) -> int | None:
    """Fewest completions in any whole one-second window from ``start`` (None if the run was shorter)."""
    seconds = int(max(done_at, default=start) - start)
    if seconds < 1:
        return None
    counts = [0] * seconds
    for t in done_at:
        k = int(t - start)
        if k < seconds:
            counts[k] += 1
    return min(counts)


def new_session(concurrency: int) -> aiohttp.ClientSession:
    """Keep-alive client with one connection per concurrent client."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        headers={"X-Auth-Token": TOKEN},
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    *,
    name: str,
    requests: int,
    concurrency: int,
    first_index: int = 0,
    server_pid: int | None = None,
    progress: Progress | None = None,
) -> Load:
    """``concurrency`` clients send ``requests`` POSTs in total, each as soon as its last answered."""
    load = Load(name, requests, concurrency)
    progress = progress or Progress()
    latencies = [math.nan] * requests
    done_at: list[float] = []
    ids = [""] * requests
    sent = [0.0] * requests
    counter = iter(range(requests))

    async def client() -> None:
        for i in counter:
            body = json.dumps({"i": first_index + i}).encode()
            sent[i] = time.time()
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
                    raw = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                load.errors += 1
                load.first_error = load.first_error or repr(exc)
                continue
            t1 = time.perf_counter()
            if status != 202:
                load.errors += 1
                load.first_error = load.first_error or f"HTTP {status}: {raw[:200]!r}"
                continue
            latencies[i] = (t1 - t0) * 1000
            done_at.append(t1)
            ids[i] = json.loads(raw)["request_id"]
            progress.accepted += 1

    cpu_before = cpu_snapshot(server_pid) if server_pid else {}
    client_cpu = time.process_time()
    load.t_start = time.perf_counter()
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        progress.finished = True
    load.wall_s = time.perf_counter() - load.t_start
    load.worst_1s = worst_second(done_at, load.t_start)
    load.client_cpu_s = time.process_time() - client_cpu
    if server_pid:
        load.server_cpu_s, load.worker_cpu_s = cpu_delta(cpu_before, cpu_snapshot(server_pid), server_pid)
    good = [x for x in latencies if not math.isnan(x)]
    load.ok = len(good)
    load.rps = load.ok / load.wall_s if load.wall_s > 0 else math.nan
    load.latency_ms = Dist.of(good)
    load.request_ids = ids
    load.sent_wall = sent
    return load


# -- subprocess servers -------------------------------------------------------------------------


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


def child_env(**extra: str) -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath, **extra}


# -- baseline servers (run in a subprocess: python -m bench.async_invoke --floor-server ...) ------


async def serve_floor(kind: str, port: int, db_path: str, synchronous: str) -> None:
    """The floors: 202 + UUID, optionally after one single-threaded INSERT + COMMIT."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite")
    conn: sqlite3.Connection | None = None
    if kind == "sqlite":
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE IF NOT EXISTS accepted(request_id TEXT PRIMARY KEY, payload BLOB, ts REAL)")

    def append(request_id: str, payload: bytes) -> None:
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO accepted VALUES (?, ?, ?)", (request_id, payload, time.time()))
        conn.execute("COMMIT")

    async def accept(request: web.Request) -> web.Response:
        payload = await request.read()
        request_id = str(uuid.uuid4())
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, append, request_id, payload)
        return web.json_response({"request_id": request_id}, status=202)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v2/{project_id}/fgs/functions/{function_urn}/invocations-async", accept)
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
        executor.shutdown()
        if conn is not None:
            conn.close()


async def floor_phase(kind: str, args: argparse.Namespace, tmp: Path) -> Load:
    port = free_port()
    argv = [sys.executable, "-m", "bench.async_invoke", "--floor-server", kind, "--port", str(port)]
    argv += ["--sync", args.sync, "--floor-db", str(tmp / f"floor-{kind}.db")]
    url = f"http://127.0.0.1:{port}{INVOKE_PATH}"
    name = "HTTP floor (a)" if kind == "http" else f"durable-append floor (b), synchronous={args.sync}"
    async with (
        server_process(argv, child_env(), port, tmp / f"floor-{kind}.log") as pid,
        new_session(args.concurrency) as s,
    ):
        await drive(s, url, name="warm-up", requests=args.warmup, concurrency=args.concurrency)
        return await drive(s, url, name=name, requests=args.requests, concurrency=args.concurrency, server_pid=pid)


# -- in-process execution baselines ----------------------------------------------------------------


@dataclass
class Direct:
    name: str
    calls: int
    concurrency: int
    wall_s: float
    rate: float
    latency_ms: Dist | None = None
    failures: int = 0
    cpu_s: float | None = None  # this process plus its worker processes


def handler_direct(calls: int) -> Direct:
    namespace: dict[str, Any] = {}
    exec(compile(NOOP_SOURCE, "index.py", "exec"), namespace)
    handler: Callable[[Any, Any], Any] = namespace["handler"]
    event: dict[str, Any] = {"i": 0}
    context = object()
    t0 = time.perf_counter()
    for _ in range(calls):
        handler(event, context)
    wall = time.perf_counter() - t0
    return Direct("handler(event, context) in-process", calls, 1, wall, calls / wall)


async def runtime_direct(args: argparse.Namespace, tmp: Path) -> tuple[Direct, Direct]:
    """The worker pool Triggerbus uses, without HTTP, bus or records: sequential and concurrent."""
    code_dir = tmp / "runtime-direct-code"
    extract_zip(noop_zip(), code_dir)
    spec = FunctionSpec(
        urn=URN,
        name=FUNCTION,
        package="default",
        version="latest",
        project_id=PROJECT,
        region="local",
        runtime="Python3.9",
        handler="index.handler",
        memory_mb=256,
        timeout_s=10,
        code_dir=code_dir,
        code_digest="bench",
    )
    runtime = PythonRuntime(max_workers=args.workers)
    await runtime.start()
    try:

        async def one(i: int, latencies: list[float], failures: list[int]) -> None:
            request = InvocationRequest(str(uuid.uuid4()), json.dumps({"i": i}).encode())
            t0 = time.perf_counter()
            result = await runtime.invoke(spec, request)
            latencies.append((time.perf_counter() - t0) * 1000)
            if not result.ok:
                failures.append(i)

        async def burst(calls: int, concurrency: int, name: str) -> Direct:
            latencies: list[float] = []
            failures: list[int] = []
            counter = iter(range(calls))

            async def client() -> None:
                for i in counter:
                    await one(i, latencies, failures)

            me = os.getpid()
            cpu_before = cpu_snapshot(me)
            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            wall = time.perf_counter() - t0
            cpu = sum(cpu_delta(cpu_before, cpu_snapshot(me), me)) if cpu_before else None
            return Direct(name, calls, concurrency, wall, calls / wall, Dist.of(latencies), len(failures), cpu)

        # Warm-up: start every worker (cold starts are not what this measures).
        await burst(max(args.warmup, args.workers), max(args.workers, args.concurrency), "warm-up")
        sequential = await burst(args.requests, 1, f"PythonRuntime direct, sequential, {args.workers} workers")
        concurrent = await burst(
            args.requests,
            args.concurrency,
            f"PythonRuntime direct, {args.concurrency} concurrent, {args.workers} workers",
        )
        return sequential, concurrent
    finally:
        await runtime.close()


# -- Triggerbus --------------------------------------------------------------------------------------


@dataclass
class EndToEnd:
    """Completions of the measured invocations, seen by polling the records API."""

    completed: int
    completions_per_s: float
    first_send_to_all_done_s: float
    done_when_accept_ended: int  # measured invocations already SUCCESS when the last 202 arrived
    drain_after_accept_s: float  # from the last 202 to all done
    max_backlog: int  # most accepted-but-not-yet-SUCCESS seen by the observer (polled every 50 ms)
    server_cpu_s: float | None
    worker_cpu_s: float | None
    client_cpu_s: float
    other_statuses: dict[str, int]
    sample: int
    attempt_duration_ms: Dist | None  # attempt_details[0].duration_ms, measured by the runtime
    queue_wait_ms: Dist | None  # client send -> attempt start (ms timestamps, same clock)
    send_to_end_ms: Dist | None  # client send -> attempt end


async def count_status(http: aiohttp.ClientSession, base: str, status: str) -> int:
    async with http.get(base + RECORDS_PATH, params={"status": status, "limit": "1"}) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"list records: HTTP {resp.status}: {body}")
        return int(body["count"])


@dataclass
class Poll:
    done_at: float | None = None  # perf_counter when all were seen SUCCESS; None if they stalled
    count: int = 0  # SUCCESS records at the last poll
    max_backlog: int = 0  # most accepted-but-not-yet-SUCCESS invocations seen at one poll


async def wait_for_success(
    http: aiohttp.ClientSession, base: str, already: int, progress: Progress, interval: float = 0.05
) -> Poll:
    """Poll the SUCCESS count until it reaches ``already`` plus everything ``progress`` had accepted."""
    poll = Poll()
    seen, last_progress = -1, time.perf_counter()
    while True:
        finished, accepted = progress.finished, progress.accepted  # read before the count is asked
        poll.count = await count_status(http, base, "SUCCESS")
        now = time.perf_counter()
        poll.max_backlog = max(poll.max_backlog, already + accepted - poll.count)
        if finished and poll.count >= already + accepted:
            poll.done_at = now
            return poll
        if poll.count > seen:
            seen, last_progress = poll.count, now
        elif now - last_progress > STALL_S:
            return poll
        await asyncio.sleep(interval)


def _iso(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def sample_records(
    http: aiohttp.ClientSession, base: str, load: Load, size: int
) -> tuple[list[float], list[float], list[float], dict[str, int]]:
    indices = sorted({round(k * (load.requests - 1) / max(1, size - 1)) for k in range(size)})
    indices = [i for i in indices if load.request_ids[i]]
    durations: list[float] = []
    waits: list[float] = []
    ends: list[float] = []
    statuses: dict[str, int] = {}
    gate = asyncio.Semaphore(8)

    async def fetch(i: int) -> None:
        async with gate, http.get(f"{base}{RECORDS_PATH}/{load.request_ids[i]}") as resp:
            record = await resp.json()
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
        attempts = record.get("attempt_details") or []
        if record["status"] != "SUCCESS" or not attempts:
            return
        first, last = attempts[0], attempts[-1]
        durations.append(float(first["duration_ms"]))
        waits.append((_iso(first["start_time"]) - load.sent_wall[i]) * 1000)
        if last["end_time"]:
            ends.append((_iso(last["end_time"]) - load.sent_wall[i]) * 1000)

    await asyncio.gather(*(fetch(i) for i in indices))
    return durations, waits, ends, statuses


async def triggerbus_phase(args: argparse.Namespace, tmp: Path) -> tuple[Load, EndToEnd | None]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "triggerbus.cli", "serve", "--data-dir", str(tmp / "triggerbus-data")]
    argv += ["--port", str(port)]
    env = child_env(
        TRIGGERBUS_TOKEN=TOKEN,
        TRIGGERBUS_SQLITE_SYNCHRONOUS=args.sync,
        TRIGGERBUS_MAX_WORKERS=str(args.workers),
    )
    url = base + INVOKE_PATH
    async with (
        server_process(argv, env, port, tmp / "triggerbus.log") as pid,
        new_session(args.concurrency) as session,
        new_session(8) as observer,
    ):
        body: dict[str, Any] = {
            "func_name": FUNCTION,
            "runtime": "Python3.9",
            "handler": "index.handler",
            "code_type": "zip",
            "func_code": {"file": base64.b64encode(noop_zip()).decode()},
            "timeout": 10,
            "memory_size": 256,
        }
        if args.max_instances:
            body["max_instance_num"] = args.max_instances
        async with observer.post(f"{base}/v2/{PROJECT}/fgs/functions", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"create function: HTTP {resp.status}: {await resp.text()}")

        warm_progress = Progress()
        await drive(
            session, url, name="warm-up", requests=args.warmup, concurrency=args.concurrency, progress=warm_progress
        )
        warm = await wait_for_success(observer, base, 0, warm_progress)
        if warm.done_at is None:
            raise RuntimeError("the warm-up invocations did not complete; see the server log")

        progress = Progress()
        before = cpu_snapshot(pid)
        client_cpu = time.process_time()
        poller = asyncio.create_task(wait_for_success(observer, base, warm.count, progress))
        try:
            load = await drive(
                session,
                url,
                name=f"Triggerbus accept, synchronous={args.sync}",
                requests=args.requests,
                concurrency=args.concurrency,
                first_index=args.warmup,
                server_pid=pid,
                progress=progress,
            )
            accept_end = load.t_start + load.wall_s
            done_at_accept = await count_status(observer, base, "SUCCESS") - warm.count
            poll = await poller
        finally:
            poller.cancel()  # no-op once it finished; stops it if the run was interrupted
        server_cpu, worker_cpu = cpu_delta(before, cpu_snapshot(pid), pid)
        client_cpu_s = time.process_time() - client_cpu
        others = {s: await count_status(observer, base, s) for s in ("FAIL", "DISCARD", "WAIT", "RUNNING")}
        if poll.done_at is None:
            done = poll.count - warm.count
            print(f"!! completions stalled at {done} of {load.ok}; other statuses {others}", file=sys.stderr)
            return load, None
        durations, waits, ends, _ = await sample_records(observer, base, load, args.sample)
        e2e = poll.done_at - load.t_start
        result = EndToEnd(
            completed=poll.count - warm.count,
            completions_per_s=load.ok / e2e,
            first_send_to_all_done_s=e2e,
            done_when_accept_ended=done_at_accept,
            drain_after_accept_s=poll.done_at - accept_end,
            max_backlog=poll.max_backlog,
            server_cpu_s=server_cpu,
            worker_cpu_s=worker_cpu,
            client_cpu_s=client_cpu_s,
            other_statuses={k: v for k, v in others.items() if v},
            sample=len(durations),
            attempt_duration_ms=Dist.of(durations),
            queue_wait_ms=Dist.of(waits),
            send_to_end_ms=Dist.of(ends),
        )
        return load, result


# -- report ----------------------------------------------------------------------------------------


def fs_type(path: Path) -> str:
    """The filesystem type holding ``path`` (fsync cost depends on it), from /proc/mounts."""
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], f"{parts[2]} ({parts[0]} on {parts[1]})"
    return kind


def machine_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "aiohttp": aiohttp.__version__,
        "synchronous": args.sync,
        "data_dir_fs": fs_type(tmp),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "warmup": args.warmup,
        "max_instances": args.max_instances or "service default",
    }


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0 or math.isnan(value) or math.isnan(base):
        return "-"
    ratio = value / base
    return f"1/{1 / ratio:,.0f}x" if 0 < ratio < 0.01 else f"{ratio:.3g}x"


def _per_ms(*seconds: float | None, n: int) -> float | None:
    """Milliseconds per item of a sum of CPU seconds (None if any is unknown)."""
    if n <= 0 or any(x is None for x in seconds):
        return None
    return sum(x for x in seconds if x is not None) * 1000 / n


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
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


def report(
    info: dict[str, Any],
    handler: Direct,
    seq: Direct,
    conc: Direct,
    floor_http: Load,
    floor_sql: Load,
    accept: Load,
    e2e: EndToEnd | None,
) -> list[list[str]]:
    print()
    print("## Phases (raw)")
    print()
    rows: list[list[str]] = []
    for load in (floor_http, floor_sql, accept):
        d = load.latency_ms or Dist.of([])
        rows.append(
            [
                load.name,
                f"{load.ok}/{load.requests}",
                _num(load.rps),
                _num(load.worst_1s),
                _num(d.p50, 2),
                _num(d.p95, 2),
                _num(d.p99, 2),
                _num(d.max, 2),
                _num(load.client_cpu_s, 1),
                _num(load.server_cpu_s, 1),
                _num(load.worker_cpu_s, 1),
            ]
        )
    for direct in (seq, conc):
        d = direct.latency_ms or Dist.of([])
        rows.append(
            [
                direct.name,
                f"{direct.calls - direct.failures}/{direct.calls}",
                _num(direct.rate),
                "-",
                _num(d.p50, 2),
                _num(d.p95, 2),
                _num(d.p99, 2),
                _num(d.max, 2),
                "-",
                "-",
                "-",
            ]
        )
    rows.append([handler.name, f"{handler.calls}/{handler.calls}", _num(handler.rate)] + ["-"] * 8)
    header = [
        "phase",
        "ok",
        "per s",
        "worst 1 s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "client CPU s",
        "server CPU s",
        "workers CPU s",
    ]
    print_table(header, rows)
    if e2e is not None:
        print()
        print(
            f"Triggerbus end to end: {e2e.completed} completed in {e2e.first_send_to_all_done_s:.2f} s from the first"
            f" POST; {e2e.done_when_accept_ended} were done when the last 202 arrived; drain after that"
            f" {e2e.drain_after_accept_s:.2f} s; largest backlog seen {e2e.max_backlog}."
            f" CPU over the whole run: server {_num(e2e.server_cpu_s, 1)} s,"
            f" workers {_num(e2e.worker_cpu_s, 1)} s, client {e2e.client_cpu_s:.1f} s."
            + (f" Other statuses: {e2e.other_statuses}." if e2e.other_statuses else "")
        )

    a = accept.latency_ms or Dist.of([])
    fh = floor_http.latency_ms or Dist.of([])
    fs = floor_sql.latency_ms or Dist.of([])
    sq = seq.latency_ms or Dist.of([])
    table: list[list[str]] = [
        ["accepted/s vs HTTP floor (a)", _num(accept.rps), _num(floor_http.rps), _ratio(accept.rps, floor_http.rps)],
        [
            f"accepted/s vs durable-append floor (b, {info['synchronous']})",
            _num(accept.rps),
            _num(floor_sql.rps),
            _ratio(accept.rps, floor_sql.rps),
        ],
        ["accept p50 ms vs HTTP floor", _num(a.p50, 2), _num(fh.p50, 2), _ratio(a.p50, fh.p50)],
        ["accept p95 ms vs HTTP floor", _num(a.p95, 2), _num(fh.p95, 2), _ratio(a.p95, fh.p95)],
        ["accept p99 ms vs HTTP floor", _num(a.p99, 2), _num(fh.p99, 2), _ratio(a.p99, fh.p99)],
        ["accept max ms vs HTTP floor", _num(a.max, 2), _num(fh.max, 2), _ratio(a.max, fh.max)],
        ["accept p50 ms vs durable-append floor", _num(a.p50, 2), _num(fs.p50, 2), _ratio(a.p50, fs.p50)],
        ["accept p99 ms vs durable-append floor", _num(a.p99, 2), _num(fs.p99, 2), _ratio(a.p99, fs.p99)],
        [
            "PythonRuntime direct/s vs handler in-process",
            _num(conc.rate),
            _num(handler.rate),
            _ratio(conc.rate, handler.rate),
        ],
    ]
    if e2e is not None:
        dur = e2e.attempt_duration_ms or Dist.of([])
        wait = e2e.queue_wait_ms or Dist.of([])
        end = e2e.send_to_end_ms or Dist.of([])
        table += [
            [
                f"completions/s vs PythonRuntime direct ({conc.concurrency} concurrent)",
                _num(e2e.completions_per_s),
                _num(conc.rate),
                _ratio(e2e.completions_per_s, conc.rate),
            ],
            [
                "completions/s vs PythonRuntime direct (sequential)",
                _num(e2e.completions_per_s),
                _num(seq.rate),
                _ratio(e2e.completions_per_s, seq.rate),
            ],
            [
                "completions/s vs accepted/s",
                _num(e2e.completions_per_s),
                _num(accept.rps),
                _ratio(e2e.completions_per_s, accept.rps),
            ],
            [
                f"attempt duration_ms p50 (n={e2e.sample}) vs direct sequential p50",
                _num(dur.p50, 2),
                _num(sq.p50, 2),
                _ratio(dur.p50, sq.p50),
            ],
            [
                "attempt duration_ms p99 vs direct sequential p99",
                _num(dur.p99, 2),
                _num(sq.p99, 2),
                _ratio(dur.p99, sq.p99),
            ],
            [
                "CPU ms per invocation: server+workers vs PythonRuntime direct (bench+workers)",
                _num(_per_ms(e2e.server_cpu_s, e2e.worker_cpu_s, n=e2e.completed), 2),
                _num(_per_ms(conc.cpu_s, n=conc.calls), 2),
                _ratio(_per_ms(e2e.server_cpu_s, e2e.worker_cpu_s, n=e2e.completed), _per_ms(conc.cpu_s, n=conc.calls)),
            ],
            [
                "server CPU ms per accepted request (incl. concurrent runs) vs floor (b)",
                _num(_per_ms(accept.server_cpu_s, n=accept.ok), 2),
                _num(_per_ms(floor_sql.server_cpu_s, n=floor_sql.ok), 2),
                _ratio(_per_ms(accept.server_cpu_s, n=accept.ok), _per_ms(floor_sql.server_cpu_s, n=floor_sql.ok)),
            ],
            [f"send -> attempt start p50 / p99 ms (n={wait.n})", f"{_num(wait.p50)} / {_num(wait.p99)}", "-", "-"],
            ["send -> attempt end p50 / p99 ms", f"{_num(end.p50)} / {_num(end.p99)}", "-", "-"],
        ]
    print()
    print("## Triggerbus against baselines (ratio = value / baseline)")
    print()
    print_table(["metric", "value", "baseline", "ratio"], table)
    return table


# -- main ------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tb-bench-", dir=args.tmp_dir, ignore_cleanup_errors=True) as name:
        tmp = Path(name)
        info = machine_info(args, tmp)
        print("# Triggerbus async-invoke benchmark")
        print()
        print("  ".join(f"{k}={v}" for k, v in info.items()))
        steps: list[tuple[str, float]] = []

        def step(label: str, t0: float) -> None:
            steps.append((label, time.perf_counter() - t0))
            print(f"  .. {label}: {steps[-1][1]:.1f} s", file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        handler = handler_direct(args.requests)
        seq, conc = await runtime_direct(args, tmp)
        step("in-process baselines", t0)
        t0 = time.perf_counter()
        floor_http = await floor_phase("http", args, tmp)
        step("HTTP floor", t0)
        t0 = time.perf_counter()
        floor_sql = await floor_phase("sqlite", args, tmp)
        step("durable-append floor", t0)
        t0 = time.perf_counter()
        accept, e2e = await triggerbus_phase(args, tmp)
        step("Triggerbus", t0)
        table = report(info, handler, seq, conc, floor_http, floor_sql, accept, e2e)
        return {
            "command": " ".join(["python", "-m", "bench.async_invoke", *sys.argv[1:]]),
            "machine": info,
            "handler_direct": asdict(handler),
            "runtime_direct_sequential": asdict(seq),
            "runtime_direct_concurrent": asdict(conc),
            "floor_http": floor_http.summary(),
            "floor_durable_append": floor_sql.summary(),
            "triggerbus_accept": accept.summary(),
            "triggerbus_end_to_end": asdict(e2e) if e2e is not None else None,
            "comparison": [dict(zip(("metric", "value", "baseline", "ratio"), row, strict=True)) for row in table],
            "phase_seconds": dict(steps),
        }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.async_invoke",
        description="Measure Triggerbus async invocation (accept path and end to end) against same-run baselines.",
    )
    parser.add_argument("--requests", "-n", type=int, default=5000, help="measured requests per phase (default 5000)")
    parser.add_argument("--concurrency", "-c", type=int, default=32, help="concurrent HTTP clients (default 32)")
    parser.add_argument(
        "--workers",
        "-w",
        type=int,
        default=default_workers(),
        help="Python worker processes (default: service default)",
    )
    parser.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL", help="SQLite synchronous (default FULL)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured warm-up requests per phase (default 200)")
    parser.add_argument("--sample", type=int, default=200, help="records sampled for per-record timings (default 200)")
    parser.add_argument("--max-instances", type=int, default=0, help="function max_instance_num (default: service's)")
    parser.add_argument("--tmp-dir", default=None, help="where data directories go (default: system temp dir)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write all results to this JSON file")
    # Internal: this module is also the baseline server, run as a subprocess.
    parser.add_argument("--floor-server", choices=("http", "sqlite"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--floor-db", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.workers < 1 or args.warmup < 1:
        parser.error("--requests, --concurrency, --workers and --warmup must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.floor_server:
        asyncio.run(serve_floor(args.floor_server, args.port, args.floor_db, args.sync))
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C: stop the servers, clean up
    try:
        results = asyncio.run(run(args))
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, temporary data removed", file=sys.stderr)
        sys.exit(130)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json_out}")


if __name__ == "__main__":
    main()
