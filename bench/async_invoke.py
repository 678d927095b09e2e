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
import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.fernet import Fernet

from bench._common import (
    FGS,
    FUNCTION,
    PROJECT,
    TOKEN,
    URN,
    Dist,
    SqliteWriter,
    add_output_args,
    add_sync_arg,
    bench_main,
    bench_parser,
    bench_tmp,
    child_env,
    command_line,
    cpu_delta,
    cpu_snapshot,
    create_function,
    default_workers,
    free_port,
    fs_type,
    iso_ts,
    load_average,
    machine_basics,
    noop_handler,
    noop_zip,
    num,
    per_item_ms,
    poll_until,
    print_heading,
    print_section,
    ratio,
    serve_until_stopped,
    server_process,
    triggerbus_server,
)
from invoker.runtime.base import FunctionSpec, InvocationRequest
from invoker.runtime.codepkg import extract_zip
from invoker.runtime.python_runtime import PythonRuntime
from tests.support.servers import start_secantus, start_tansu

INVOKE_PATH = f"{FGS}/functions/{URN}/invocations-async"
JSON_HEADERS = {"Content-Type": "application/json"}


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


def invocation_body(i: int) -> bytes:
    """The event of the ``i``-th async invocation."""
    return json.dumps({"i": i}).encode()


async def drive(
    session: aiohttp.ClientSession,
    url: str | Sequence[str],
    *,
    name: str,
    requests: int,
    concurrency: int,
    first_index: int = 0,
    server_pid: int | None = None,
    progress: Progress | None = None,
    body: Callable[[int], bytes] = invocation_body,
    status_ok: int = 202,
    request_ids: bool = True,
) -> Load:
    """``concurrency`` clients send ``requests`` POSTs in total, each as soon as its last answered.

    With several ``url``, request ``i`` goes to ``url[i % len(url)]`` (several service processes or
    functions).

    Request ``i`` carries ``body(first_index + i)``, made before the clock starts; an answer is good
    with ``status_ok``, and with ``request_ids`` it holds the ``request_id`` of an async invocation
    (kept for the records API).
    """
    load = Load(name, requests, concurrency)
    progress = progress or Progress()
    latencies = [math.nan] * requests
    done_at: list[float] = []
    ids = [""] * requests
    sent = [0.0] * requests
    counter = iter(range(requests))
    bodies = [body(first_index + i) for i in range(requests)]
    urls = [url] if isinstance(url, str) else list(url)

    async def client() -> None:
        for i in counter:
            sent[i] = time.time()
            t0 = time.perf_counter()
            try:
                async with session.post(urls[i % len(urls)], data=bodies[i], headers=JSON_HEADERS) as resp:
                    raw = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                load.errors += 1
                load.first_error = load.first_error or repr(exc)
                continue
            t1 = time.perf_counter()
            if status != status_ok:
                load.errors += 1
                load.first_error = load.first_error or f"HTTP {status}: {raw[:200]!r}"
                continue
            latencies[i] = (t1 - t0) * 1000
            done_at.append(t1)
            if request_ids:
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


# -- baseline servers (run in a subprocess: python -m bench.async_invoke --floor-server ...) ------


async def serve_floor(kind: str, port: int, db_path: str, synchronous: str) -> None:
    """The floors: 202 + UUID, optionally after one single-threaded INSERT + COMMIT."""
    schema = "CREATE TABLE IF NOT EXISTS accepted(request_id TEXT PRIMARY KEY, payload BLOB, ts REAL)"
    store = SqliteWriter(db_path, synchronous, schema) if kind == "sqlite" else None

    async def accept(request: web.Request) -> web.Response:
        payload = await request.read()
        request_id = str(uuid.uuid4())
        if store is not None:
            await store.write("INSERT INTO accepted VALUES (?, ?, ?)", [(request_id, payload, time.time())])
        return web.json_response({"request_id": request_id}, status=202)

    app = web.Application()
    app.router.add_post("/v2/{project_id}/fgs/functions/{function_urn}/invocations-async", accept)
    await serve_until_stopped(app, port, store.close if store else None)


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
    handler = noop_handler()
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


def records_path(urn: str) -> str:
    return f"{FGS}/functions/{urn}/async-invocations"


async def count_status(http: aiohttp.ClientSession, base: str, status: str, urns: Sequence[str] = (URN,)) -> int:
    """Records in ``status``, summed over the functions ``urns``."""
    total = 0
    for urn in urns:
        async with http.get(base + records_path(urn), params={"status": status, "limit": "1"}) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"list records: HTTP {resp.status}: {body}")
            total += int(body["count"])
    return total


