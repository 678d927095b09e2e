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
import contextlib
import json
import math
import os
import platform
import re
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from motor.motor_asyncio import AsyncIOMotorClient

from bench.async_invoke import (
    NOOP_SOURCE,
    ROOT,
    TOKEN,
    URN,
    Dist,
    _iso,
    _num,
    _ratio,
    child_env,
    cpu_delta,
    cpu_snapshot,
    default_workers,
    free_port,
    fs_type,
    print_table,
    server_process,
)
from bench.kafka_trigger import Service, _pair, load_average, step
from tests.support.servers import ServerProcess, start_secantus

TRIGGER_TYPE = "DDS"
POLL_S = 0.05
STALL_S = 60.0
WARMUP_CHANGES = 200
INSERT_CHUNK = 100
INSERT_TIME = re.compile(r'"t":\{"\$numberDouble":"([0-9.eE+-]+)"\}')  # in the event's compact JSON


def _cpu(pid: int | None) -> dict[int, float]:
    return cpu_snapshot(pid) if pid else {}


def _cpu_total(before: dict[int, float], pid: int | None) -> float | None:
    if not pid or not before:
        return None
    return sum(cpu_delta(before, cpu_snapshot(pid), pid))


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
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
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
    namespace: dict[str, Any] = {}
    exec(compile(NOOP_SOURCE, "index.py", "exec"), namespace)
    handler: Callable[[Any, Any], Any] = namespace["handler"]
    client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(uri)
    collection = client[db][coll]
    store = sqlite3.connect(state, isolation_level=None)
    store.execute("PRAGMA journal_mode=WAL")
    store.execute("PRAGMA synchronous=FULL")
    store.execute("CREATE TABLE IF NOT EXISTS token(id INTEGER PRIMARY KEY CHECK (id = 1), value TEXT)")
    loop = asyncio.get_running_loop()

    def save(token: Any) -> None:
        store.execute("INSERT OR REPLACE INTO token(id, value) VALUES (1, ?)", (json_util.dumps(token),))

    def load() -> Any:
        row = store.execute("SELECT value FROM token WHERE id = 1").fetchone()
        return json_util.loads(row[0]) if row else None

    def say(body: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(body) + "\n")
        sys.stdout.flush()

    try:
        say({"ready": True})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command = json.loads(line) if line else {"op": "exit"}
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


