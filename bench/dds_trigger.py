"""DDS trigger benchmark: MongoDB inserts -> DDS trigger -> no-op function, against a raw motor change-stream reader.

Run ``python -m bench.dds_trigger --help``. A default run takes about 2 minutes on 2 cores.
Nothing here asserts a speed: it measures Triggerbus and, in the same run, against the same
server and collection, a raw change-stream reader, and prints the ratios.

What runs: a SecantusDB server (the MongoDB-compatible server the test suite uses; ``--mongo
URI`` to use another) and ``python -m triggerbus.cli serve`` (embedded SQLite bus and store,
fresh data dir), both as subprocesses, with a Python function whose handler returns ``None``.
For each batch size (default 1, 100, 1000) the bench makes a fresh collection and a DDS trigger
on it (``batch_size``, ``batch_window_ms``), and one writer inserts documents:

* **paced** -- a steady, low rate (default 100 inserts/s for 3 s): the latency of the pipeline
  itself, without a backlog.
* **burst** -- N documents (default 10,000; 2,000 at batch size 1, where every change is an
  invocation of its own) as fast as ``insert_many`` (100 a call) writes them. Changes/s is N
  divided by the time from the first insert to the moment the trigger's state counts all N
  changes delivered (polled every 50 ms).
* **drain** -- the trigger is disabled (its resume token stays), N documents are inserted, the
  trigger is enabled: changes/s is N divided by the time from the enable request to all N
  delivered. The consume side alone, without the writer in the way (SecantusDB's writes are
  often the slower side of a live burst).

Every document carries its insert time (``t``, epoch seconds), so the function computes
nothing: each batch's async record holds the event (hence the insert times) and the attempt's
start and end times. Per-change latency is *attempt end - insert time*, read back through the
records API (at most ``--sample`` records per phase, evenly spread).

Why this baseline: **a raw motor change-stream reader** (a subprocess like the service) on the
same collection with ``full_document="updateLookup"``: it collects ``batch`` changes (or what
arrived within the same batch window), turns them into canonical Extended JSON (what any
function fed from a change stream needs), calls the same no-op handler in-process, then
persists the resume token of the batch's last change in SQLite (``synchronous=FULL``), as an
at-least-once reader must. That is the least a change-stream-to-function pipeline does, with
the usual async client against the same server: the physical limit here. Everything Triggerbus
adds -- the durable hop over its bus (``tb.invocations`` -> invoker), records, the function in
a worker process, one batch in flight per trigger (change order) -- is the gap to it. The raw
reader gets the same paced load, the same burst and the same drain (a resume from the token
taken before the drain's inserts), after the Triggerbus phases, on a collection of its own.

The warm-up (a trigger of its own, batch size 1, 200 inserts) is not measured. CPU seconds of
the service, its workers, the database and the raw reader come from ``/proc``: the writer,
database, service and workers share the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from motor.motor_asyncio import AsyncIOMotorClient

from bench._common import (
    STALL_S,
    Dist,
    add_output_args,
    add_paced_args,
    add_service_args,
    batch_sizes,
    bench_main,
    bench_parser,
    bench_tmp,
    cpu_mark,
    cpu_since,
    cpu_split_since,
    durable_sqlite,
    fs_type,
    helper_main,
    iso_ts,
    load_average,
    machine_basics,
    noop_handler,
    num,
    paced_count,
    paced_info,
    poll_until,
    print_heading,
    print_section,
    ratio,
    run_results,
    step,
    step_done,
)
from bench._triggers import (
    LATENCY_COLUMNS,
    Pace,
    RawProcess,
    TriggerService,
    commands,
    count_statuses,
    for_each_attempt,
    latency_cells,
    new_records,
    raw_run,
    running_service,
    say,
    source_count,
)
from tests.support.servers import ServerProcess, start_secantus

TRIGGER_TYPE = "DDS"
WARMUP_CHANGES = 200
INSERT_CHUNK = 100
INSERT_TIME = re.compile(r'"t":\{"\$numberDouble":"([0-9.eE+-]+)"\}')  # in the event's compact JSON


# -- writing ------------------------------------------------------------------------------------------


@dataclass
class Written:
    changes: int
    first_insert: float  # time.time()
    last_insert: float
    rate: float


class Writer:
    """Inserts documents stamped with their insert time and padded to ``size`` bytes."""

    def __init__(self, uri: str, db: str, size: int) -> None:
        self.client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(uri)
        self.db = self.client[db]
        self.pad = "x" * max(0, size - 40)

    def _doc(self) -> dict[str, Any]:
        return {"t": time.time(), "pad": self.pad}

    async def burst(self, coll: str, n: int) -> Written:
        first = time.time()
        left = n
        while left > 0:
            chunk = min(INSERT_CHUNK, left)
            await self.db[coll].insert_many([self._doc() for _ in range(chunk)], ordered=True)
            left -= chunk
        last = time.time()
        return Written(n, first, last, n / max(last - first, 1e-9))

    async def paced(self, coll: str, rate: float, seconds: float) -> Written:
        n = max(1, round(rate * seconds))
        first = time.time()
        pace = Pace(rate)
        for i in range(n):
            await pace(i)
            await self.db[coll].insert_one(self._doc())
        last = time.time()
        return Written(n, first, last, n / max(last - first, 1e-9))

    def close(self) -> None:
        self.client.close()


# -- the raw reader (a subprocess: python -m bench.dds_trigger --raw-reader ...) --------------------------


async def raw_reader_main(uri: str, db: str, coll: str, batch: int, window_ms: int, state: str) -> None:
    """Report READY, then obey stdin, one JSON object a line.

    ``{"op": "read", "n", "from": "now" | "token"}`` opens a change stream (at the current end, or
    after the token it persisted last), reads ``n`` changes in batches of ``batch`` (or what came
    within ``window_ms`` of a batch's first change), calls the no-op handler on each batch's
    Extended JSON event, persists the last change's token (SQLite, synchronous=FULL), and
    answers timings and per-change latency (handler returned - insert time).
    ``{"op": "mark"}`` persists the current end of the stream (before a drain). ``{"op": "exit"}``.
    """
    handler = noop_handler()
    client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(uri)
    collection = client[db][coll]
    store = durable_sqlite(
        state, "FULL", "CREATE TABLE IF NOT EXISTS token(id INTEGER PRIMARY KEY CHECK (id = 1), value TEXT)"
    )

    def save(token: Any) -> None:
        store.execute("INSERT OR REPLACE INTO token(id, value) VALUES (1, ?)", (json_util.dumps(token),))

    def load() -> Any:
        row = store.execute("SELECT value FROM token WHERE id = 1").fetchone()
        return json_util.loads(row[0]) if row else None

    try:
        say({"ready": True})
        async for command in commands():
            if command["op"] == "mark":
                async with collection.watch(max_await_time_ms=100) as stream:
                    save(stream.resume_token)
                say({"marked": True})
                continue
            if command["op"] != "read":
                return
            want = int(command["n"])
            options: dict[str, Any] = {"full_document": "updateLookup", "max_await_time_ms": 100}
            if command.get("from") == "token":
                options["resume_after"] = load()
            got = invoked = 0
            first_change: float | None = None
            latencies: list[float] = []
            last_done: float | None = None
            async with collection.watch(**options) as stream:
                say({"watching": True})
                while got < want:
                    change = await stream.try_next()
                    if change is None:
                        continue
                    if first_change is None:
                        first_change = time.time()
                    changes = [change]
                    deadline = time.monotonic() + window_ms / 1000
                    while len(changes) < batch and got + len(changes) < want and time.monotonic() < deadline:
                        more = await stream.try_next()
                        if more is not None:
                            changes.append(more)
                    event = json.loads(json_util.dumps({"records": changes}, json_options=CANONICAL_JSON_OPTIONS))
                    handler(event, None)
                    last_done = time.time()
                    save(changes[-1]["_id"])
                    latencies.extend((last_done - float(c["fullDocument"]["t"])) * 1000 for c in changes)
                    invoked += 1
                    got += len(changes)
            say(
                {
                    "changes": got,
                    "batches": invoked,
                    "first_change": first_change,
                    "last_done": last_done,
                    "latency_ms": asdict(Dist.of(latencies)),
                }
            )
    finally:
        client.close()
        store.close()


@dataclass
class RawRun:
    name: str
    changes: int
    batches: int
    rate: float
    wall_s: float
    latency_ms: Dist | None
    reader_cpu_s: float | None = None
    db_cpu_s: float | None = None


def raw_reader(uri: str, db: str, coll: str, batch: int, window_ms: int, tmp: Path) -> Any:
    """The raw reader subprocess (an async context manager), once READY."""
    argv = ["bench.dds_trigger", "--raw-reader", "--mongo", uri, "--db", db]
    argv += ["--coll", coll, "--batches", str(batch), "--window-ms", str(window_ms)]
    argv += ["--state", str(tmp / f"raw-{coll}.sqlite")]
    return RawProcess.running(argv, tmp / f"raw-{coll}.log", what="raw reader", ready_within=60)


# -- Triggerbus -----------------------------------------------------------------------------------------


class DDSService(TriggerService):
    """HTTP access to the service for DDS triggers."""

    trigger_type: ClassVar[str] = TRIGGER_TYPE

    async def create_trigger(self, uri: str, db: str, coll: str, batch: int, window_ms: int) -> str:
        event_data = {
            "instance_id": "bench",
            "connection_uri": uri,
            "db_name": db,
            "collection_name": coll,
            "batch_size": batch,
            "batch_window_ms": window_ms,
        }
        trigger_id = await self.add_trigger(event_data)
        await self.set_status(trigger_id, "ACTIVE")
        return trigger_id

    async def delivered(self, trigger_id: str) -> int:
        state = await self.state(trigger_id)
        return int(state.get("changes_delivered") or 0) + int(state.get("dropped") or 0)


@dataclass
class TriggerRun:
    name: str
    changes: int
    delivered: int = 0
    wall_s: float = math.nan
    rate: float = math.nan
    write_rate: float = math.nan
    batches: int = 0
    changes_in_records: int = 0
    per_batch: float = math.nan
    statuses: dict[str, int] = field(default_factory=dict)
    latency_sample_records: int = 0
    latency_changes: int = 0  # changes whose insert time could be read from the sampled records
    latency_ms: Dist | None = None
    duration_ms: Dist | None = None
    server_cpu_s: float | None = None
    worker_cpu_s: float | None = None
    db_cpu_s: float | None = None
    stalled: bool = False


async def measure_trigger(
    svc: DDSService,
    trigger_id: str,
    name: str,
    act: Callable[[], Coroutine[Any, Any, Written]],
    n: int,
    db_pid: int | None,
) -> TriggerRun:
    """Run ``act`` (``n`` changes, or an enable) and wait until the trigger counts them all delivered."""
    run = TriggerRun(name, n)
    before = await svc.delivered(trigger_id)
    cpu_server, cpu_db = cpu_mark(svc.pid), cpu_mark(db_pid)
    task = asyncio.create_task(act())
    seen, done_at = -1, None

    async def probe() -> tuple[bool, int]:
        nonlocal seen, done_at
        seen = await svc.delivered(trigger_id) - before
        if task.done() and seen >= n:
            done_at = time.time()
        return done_at is not None, seen

    try:
        await poll_until(probe)
        written = await task
    finally:
        task.cancel()
    run.server_cpu_s, run.worker_cpu_s = cpu_split_since(cpu_server, svc.pid)
    run.db_cpu_s = cpu_since(cpu_db, db_pid)
    run.delivered = max(seen, 0)
    run.write_rate = written.rate
    if done_at is None:
        run.stalled = True
        print(f"!! {name}: stalled at {run.delivered} of {n} delivered", file=sys.stderr)
        return run
    run.delivered = n
    run.wall_s = done_at - written.first_insert
    run.rate = n / run.wall_s
    return run


async def read_records(
    svc: DDSService, trigger_id: str, run: TriggerRun, seen: set[str], sample: int, latency: bool = True
) -> None:
    """Batches and latencies of ``run`` from the records not in ``seen`` (which it extends)."""
    fresh = await new_records(svc, trigger_id, seen)
    run.batches = len(fresh)
    run.changes_in_records = source_count(fresh, 0)
    run.per_batch = run.changes_in_records / run.batches if run.batches else math.nan
    for status, count in count_statuses(fresh).items():
        run.statuses[status] = run.statuses.get(status, 0) + count
    if set(run.statuses) - {"SUCCESS"} or run.changes_in_records != run.changes:
        print(f"!! {run.name}: statuses {run.statuses}, {run.changes_in_records}/{run.changes}", file=sys.stderr)
    if not latency:
        return
    latencies: list[float] = []
    durations: list[float] = []

    def each(detail: dict[str, Any], attempt: dict[str, Any]) -> None:
        end = iso_ts(attempt["end_time"])
        durations.append(float(attempt["duration_ms"]))
        # Records keep the first 256 KB of a payload: a batch of 1000 is cut, so read the insert
        # times from the text (the first records of such a batch, which waited longest, count).
        times = INSERT_TIME.findall(detail["payload"])
        run.latency_changes += len(times)
        latencies.extend((end - float(t)) * 1000 for t in times)

    run.latency_sample_records = await for_each_attempt(svc, fresh, sample, each)
    run.latency_ms, run.duration_ms = Dist.of(latencies), Dist.of(durations)


# -- one batch size -------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    batch: int
    changes: int
    burst: TriggerRun
    drain: TriggerRun
    paced: TriggerRun | None
    raw_burst: RawRun
    raw_drain: RawRun
    raw_paced: RawRun | None


async def run_batch(
    args: argparse.Namespace, svc: DDSService, writer: Writer, batch: int, db_pid: int | None, tmp: Path
) -> BatchResult:
    n = args.changes_batch1 if batch == 1 else args.changes
    paced_n = paced_count(args)
    label = f"batch {batch}"
    coll = f"b{batch}_{uuid.uuid4().hex[:8]}"
    trigger_id = await svc.create_trigger(args.mongo_uri, args.db, coll, batch, args.window_ms)
    seen: set[str] = set()

    tb_paced: TriggerRun | None = None
    if paced_n:  # first, so that its latency is not that of a service still digesting a burst
        step(f"{label}: Triggerbus paced, {paced_n} inserts at {args.paced_rate:g}/s")
        tb_paced = await measure_trigger(
            svc,
            trigger_id,
            f"{label} paced",
            lambda: writer.paced(coll, args.paced_rate, args.paced_seconds),
            paced_n,
            db_pid,
        )
        await read_records(svc, trigger_id, tb_paced, seen, args.sample)
    step(f"{label}: Triggerbus burst of {n}")
    tb_burst = await measure_trigger(svc, trigger_id, f"{label} burst", lambda: writer.burst(coll, n), n, db_pid)
    await read_records(svc, trigger_id, tb_burst, seen, args.sample)

    step(f"{label}: Triggerbus drain of {n}")
    await svc.set_status(trigger_id, "DISABLED")  # its resume token stays
    await writer.burst(coll, n)

    async def enable() -> Written:
        started = time.time()
        await svc.set_status(trigger_id, "ACTIVE")
        return Written(n, started, started, math.nan)

    tb_drain = await measure_trigger(svc, trigger_id, f"{label} drain", enable, n, db_pid)
    await read_records(svc, trigger_id, tb_drain, seen, args.sample, latency=False)
    await svc.set_status(trigger_id, "DISABLED")

    step(f"{label}: raw reader")
    raw_coll = f"raw{batch}_{uuid.uuid4().hex[:8]}"
    async with raw_reader(args.mongo_uri, args.db, raw_coll, batch, args.window_ms, tmp) as raw:
        raw_pid = raw.pid

        async def live(name: str, count: int, write: Callable[[], Awaitable[Written]]) -> RawRun:
            cpu_raw, cpu_db = cpu_mark(raw_pid), cpu_mark(db_pid)
            await raw.send({"op": "read", "n": count, "from": "now"})
            await raw.answer(30)  # watching
            written = await write()
            result = raw_run(
                name, await raw.answer(STALL_S + count / 50), written.first_insert, RawRun, "changes", "first_change"
            )
            result.reader_cpu_s, result.db_cpu_s = cpu_since(cpu_raw, raw_pid), cpu_since(cpu_db, db_pid)
            return result

        raw_p = (
            await live(
                f"{label} raw paced", paced_n, lambda: writer.paced(raw_coll, args.paced_rate, args.paced_seconds)
            )
            if paced_n
            else None
        )
        raw_b = await live(f"{label} raw burst", n, lambda: writer.burst(raw_coll, n))
        await raw.send({"op": "mark"})
        await raw.answer(30)
        await writer.burst(raw_coll, n)
        cpu_raw, cpu_db = cpu_mark(raw_pid), cpu_mark(db_pid)
        await raw.send({"op": "read", "n": n, "from": "token"})
        await raw.answer(30)
        raw_d = raw_run(
            f"{label} raw drain", await raw.answer(STALL_S + n / 50), None, RawRun, "changes", "first_change"
        )
        raw_d.reader_cpu_s, raw_d.db_cpu_s = cpu_since(cpu_raw, raw_pid), cpu_since(cpu_db, db_pid)
    return BatchResult(batch, n, tb_burst, tb_drain, tb_paced, raw_b, raw_d, raw_p)


async def warm_up(args: argparse.Namespace, svc: DDSService, writer: Writer) -> None:
    coll = f"warmup_{uuid.uuid4().hex[:8]}"
    trigger_id = await svc.create_trigger(args.mongo_uri, args.db, coll, 1, args.window_ms)
    run = await measure_trigger(
        svc, trigger_id, "warm-up", lambda: writer.burst(coll, WARMUP_CHANGES), WARMUP_CHANGES, None
    )
    if run.stalled:
        raise RuntimeError("the warm-up changes were not all delivered; see the service log")
    await svc.set_status(trigger_id, "DISABLED")


# -- report --------------------------------------------------------------------------------------------


def machine_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import motor
    import pymongo

    return {
        **machine_basics(),
        "pymongo": pymongo.version,
        "motor": motor.version,
        "database": "SecantusDB 0.7.0b3 (single-node replica set)" if args.own_db else args.mongo_uri,
        "data_dir_fs": fs_type(tmp),
        "workers": args.workers,
        "document_bytes": args.size,
        "batch_window_ms": args.window_ms,
        "paced": paced_info(args),
        "loadavg_at_start": load_average(),
    }


def report(results: Sequence[BatchResult]) -> tuple[list[list[str]], list[list[str]]]:
    throughput: list[list[str]] = []
    latency: list[list[str]] = []
    for r in results:
        b, d, rb, rd = r.burst, r.drain, r.raw_burst, r.raw_drain
        throughput.append(
            [
                str(r.batch),
                f"{b.delivered:,}/{r.changes:,}",
                num(b.rate),
                num(rb.rate),
                ratio(b.rate, rb.rate),
                num(d.rate),
                num(rd.rate),
                ratio(d.rate, rd.rate),
                num(b.write_rate),
                f"{b.batches:,}",
                num(b.per_batch, 1),
                num(d.per_batch, 1),
                num(b.server_cpu_s, 1),
                num(b.worker_cpu_s, 1),
                num(b.db_cpu_s, 1),
                num(rb.reader_cpu_s, 1),
            ]
        )
        p = r.paced
        latency.append(
            [
                str(r.batch),
                *latency_cells(r),
                num(p.per_batch, 1) if p else "-",
                num(b.duration_ms.p50 if b.duration_ms else None, 2),
                f"{b.latency_sample_records:,}/{b.batches:,} ({b.latency_changes:,} changes)",
            ]
        )
    print_section(
        "Throughput, changes/s (ratio = Triggerbus / raw)",
        [
            "batch",
            "changes",
            "burst Triggerbus",
            "burst raw",
            "ratio",
            "drain Triggerbus",
            "drain raw",
            "ratio",
            "insert/s",
            "batches (burst)",
            "changes/batch burst",
            "changes/batch drain",
            "server CPU s",
            "workers CPU s",
            "db CPU s",
            "raw CPU s",
        ],
        throughput,
    )
    print_section(
        "Latency per change, insert -> processed, p50 / p99 ms (Triggerbus: end of the attempt)",
        [
            "batch",
            *LATENCY_COLUMNS,
            "paced changes/batch",
            "attempt duration p50 ms",
            "records read (burst)",
        ],
        latency,
    )
    return throughput, latency


# -- main ----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with bench_tmp("tb-bench-dds-", args.tmp_dir) as tmp:
        server: ServerProcess | None = None
        if args.mongo_uri is None:
            server = await asyncio.to_thread(start_secantus)
            args.mongo_uri, args.own_db = server.address, True
        info = machine_info(args, tmp)
        print_heading("DDS trigger", info)
        started = time.perf_counter()
        writer = Writer(args.mongo_uri, args.db, args.size)
        try:
            db_pid = server.proc.pid if server and server.proc else None
            async with running_service(DDSService, tmp, TRIGGERBUS_MAX_WORKERS=str(args.workers)) as svc:
                step("warm-up")
                await warm_up(args, svc, writer)
                results = [await run_batch(args, svc, writer, batch, db_pid, tmp) for batch in args.batches]
        finally:
            writer.close()
            if server is not None:
                server.stop()
        step_done(started)
        throughput, latency = report(results)
        return run_results(
            "bench.dds_trigger",
            info,
            started,
            results=[asdict(r) for r in results],
            throughput_table=throughput,
            latency_table=latency,
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "bench.dds_trigger",
        "Measure MongoDB inserts -> DDS trigger -> no-op function against a raw change-stream reader.",
    )
    parser.add_argument("--changes", "-n", type=int, default=10_000, help="burst and drain size (default 10000)")
    parser.add_argument(
        "--changes-batch1", type=int, default=2_000, help="burst and drain size at batch size 1 (default 2000)"
    )
    parser.add_argument(
        "--batches", type=batch_sizes(10000), default=[1, 100, 1000], help="batch sizes (default 1,100,1000)"
    )
    parser.add_argument("--window-ms", type=int, default=100, help="the triggers' batch_window_ms (default 100)")
    parser.add_argument("--size", type=int, default=100, help="approximate document bytes (default 100)")
    add_paced_args(parser, 100.0, "paced inserts/s, 0 = off (default 100)")
    parser.add_argument("--sample", type=int, default=1000, help="most records read per phase for latency")
    add_service_args(parser, sync=False)
    parser.add_argument("--mongo", dest="mongo_uri", default=None, help="use this MongoDB (default: own SecantusDB)")
    parser.add_argument("--db", default="tb_bench", help="database the bench writes to (default tb_bench)")
    add_output_args(parser)
    # Internal: this module is also the raw reader, run as a subprocess.
    parser.add_argument("--raw-reader", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--coll", default="", help=argparse.SUPPRESS)
    parser.add_argument("--state", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.own_db = False
    if min(args.changes, args.changes_batch1, args.workers, args.sample, args.size) < 1:
        parser.error("--changes, --changes-batch1, --workers, --sample and --size must be >= 1")
    if args.window_ms < 0 or args.paced_rate < 0 or args.paced_seconds <= 0:
        parser.error("--window-ms and --paced-rate must be >= 0, --paced-seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.raw_reader:
        helper_main(raw_reader_main(args.mongo_uri, args.db, args.coll, args.batches[0], args.window_ms, args.state))
        return
    bench_main(lambda: run(args), args.json_out)


if __name__ == "__main__":
    main()