@dataclass
class Poll:
    done_at: float | None = None  # perf_counter when all were seen SUCCESS; None if they stalled
    count: int = 0  # SUCCESS records at the last poll
    max_backlog: int = 0  # most accepted-but-not-yet-SUCCESS invocations seen at one poll


async def wait_for_success(
    http: aiohttp.ClientSession,
    base: str,
    already: int,
    progress: Progress,
    interval: float = 0.05,
    urns: Sequence[str] = (URN,),
) -> Poll:
    """Poll the SUCCESS count until it reaches ``already`` plus everything ``progress`` had accepted."""
    poll = Poll()

    async def probe() -> tuple[bool, int]:
        finished, accepted = progress.finished, progress.accepted  # read before the count is asked
        poll.count = await count_status(http, base, "SUCCESS", urns)
        now = time.perf_counter()
        poll.max_backlog = max(poll.max_backlog, already + accepted - poll.count)
        if finished and poll.count >= already + accepted:
            poll.done_at = now
        return poll.done_at is not None, poll.count

    await poll_until(probe, interval)
    return poll


async def warm_up(
    post: Callable[..., Awaitable[Load]],
    session: aiohttp.ClientSession,
    url: str | Sequence[str],
    observer: aiohttp.ClientSession,
    base: str,
    args: argparse.Namespace,
    urns: Sequence[str] = (URN,),
) -> Poll:
    """``--warmup`` unmeasured requests with ``post`` (:func:`drive` or a partial of it), which must also
    complete, so that the workers are warm when the measurement starts."""
    progress = Progress()
    await post(session, url, name="warm-up", requests=args.warmup, concurrency=args.concurrency, progress=progress)
    warm = await wait_for_success(observer, base, 0, progress, urns=urns)
    if warm.done_at is None:
        raise RuntimeError("the warm-up invocations did not complete; see the server log")
    return warm


async def sample_records(
    http: aiohttp.ClientSession, base: str, load: Load, size: int, urns: Sequence[str] = (URN,)
) -> tuple[list[float], list[float], list[float], dict[str, int]]:
    """Timings of ``size`` records spread over ``load``; request ``i`` went to function ``urns[i % len(urns)]``."""
    indices = sorted({round(k * (load.requests - 1) / max(1, size - 1)) for k in range(size)})
    indices = [i for i in indices if load.request_ids[i]]
    durations: list[float] = []
    waits: list[float] = []
    ends: list[float] = []
    statuses: dict[str, int] = {}
    gate = asyncio.Semaphore(8)

    async def fetch(i: int) -> None:
        path = records_path(urns[i % len(urns)])
        async with gate, http.get(f"{base}{path}/{load.request_ids[i]}") as resp:
            record = await resp.json()
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
        attempts = record.get("attempt_details") or []
        if record["status"] != "SUCCESS" or not attempts:
            return
        first, last = attempts[0], attempts[-1]
        durations.append(float(first["duration_ms"]))
        waits.append((iso_ts(first["start_time"]) - load.sent_wall[i]) * 1000)
        if last["end_time"]:
            ends.append((iso_ts(last["end_time"]) - load.sent_wall[i]) * 1000)

    await asyncio.gather(*(fetch(i) for i in indices))
    return durations, waits, ends, statuses


def function_urn(name: str) -> str:
    return URN.replace(f":function:default:{FUNCTION}:", f":function:default:{name}:")


async def create_named_function(http: aiohttp.ClientSession, base: str, name: str, max_instances: int) -> str:
    """The no-op function under ``name`` (``--functions`` > 1 spreads invocations over bus partitions)."""
    await create_function(http, base, max_instances, name)
    return function_urn(name)