class RawReader:
    """The raw reader subprocess, driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, uri: str, db: str, coll: str, batch: int, window_ms: int, tmp: Path
    ) -> AsyncIterator[RawReader]:
        argv = [sys.executable, "-m", "bench.dds_trigger", "--raw-reader", "--mongo", uri, "--db", db]
        argv += ["--coll", coll, "--batches", str(batch), "--window-ms", str(window_ms)]
        argv += ["--state", str(tmp / f"raw-{coll}.sqlite")]
        with open(tmp / f"raw-{coll}.log", "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=child_env(),
                cwd=ROOT,
            )
        reader = cls(proc)
        try:
            ready = await reader.answer(60)
            if not ready.get("ready"):
                raise RuntimeError(f"the raw reader did not get ready: {ready}")
            yield reader
        finally:
            if proc.returncode is None and proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.write(b'{"op": "exit"}\n')
                    await proc.stdin.drain()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"the raw reader exited with {await self.proc.wait()}; see its log")
        return dict(json.loads(line))

    async def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()


# -- Triggerbus -----------------------------------------------------------------------------------------


class DDSService(Service):
    """The Kafka bench's HTTP access to the service, for DDS triggers."""

    async def create_dds_trigger(self, uri: str, db: str, coll: str, batch: int, window_ms: int) -> str:
        event_data = {
            "instance_id": "bench",
            "connection_uri": uri,
            "db_name": db,
            "collection_name": coll,
            "batch_size": batch,
            "batch_window_ms": window_ms,
        }
        body = await self.call(
            "POST", f"/triggers/{URN}", {"trigger_type_code": TRIGGER_TYPE, "event_data": event_data}
        )
        trigger_id = str(body["trigger_id"])
        await self.set_dds_status(trigger_id, "ACTIVE")
        return trigger_id

    async def set_dds_status(self, trigger_id: str, status: str) -> None:
        await self.call("PUT", f"/triggers/{URN}/{TRIGGER_TYPE}/{trigger_id}", {"trigger_status": status})

    async def dds_state(self, trigger_id: str) -> dict[str, Any]:
        body = await self.call("GET", f"/triggers/{URN}/{TRIGGER_TYPE}/{trigger_id}")
        return dict(body.get("state") or {})

    async def delivered(self, trigger_id: str) -> int:
        state = await self.dds_state(trigger_id)
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
    svc: DDSService, trigger_id: str, name: str, act: Callable[[], Awaitable[Written]], n: int, db_pid: int | None
) -> TriggerRun:
    """Run ``act`` (``n`` changes, or an enable) and wait until the trigger counts them all delivered."""
    run = TriggerRun(name, n)
    before = await svc.delivered(trigger_id)
    cpu_server, cpu_db = _cpu(svc.pid), _cpu(db_pid)
    task = asyncio.create_task(act())
    seen, last_progress, done_at = -1, time.monotonic(), None
    try:
        while True:
            delivered = await svc.delivered(trigger_id) - before
            if task.done() and delivered >= n:
                done_at = time.time()
                break
            if delivered > seen:
                seen, last_progress = delivered, time.monotonic()
            elif time.monotonic() - last_progress > STALL_S:
                break
            await asyncio.sleep(POLL_S)
        written = await task
    finally:
        task.cancel()
    if cpu_server:
        run.server_cpu_s, run.worker_cpu_s = cpu_delta(cpu_server, cpu_snapshot(svc.pid), svc.pid)
    run.db_cpu_s = _cpu_total(cpu_db, db_pid)
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
    fresh = [r for r in await svc.records(trigger_id) if r["request_id"] not in seen]
    seen.update(r["request_id"] for r in fresh)
    run.batches = len(fresh)
    run.changes_in_records = sum(int((r.get("source") or {}).get("count") or 0) for r in fresh)
    run.per_batch = run.changes_in_records / run.batches if run.batches else math.nan
    for record in fresh:
        run.statuses[record["status"]] = run.statuses.get(record["status"], 0) + 1
    if set(run.statuses) - {"SUCCESS"} or run.changes_in_records != run.changes:
        print(f"!! {run.name}: statuses {run.statuses}, {run.changes_in_records}/{run.changes}", file=sys.stderr)
    if not latency:
        return
    fresh.sort(key=lambda r: (r["created_time"], r["request_id"]))
    if len(fresh) > sample:
        picks = sorted({round(k * (len(fresh) - 1) / max(1, sample - 1)) for k in range(sample)})
        fresh = [fresh[i] for i in picks]
    run.latency_sample_records = len(fresh)
    latencies: list[float] = []
    durations: list[float] = []
    gate = asyncio.Semaphore(8)

    async def one(request_id: str) -> None:
        async with gate:
            detail = await svc.detail(request_id)
        attempts = detail.get("attempt_details") or []
        if detail["status"] != "SUCCESS" or not attempts or not attempts[-1]["end_time"]:
            return
        end = _iso(attempts[-1]["end_time"])
        durations.append(float(attempts[-1]["duration_ms"]))
        # Records keep the first 256 KB of a payload: a batch of 1000 is cut, so read the insert
        # times from the text (the first records of such a batch, which waited longest, count).
        times = INSERT_TIME.findall(detail["payload"])
        run.latency_changes += len(times)
        latencies.extend((end - float(t)) * 1000 for t in times)

    await asyncio.gather(*(one(r["request_id"]) for r in fresh))
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


def raw_run(name: str, answer: dict[str, Any], start: float | None) -> RawRun:
    """``start``: time.time() of the first insert (live), or None to time from the first change (drain)."""
    begin = start if start is not None else answer["first_change"]
    wall = float(answer["last_done"]) - float(begin)
    latency = Dist(**answer["latency_ms"]) if start is not None else None
    return RawRun(name, int(answer["changes"]), int(answer["batches"]), answer["changes"] / wall, wall, latency)