@contextlib.asynccontextmanager
async def triggerbus_services(
    args: argparse.Namespace, tmp: Path, helpers: dict[str, int]
) -> AsyncIterator[list[tuple[str, int]]]:
    """``--processes`` services: (base URL, pid) each; with ``--bus kafka`` a tansu broker of the bench's own,
    with ``--store mongo`` a SecantusDB (MongoDB wire protocol) server as their shared store (their pids go
    into ``helpers``, for CPU accounting)."""
    env = {"TRIGGERBUS_SQLITE_SYNCHRONOUS": args.sync, "TRIGGERBUS_MAX_WORKERS": str(args.workers)}
    async with contextlib.AsyncExitStack() as stack:
        if args.bus == "kafka":
            broker = await asyncio.to_thread(start_tansu)
            stack.callback(broker.stop)
            if broker.proc is not None:
                helpers["broker"] = broker.proc.pid
            env |= {
                "TRIGGERBUS_BUS": f"kafka://{broker.address}",
                "TRIGGERBUS_KAFKA_PARTITIONS": str(args.partitions),
                "TRIGGERBUS_KAFKA_FETCH_MAX_WAIT_MS": "50",  # tansu answers a waiting fetch only at its deadline
                "TRIGGERBUS_KAFKA_SESSION_TIMEOUT_S": "6",
            }
        if args.store == "mongo":
            mongo = await asyncio.to_thread(start_secantus)
            stack.callback(mongo.stop)
            if mongo.proc is not None:
                helpers["store"] = mongo.proc.pid
            env |= {"TRIGGERBUS_STORE": mongo.address, "TRIGGERBUS_SECRET_KEY": Fernet.generate_key().decode()}
        services = []
        for k in range(args.processes):
            data = tmp / f"triggerbus-data-{k}"
            services.append(
                await stack.enter_async_context(triggerbus_server(data, tmp / f"triggerbus-{k}.log", **env))
            )
        yield services