async def run_batch(
    args: argparse.Namespace, svc: DDSService, writer: Writer, batch: int, db_pid: int | None, tmp: Path
) -> BatchResult:
    n = args.changes_batch1 if batch == 1 else args.changes
    paced_n = max(1, round(args.paced_rate * args.paced_seconds)) if args.paced_rate > 0 else 0
    label = f"batch {batch}"
    coll = f"b{batch}_{uuid.uuid4().hex[:8]}"
    trigger_id = await svc.create_dds_trigger(args.mongo_uri, args.db, coll, batch, args.window_ms)
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
    await svc.set_dds_status(trigger_id, "DISABLED")  # its resume token stays
    await writer.burst(coll, n)

    async def enable() -> Written:
        started = time.time()
        await svc.set_dds_status(trigger_id, "ACTIVE")
        return Written(n, started, started, math.nan)

    tb_drain = await measure_trigger(svc, trigger_id, f"{label} drain", enable, n, db_pid)
    await read_records(svc, trigger_id, tb_drain, seen, args.sample, latency=False)
    await svc.set_dds_status(trigger_id, "DISABLED")

    step(f"{label}: raw reader")
    raw_coll = f"raw{batch}_{uuid.uuid4().hex[:8]}"
    async with RawReader.running(args.mongo_uri, args.db, raw_coll, batch, args.window_ms, tmp) as raw:
        raw_pid = raw.proc.pid

        async def live(name: str, count: int, write: Callable[[], Awaitable[Written]]) -> RawRun:
            cpu_raw, cpu_db = _cpu(raw_pid), _cpu(db_pid)
            await raw.send({"op": "read", "n": count, "from": "now"})
            await raw.answer(30)  # watching
            written = await write()
            result = raw_run(name, await raw.answer(STALL_S + count / 50), written.first_insert)
            result.reader_cpu_s, result.db_cpu_s = _cpu_total(cpu_raw, raw_pid), _cpu_total(cpu_db, db_pid)
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
        cpu_raw, cpu_db = _cpu(raw_pid), _cpu(db_pid)
        await raw.send({"op": "read", "n": n, "from": "token"})
        await raw.answer(30)
        raw_d = raw_run(f"{label} raw drain", await raw.answer(STALL_S + n / 50), None)
        raw_d.reader_cpu_s, raw_d.db_cpu_s = _cpu_total(cpu_raw, raw_pid), _cpu_total(cpu_db, db_pid)
    return BatchResult(batch, n, tb_burst, tb_drain, tb_paced, raw_b, raw_d, raw_p)


async def warm_up(args: argparse.Namespace, svc: DDSService, writer: Writer) -> None:
    coll = f"warmup_{uuid.uuid4().hex[:8]}"
    trigger_id = await svc.create_dds_trigger(args.mongo_uri, args.db, coll, 1, args.window_ms)
    run = await measure_trigger(
        svc, trigger_id, "warm-up", lambda: writer.burst(coll, WARMUP_CHANGES), WARMUP_CHANGES, None
    )
    if run.stalled:
        raise RuntimeError("the warm-up changes were not all delivered; see the service log")
    await svc.set_dds_status(trigger_id, "DISABLED")


# -- report --------------------------------------------------------------------------------------------