async def triggerbus_phase(args: argparse.Namespace, tmp: Path) -> tuple[Load, EndToEnd | None]:
    helpers: dict[str, int] = {}
    async with (
        triggerbus_services(args, tmp, helpers) as services,
        new_session(args.concurrency) as session,
        new_session(8) as observer,
    ):
        base = services[0][0]  # the observer's view: with several processes the store is shared
        pids = [pid for _, pid in services]
        names = [FUNCTION, *(f"{FUNCTION}{k}" for k in range(2, args.functions + 1))]
        urns = [await create_named_function(observer, base, name, args.max_instances) for name in names]
        # request i: process i % P, function (i // P) % F -- every process serves every function
        targets = [
            (services[i % len(services)][0], urns[(i // len(services)) % len(urns)])
            for i in range(len(services) * len(urns))
        ]
        urls = [f"{b}{FGS}/functions/{u}/invocations-async" for b, u in targets]
        target_urns = [u for _, u in targets]
        warm = await warm_up(drive, session, urls, observer, base, args, urns)

        progress = Progress()
        before = [cpu_snapshot(pid) for pid in pids]
        helper_cpu = {name: cpu_snapshot(pid) for name, pid in helpers.items()}
        client_cpu = time.process_time()
        poller = asyncio.create_task(wait_for_success(observer, base, warm.count, progress, urns=urns))
        label = f"Triggerbus accept, synchronous={args.sync}"
        if args.bus == "kafka":
            label = f"Triggerbus accept, Kafka bus, {args.processes} process(es), {args.functions} function(s)"
        try:
            load = await drive(
                session,
                urls,
                name=label,
                requests=args.requests,
                concurrency=args.concurrency,
                first_index=args.warmup,
                progress=progress,
            )
            accept_end = load.t_start + load.wall_s
            at_accept_end = [cpu_snapshot(pid) for pid in pids]
            done_at_accept = await count_status(observer, base, "SUCCESS", urns) - warm.count
            poll = await poller
        finally:
            poller.cancel()  # no-op once it finished; stops it if the run was interrupted
        splits = [cpu_delta(b, cpu_snapshot(pid), pid) for b, pid in zip(before, pids, strict=True)]
        server_cpu, worker_cpu = sum(x for x, _ in splits), sum(y for _, y in splits)
        accepting = [cpu_delta(b, m, pid) for b, m, pid in zip(before, at_accept_end, pids, strict=True)]
        load.server_cpu_s, load.worker_cpu_s = sum(x for x, _ in accepting), sum(y for _, y in accepting)
        client_cpu_s = time.process_time() - client_cpu
        for name, pid in helpers.items():
            used = sum(cpu_delta(helper_cpu[name], cpu_snapshot(pid), pid))
            print(f"  .. CPU of the {name} over the Triggerbus run: {used:.1f} s", file=sys.stderr)
        others = {s: await count_status(observer, base, s, urns) for s in ("FAIL", "DISCARD", "WAIT", "RUNNING")}
        if poll.done_at is None:
            done = poll.count - warm.count
            print(f"!! completions stalled at {done} of {load.ok}; other statuses {others}", file=sys.stderr)
            return load, None
        durations, waits, ends, _ = await sample_records(observer, base, load, args.sample, target_urns)
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


def machine_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    return {
        **machine_basics(),
        "aiohttp": aiohttp.__version__,
        "synchronous": args.sync,
        "data_dir_fs": fs_type(tmp),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "warmup": args.warmup,
        "max_instances": args.max_instances or "service default",
        "bus": "embedded SQLite" if args.bus == "sqlite" else f"Kafka (tansu, {args.partitions} partitions)",
        "store": "SQLite" if args.store == "sqlite" else "SecantusDB (MongoDB wire protocol), shared",
        "processes": args.processes,
        "functions": args.functions,
        "loadavg_at_start": load_average(),
    }


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
    rows: list[list[str]] = []
    for load in (floor_http, floor_sql, accept):
        d = load.latency_ms or Dist.of([])
        rows.append(
            [
                load.name,
                f"{load.ok}/{load.requests}",
                num(load.rps),
                num(load.worst_1s),
                num(d.p50, 2),
                num(d.p95, 2),
                num(d.p99, 2),
                num(d.max, 2),
                num(load.client_cpu_s, 1),
                num(load.server_cpu_s, 1),
                num(load.worker_cpu_s, 1),
            ]
        )
    for direct in (seq, conc):
        d = direct.latency_ms or Dist.of([])
        rows.append(
            [
                direct.name,
                f"{direct.calls - direct.failures}/{direct.calls}",
                num(direct.rate),
                "-",
                num(d.p50, 2),
                num(d.p95, 2),
                num(d.p99, 2),
                num(d.max, 2),
                "-",
                "-",
                "-",
            ]
        )
    rows.append([handler.name, f"{handler.calls}/{handler.calls}", num(handler.rate)] + ["-"] * 8)
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
    print_section("Phases (raw)", header, rows)
    if e2e is not None:
        print()
        print(
            f"Triggerbus end to end: {e2e.completed} completed in {e2e.first_send_to_all_done_s:.2f} s from the first"
            f" POST; {e2e.done_when_accept_ended} were done when the last 202 arrived; drain after that"
            f" {e2e.drain_after_accept_s:.2f} s; largest backlog seen {e2e.max_backlog}."
            f" CPU over the whole run: server {num(e2e.server_cpu_s, 1)} s,"
            f" workers {num(e2e.worker_cpu_s, 1)} s, client {e2e.client_cpu_s:.1f} s."
            + (f" Other statuses: {e2e.other_statuses}." if e2e.other_statuses else "")
        )

    a = accept.latency_ms or Dist.of([])
    fh = floor_http.latency_ms or Dist.of([])
    fs = floor_sql.latency_ms or Dist.of([])
    sq = seq.latency_ms or Dist.of([])
    table: list[list[str]] = [
        ["accepted/s vs HTTP floor (a)", num(accept.rps), num(floor_http.rps), ratio(accept.rps, floor_http.rps)],
        [
            f"accepted/s vs durable-append floor (b, {info['synchronous']})",
            num(accept.rps),
            num(floor_sql.rps),
            ratio(accept.rps, floor_sql.rps),
        ],
        ["accept p50 ms vs HTTP floor", num(a.p50, 2), num(fh.p50, 2), ratio(a.p50, fh.p50)],
        ["accept p95 ms vs HTTP floor", num(a.p95, 2), num(fh.p95, 2), ratio(a.p95, fh.p95)],
        ["accept p99 ms vs HTTP floor", num(a.p99, 2), num(fh.p99, 2), ratio(a.p99, fh.p99)],
        ["accept max ms vs HTTP floor", num(a.max, 2), num(fh.max, 2), ratio(a.max, fh.max)],
        ["accept p50 ms vs durable-append floor", num(a.p50, 2), num(fs.p50, 2), ratio(a.p50, fs.p50)],
        ["accept p99 ms vs durable-append floor", num(a.p99, 2), num(fs.p99, 2), ratio(a.p99, fs.p99)],
        [
            "PythonRuntime direct/s vs handler in-process",
            num(conc.rate),
            num(handler.rate),
            ratio(conc.rate, handler.rate),
        ],
    ]
    if e2e is not None:
        dur = e2e.attempt_duration_ms or Dist.of([])
        wait = e2e.queue_wait_ms or Dist.of([])
        end = e2e.send_to_end_ms or Dist.of([])
        table += [
            [
                f"completions/s vs PythonRuntime direct ({conc.concurrency} concurrent)",
                num(e2e.completions_per_s),
                num(conc.rate),
                ratio(e2e.completions_per_s, conc.rate),
            ],
            [
                "completions/s vs PythonRuntime direct (sequential)",
                num(e2e.completions_per_s),
                num(seq.rate),
                ratio(e2e.completions_per_s, seq.rate),
            ],
            [
                "completions/s vs accepted/s",
                num(e2e.completions_per_s),
                num(accept.rps),
                ratio(e2e.completions_per_s, accept.rps),
            ],
            [
                f"attempt duration_ms p50 (n={e2e.sample}) vs direct sequential p50",
                num(dur.p50, 2),
                num(sq.p50, 2),
                ratio(dur.p50, sq.p50),
            ],
            [
                "attempt duration_ms p99 vs direct sequential p99",
                num(dur.p99, 2),
                num(sq.p99, 2),
                ratio(dur.p99, sq.p99),
            ],
            [
                "CPU ms per invocation: server+workers vs PythonRuntime direct (bench+workers)",
                num(per_item_ms(e2e.completed, e2e.server_cpu_s, e2e.worker_cpu_s), 2),
                num(per_item_ms(conc.calls, conc.cpu_s), 2),
                ratio(
                    per_item_ms(e2e.completed, e2e.server_cpu_s, e2e.worker_cpu_s), per_item_ms(conc.calls, conc.cpu_s)
                ),
            ],
            [
                "server CPU ms per accepted request (incl. concurrent runs) vs floor (b)",
                num(per_item_ms(accept.ok, accept.server_cpu_s), 2),
                num(per_item_ms(floor_sql.ok, floor_sql.server_cpu_s), 2),
                ratio(per_item_ms(accept.ok, accept.server_cpu_s), per_item_ms(floor_sql.ok, floor_sql.server_cpu_s)),
            ],
            [f"send -> attempt start p50 / p99 ms (n={wait.n})", f"{num(wait.p50)} / {num(wait.p99)}", "-", "-"],
            ["send -> attempt end p50 / p99 ms", f"{num(end.p50)} / {num(end.p99)}", "-", "-"],
        ]
    print_section(
        "Triggerbus against baselines (ratio = value / baseline)", ["metric", "value", "baseline", "ratio"], table
    )
    return table


# -- main ------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with bench_tmp("tb-bench-", args.tmp_dir) as tmp:
        info = machine_info(args, tmp)
        print_heading("async-invoke", info)
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
            "command": command_line("bench.async_invoke"),
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
    parser = bench_parser(
        "bench.async_invoke",
        "Measure Triggerbus async invocation (accept path and end to end) against same-run baselines.",
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
    add_sync_arg(parser)
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured warm-up requests per phase (default 200)")
    parser.add_argument("--sample", type=int, default=200, help="records sampled for per-record timings (default 200)")
    parser.add_argument("--max-instances", type=int, default=0, help="function max_instance_num (default: service's)")
    parser.add_argument(
        "--bus",
        choices=("sqlite", "kafka"),
        default="sqlite",
        help="the service's bus (kafka: a tansu of the bench's own)",
    )
    parser.add_argument("--partitions", type=int, default=8, help="Kafka bus partitions per topic (default 8)")
    parser.add_argument(
        "--processes", type=int, default=1, help="service processes (> 1: Kafka bus, shared SecantusDB store)"
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "mongo"),
        default=None,
        help="the service's store (default: sqlite for one process; mongo = a SecantusDB of the bench's own)",
    )
    parser.add_argument(
        "--functions", type=int, default=1, help="no-op functions invoked round-robin (bus partitions are per function)"
    )
    add_output_args(parser)
    # Internal: this module is also the baseline server, run as a subprocess.
    parser.add_argument("--floor-server", choices=("http", "sqlite"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--floor-db", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.workers, args.warmup, args.processes, args.functions) < 1:
        parser.error("--requests, --concurrency, --workers, --warmup, --processes, --functions must be at least 1")
    if args.processes > 1 and args.bus != "kafka":
        parser.error("several --processes need --bus kafka (the embedded bus is one process's)")
    args.store = args.store or ("mongo" if args.processes > 1 else "sqlite")
    if args.store == "mongo" and args.bus != "kafka":
        parser.error("--store mongo needs --bus kafka (as the service requires)")
    if args.processes > 1 and args.store != "mongo":
        parser.error("several --processes share a store: --store mongo")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.floor_server:
        asyncio.run(serve_floor(args.floor_server, args.port, args.floor_db, args.sync))
        return
    bench_main(lambda: run(args), args.json_out)


if __name__ == "__main__":
    main()