def machine_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import motor
    import pymongo

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
        "pymongo": pymongo.version,
        "motor": motor.version,
        "database": "SecantusDB 0.7.0b3 (single-node replica set)" if args.own_db else args.mongo_uri,
        "data_dir_fs": fs_type(tmp),
        "workers": args.workers,
        "document_bytes": args.size,
        "batch_window_ms": args.window_ms,
        "paced": f"{args.paced_rate:g}/s for {args.paced_seconds:g} s" if args.paced_rate > 0 else "off",
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
                _num(b.rate),
                _num(rb.rate),
                _ratio(b.rate, rb.rate),
                _num(d.rate),
                _num(rd.rate),
                _ratio(d.rate, rd.rate),
                _num(b.write_rate),
                f"{b.batches:,}",
                _num(b.per_batch, 1),
                _num(d.per_batch, 1),
                _num(b.server_cpu_s, 1),
                _num(b.worker_cpu_s, 1),
                _num(b.db_cpu_s, 1),
                _num(rb.reader_cpu_s, 1),
            ]
        )
        p, rp = r.paced, r.raw_paced
        latency.append(
            [
                str(r.batch),
                _pair(b.latency_ms),
                _pair(rb.latency_ms),
                _pair(p.latency_ms if p else None),
                _pair(rp.latency_ms if rp else None),
                _num(p.per_batch, 1) if p else "-",
                _num(b.duration_ms.p50 if b.duration_ms else None, 2),
                f"{b.latency_sample_records:,}/{b.batches:,} ({b.latency_changes:,} changes)",
            ]
        )
    print()
    print("## Throughput, changes/s (ratio = Triggerbus / raw)")
    print()
    print_table(
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
    print()
    print("## Latency per change, insert -> processed, p50 / p99 ms (Triggerbus: end of the attempt)")
    print()
    print_table(
        [
            "batch",
            "burst Triggerbus",
            "burst raw",
            "paced Triggerbus",
            "paced raw",
            "paced changes/batch",
            "attempt duration p50 ms",
            "records read (burst)",
        ],
        latency,
    )
    return throughput, latency


# -- main ----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tb-bench-dds-", dir=args.tmp_dir, ignore_cleanup_errors=True) as name:
        tmp = Path(name)
        server: ServerProcess | None = None
        if args.mongo_uri is None:
            server = await asyncio.to_thread(start_secantus)
            args.mongo_uri, args.own_db = server.address, True
        info = machine_info(args, tmp)
        print("# Triggerbus DDS trigger benchmark")
        print()
        print("  ".join(f"{k}={v}" for k, v in info.items()))
        started = time.perf_counter()
        writer = Writer(args.mongo_uri, args.db, args.size)
        try:
            db_pid = server.proc.pid if server and server.proc else None
            port = free_port()
            argv = [sys.executable, "-m", "triggerbus.cli", "serve", "--data-dir", str(tmp / "triggerbus-data")]
            argv += ["--port", str(port)]
            env = child_env(TRIGGERBUS_TOKEN=TOKEN, TRIGGERBUS_MAX_WORKERS=str(args.workers))
            async with (
                server_process(argv, env, port, tmp / "triggerbus.log") as pid,
                aiohttp.ClientSession(
                    headers={"X-Auth-Token": TOKEN}, timeout=aiohttp.ClientTimeout(total=120)
                ) as http,
            ):
                svc = DDSService(http, f"http://127.0.0.1:{port}", pid)
                await svc.create_function()
                step("warm-up")
                await warm_up(args, svc, writer)
                results = [await run_batch(args, svc, writer, batch, db_pid, tmp) for batch in args.batches]
        finally:
            writer.close()
            if server is not None:
                server.stop()
        step(f"done in {time.perf_counter() - started:.0f} s; load average now {load_average()}")
        throughput, latency = report(results)
        return {
            "command": " ".join(["python", "-m", "bench.dds_trigger", *sys.argv[1:]]),
            "machine": info,
            "results": [asdict(r) for r in results],
            "throughput_table": throughput,
            "latency_table": latency,
            "seconds": time.perf_counter() - started,
        }


def _batches(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(not 1 <= v <= 10000 for v in values):
        raise argparse.ArgumentTypeError("batch sizes are integers between 1 and 10000, comma-separated")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dds_trigger",
        description="Measure MongoDB inserts -> DDS trigger -> no-op function against a raw change-stream reader.",
    )
    parser.add_argument("--changes", "-n", type=int, default=10_000, help="burst and drain size (default 10000)")
    parser.add_argument(
        "--changes-batch1", type=int, default=2_000, help="burst and drain size at batch size 1 (default 2000)"
    )
    parser.add_argument("--batches", type=_batches, default=[1, 100, 1000], help="batch sizes (default 1,100,1000)")
    parser.add_argument("--window-ms", type=int, default=100, help="the triggers' batch_window_ms (default 100)")
    parser.add_argument("--size", type=int, default=100, help="approximate document bytes (default 100)")
    parser.add_argument("--paced-rate", type=float, default=100.0, help="paced inserts/s, 0 = off (default 100)")
    parser.add_argument("--paced-seconds", type=float, default=3.0, help="paced phase length (default 3 s)")
    parser.add_argument("--sample", type=int, default=1000, help="most records read per phase for latency")
    parser.add_argument("--workers", "-w", type=int, default=default_workers(), help="service worker processes")
    parser.add_argument("--mongo", dest="mongo_uri", default=None, help="use this MongoDB (default: own SecantusDB)")
    parser.add_argument("--db", default="tb_bench", help="database the bench writes to (default tb_bench)")
    parser.add_argument("--tmp-dir", default=None, help="where data directories go (default: system temp dir)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write all results to this JSON file")
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
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C: stop the servers, clean up
    if args.raw_reader:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                raw_reader_main(args.mongo_uri, args.db, args.coll, args.batches[0], args.window_ms, args.state)
            )
        return
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
