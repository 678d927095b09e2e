"""What the benchmarks of the triggers on Redis Streams (DIS, LTS) share.

Both run ``python -m triggerbus.cli serve`` (embedded SQLite bus and store, fresh data dir,
``TRIGGERBUS_STREAMS_REDIS`` pointing at the machine's Redis with a key prefix of their own, deleted
afterwards) with a no-op Python function, produce through the service's own API, and measure:

* **Triggerbus**: throughput is N divided by the time from the first send to the moment the
  trigger's committed position reaches the last record sent to every shard (polled every 50 ms);
  per-record latency is *attempt end - send time*, read back through the records API.
* **Raw**: a subprocess (``python -m <bench> --raw-consumer``) reading the same Redis streams with
  ``XREAD BLOCK``, building the same event and calling the same no-op handler in-process, on
  records sent by the same producer after the Triggerbus phases (the trigger is disabled by then).

Each bench supplies what differs: its API calls (:class:`StreamService`), how it sends records
(:class:`StreamProducer`), the raw consumer's events (:data:`RawEvents`) and its names (:class:`Kind`).
What all trigger benches share is in :mod:`bench._triggers` and :mod:`bench._common`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import redis.asyncio as aioredis

from bench._common import (
    STALL_S,
    Dist,
    add_output_args,
    add_paced_args,
    add_service_args,
    bench_main,
    bench_tmp,
    command_line,
    cpu_mark,
    cpu_since,
    cpu_split_since,
    helper_main,
    iso_ts,
    load_average,
    noop_handler,
    num,
    paced_count,
    paced_info,
    pair,
    poll_until,
    print_heading,
    print_table,
    step,
    step_done,
)
from bench._triggers import (
    Pace,
    RawProcess,
    TriggerService,
    commands,
    for_each_attempt,
    message,
    new_records,
    running_service,
    say,
    source_count,
)

WARMUP_RECORDS = 100

RawEntries = list[tuple[bytes, dict[bytes, bytes]]]
RawEvents = Callable[[str, RawEntries], Iterable[tuple[Any, list[float]]]]
"""(Redis key, the entries one ``XREAD`` returned for it) -> the events to call the handler with,
each with the send times of the records it holds."""


@dataclass(frozen=True)
class Kind:
    """The names that differ between the stream benches."""

    name: str  # "dis": key prefix and temp dir
    title: str  # "DIS": the report's heading
    module: str  # "bench.dis_trigger": runs the raw consumer with --raw-consumer
    unit: str  # "record": what is counted
    sent: str  # "put/s": the producer's rate column
    per: str  # "records/batch": the records-per-invocation column


@dataclass
class Produced:
    records: int
    first_put: float
    last_put: float
    rate: float
    last: dict[str, str]  # shard -> sequence number of the last record put there


@dataclass
class Phase:
    name: str
    records: int
    wall_s: float = math.nan
    rate: float = math.nan
    put_rate: float = math.nan
    batches: int = 0
    per_batch: float = math.nan
    latency_ms: Dist | None = None
    server_cpu_s: float | None = None
    worker_cpu_s: float | None = None
    consumer_cpu_s: float | None = None
    stalled: bool = False


class StreamService(TriggerService):
    """HTTP access to the service for one stream trigger type, which knows where its events keep the send times."""

    trigger_type: ClassVar[str]

    def sent_times(self, payload: Any) -> list[float]:
        """The send times of the records in one invocation's event."""
        raise NotImplementedError


class StreamProducer:
    """Sends records through the service's API: bursts of ``chunk`` records a call, or paced one a call."""

    def __init__(self, size: int, chunk: int) -> None:
        self.size, self.chunk = size, chunk
        self.seq = 0

    def _values(self, n: int) -> list[bytes]:
        values = [message(self.seq + i, self.size) for i in range(n)]
        self.seq += n
        return values

    async def send(self, values: list[bytes]) -> dict[str, str]:
        """Send ``values`` in one call; shard -> sequence number of the last record placed there, if told."""
        raise NotImplementedError

    async def tips(self) -> dict[str, str]:
        """Where the last records went, for APIs that do not say (after the last send)."""
        return {}

    async def burst(self, n: int) -> Produced:
        first, last_of = time.time(), {}
        for start in range(0, n, self.chunk):
            last_of.update(await self.send(self._values(min(self.chunk, n - start))))
        end = time.time()
        last_of.update(await self.tips())
        return Produced(n, first, end, n / max(end - first, 1e-9), last_of)

    async def paced(self, rate: float, seconds: float) -> Produced:
        n = max(1, round(rate * seconds))
        pace, first, last_of = Pace(rate), time.time(), {}
        for i in range(n):
            await pace(i)
            last_of.update(await self.send(self._values(1)))
        end = time.time()
        last_of.update(await self.tips())
        return Produced(n, first, end, n / max(end - first, 1e-9), last_of)


# -- Triggerbus phases ----------------------------------------------------------------------------------


def _reached(committed: dict[str, str | None], targets: dict[str, str]) -> bool:
    return all(
        (committed.get(shard) or "") and int(committed[shard] or 0) >= int(seq) for shard, seq in targets.items()
    )


async def measure_trigger(
    svc: StreamService,
    trigger_id: str,
    name: str,
    produce: Callable[[], Coroutine[Any, Any, Produced]],
    n: int,
    seen: set[str],
    sample: int,
) -> Phase:
    """Run ``produce`` and wait until the trigger committed every record it put."""
    phase = Phase(name, n)
    cpu = cpu_mark(svc.pid)
    sender = asyncio.create_task(produce())
    now, committed = math.nan, {}

    async def probe() -> tuple[bool, str]:
        nonlocal now, committed
        state = await svc.state(trigger_id)
        now = time.time()
        committed = {s["shard_id"]: s["committed"] for s in state.get("shards") or []}
        return sender.done() and _reached(committed, sender.result().last), json.dumps(committed, sort_keys=True)

    try:
        if not await poll_until(probe):
            phase.stalled = True
            print(f"!! {name}: stalled (committed {committed})", file=sys.stderr)
            return phase
        sent = sender.result()
    finally:
        sender.cancel()
    phase.server_cpu_s, phase.worker_cpu_s = cpu_split_since(cpu, svc.pid)
    phase.wall_s = now - sent.first_put
    phase.rate = n / phase.wall_s
    phase.put_rate = sent.rate
    await read_latencies(svc, trigger_id, phase, seen, sample)
    return phase


async def read_latencies(svc: StreamService, trigger_id: str, phase: Phase, seen: set[str], sample: int) -> None:
    fresh = await new_records(svc, trigger_id, seen)
    phase.batches = len(fresh)
    in_records = source_count(fresh, 0)
    phase.per_batch = in_records / len(fresh) if fresh else math.nan
    if in_records != phase.records:
        print(f"!! {phase.name}: the records hold {in_records} records, {phase.records} were put", file=sys.stderr)
    latencies: list[float] = []

    def each(detail: dict[str, Any], attempt: dict[str, Any]) -> None:
        end = iso_ts(attempt["end_time"])
        latencies.extend((end - sent) * 1000 for sent in svc.sent_times(json.loads(detail["payload"])))

    await for_each_attempt(svc, fresh, sample, each)
    phase.latency_ms = Dist.of(latencies)


async def warm_up(svc: StreamService, trigger_id: str, producer: StreamProducer, seen: set[str]) -> None:
    """Start the workers (not measured); the trigger is disabled afterwards."""
    await measure_trigger(svc, trigger_id, "warm-up", lambda: producer.burst(WARMUP_RECORDS), WARMUP_RECORDS, seen, 1)
    await svc.set_status(trigger_id, "DISABLED")


# -- the raw consumer (a subprocess: python -m <bench> --raw-consumer ...) ------------------------------


async def raw_consumer_main(redis_url: str, count: int, events: RawEvents) -> None:
    """Report READY, then obey stdin, one JSON object a line.

    ``{"op": "consume", "n", "after": {key: id}}`` reads ``n`` records after those ids with ``XREAD
    BLOCK`` (``COUNT`` count), calls the no-op handler on each event ``events`` builds of them, and
    answers one JSON line: timings and per-record handler-return minus send time.
    """
    handler = noop_handler()
    client = aioredis.Redis.from_url(redis_url)
    try:
        say({"ready": True})
        async for order in commands():
            if order["op"] != "consume":
                return
            positions: dict[Any, Any] = dict(order["after"])
            want, got, batches, latencies = int(order["n"]), 0, 0, []
            first_read: float | None = None
            while got < want:
                answer: Any = await client.xread(positions, count=count, block=1000)  # redis-py's types are loose
                for raw_key, entries in answer or []:
                    key = raw_key.decode()
                    if first_read is None:
                        first_read = time.time()
                    for event, sent in events(key, entries):
                        handler(event, None)
                        done = time.time()
                        latencies += [(done - s) * 1000 for s in sent]
                        batches += 1
                    positions[key] = entries[-1][0].decode()
                    got += len(entries)
            say(
                {
                    "records": got,
                    "batches": batches,
                    "first_read": first_read,
                    "done": time.time(),
                    "latency_ms": asdict(Dist.of(latencies)),
                }
            )
    finally:
        await client.aclose()


async def measure_raw(
    raw: RawProcess,
    name: str,
    n: int,
    after: dict[str, str],
    produce: Callable[[], Coroutine[Any, Any, Produced]],
    service_pid: int,
) -> Phase:
    """The raw consumer reads ``n`` records after ``after`` while ``produce`` sends them."""
    cpu, service_cpu = cpu_mark(raw.pid), cpu_mark(service_pid)
    await raw.send({"op": "consume", "n": n, "after": after})
    sent = await produce()
    answer = await raw.answer(STALL_S + n / 100)
    phase = Phase(name, n, put_rate=sent.rate, batches=int(answer["batches"]))
    phase.wall_s = float(answer["done"]) - sent.first_put
    phase.rate = n / phase.wall_s
    phase.per_batch = n / phase.batches if phase.batches else math.nan
    phase.latency_ms = Dist(**answer["latency_ms"])
    phase.consumer_cpu_s = cpu_since(cpu, raw.pid)
    phase.server_cpu_s, phase.worker_cpu_s = cpu_split_since(service_cpu, service_pid)
    return phase


# -- the phases, in order ----------------------------------------------------------------------------------


async def compare(
    args: argparse.Namespace,
    kind: Kind,
    svc: StreamService,
    trigger_id: str,
    producer: StreamProducer,
    n: int,
    keys: list[str],
    raw_options: list[str],
    tmp: Path,
    seen: set[str],
) -> list[Phase]:
    """Triggerbus paced and burst on ``trigger_id``, then (trigger disabled) the raw consumer on ``keys``."""
    paced_n = paced_count(args)
    step(f"Triggerbus paced: {paced_n} {kind.unit}s")
    tb_paced = await measure_trigger(
        svc,
        trigger_id,
        "Triggerbus paced",
        lambda: producer.paced(args.paced_rate, args.paced_seconds),
        paced_n,
        seen,
        args.sample,
    )
    step(f"Triggerbus burst: {n} {kind.unit}s")
    tb_burst = await measure_trigger(
        svc, trigger_id, "Triggerbus burst", lambda: producer.burst(n), n, seen, args.sample
    )
    await svc.set_status(trigger_id, "DISABLED")

    client = aioredis.Redis.from_url(args.redis)
    try:

        async def tips() -> dict[str, str]:
            out = {}
            for key in keys:
                newest: Any = await client.xrevrange(key, count=1)
                out[key] = newest[0][0].decode() if newest else "0-0"
            return out

        argv = [kind.module, "--raw-consumer", "--redis", args.redis, *raw_options]
        async with RawProcess.running(argv, tmp / "raw.log") as raw:
            step("raw paced")
            raw_paced = await measure_raw(
                raw,
                "raw XREAD paced",
                paced_n,
                await tips(),
                lambda: producer.paced(args.paced_rate, args.paced_seconds),
                svc.pid,
            )
            step("raw burst")
            raw_burst = await measure_raw(raw, "raw XREAD burst", n, await tips(), lambda: producer.burst(n), svc.pid)
    finally:
        await client.aclose()
    return [tb_paced, raw_paced, tb_burst, raw_burst]


S = TypeVar("S", bound=StreamService)


async def run_bench(
    args: argparse.Namespace,
    kind: Kind,
    details: dict[str, Any],
    service: type[S],
    measure_all: Callable[[S, str, Path], Awaitable[list[Phase]]],
) -> dict[str, Any]:
    """Start the service, run ``measure_all(svc, key prefix, temp dir)``, clean up and report."""
    prefix = f"tb-bench-{kind.name}-{uuid.uuid4().hex[:8]}"
    with bench_tmp(f"tb-bench-{kind.name}-", args.tmp_dir) as tmp:
        info = {
            "cpus": os.cpu_count(),
            "redis": args.redis,
            "workers": args.workers,
            **details,
            "paced": paced_info(args),
            "loadavg_at_start": load_average(),
        }
        print_heading(f"{kind.title} trigger", info)
        started = time.perf_counter()
        cleanup = aioredis.Redis.from_url(args.redis)
        try:
            async with running_service(
                service,
                tmp,
                "data",
                TRIGGERBUS_MAX_WORKERS=str(args.workers),
                TRIGGERBUS_STREAMS_REDIS=args.redis,
                TRIGGERBUS_STREAMS_PREFIX=prefix,
            ) as svc:
                phases = await measure_all(svc, prefix, tmp)
        finally:
            keys = [k async for k in cleanup.scan_iter(match=f"{prefix}:*", count=500)]
            if keys:
                await cleanup.delete(*keys)
            await cleanup.aclose()
        step_done(started)
        table = report(phases, kind)
        return {
            "command": command_line(kind.module),
            "machine": info,
            "phases": [asdict(p) for p in phases],
            "table": table,
        }


def report(phases: Sequence[Phase], kind: Kind) -> list[list[str]]:
    by_name = {p.name: p for p in phases}
    rows = []
    for p in phases:
        base = by_name.get(p.name.replace("Triggerbus", "raw XREAD"))
        vs_raw = f"{p.rate / base.rate:.3f}x" if base is not None and p is not base and base.rate else ""
        service = (
            "-" if p.server_cpu_s is None else f"{(p.server_cpu_s + (p.worker_cpu_s or 0)) * 1000 / p.records:.3f}"
        )
        raw = "-" if p.consumer_cpu_s is None else f"{p.consumer_cpu_s * 1000 / p.records:.3f}"
        rows.append(
            [
                p.name,
                f"{p.records:,}",
                num(p.rate),
                vs_raw,
                num(p.put_rate),
                num(p.per_batch, 1),
                pair(p.latency_ms),
                service,
                raw,
            ]
        )
    print()
    unit = kind.unit
    print_table(
        [
            "phase",
            f"{unit}s",
            f"{unit}s/s",
            "vs raw",
            kind.sent,
            kind.per,
            "latency p50 / p99 ms",
            f"service+workers CPU ms/{unit}",
            f"raw consumer CPU ms/{unit}",
        ],
        rows,
    )
    return rows


# -- command line ------------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, unit: str) -> None:
    """The options every stream bench has, after its own."""
    parser.add_argument("--size", type=int, default=100, help=f"{unit} bytes (default 100)")
    add_paced_args(parser, 200.0, f"paced phase {unit}s/s (default 200)")
    parser.add_argument("--sample", type=int, default=300, help="most batch records read per phase for latency")
    add_service_args(parser, sync=False)
    parser.add_argument("--redis", default=os.environ.get("TRIGGERBUS_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    add_output_args(parser, "where the data directory goes")
    parser.add_argument("--raw-consumer", action="store_true", help=argparse.SUPPRESS)


def stream_main(
    args: argparse.Namespace,
    raw_consumer: Callable[[], Coroutine[Any, Any, None]],
    run: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
) -> None:
    """A stream bench's ``main``: its raw consumer with ``--raw-consumer``, else the bench."""
    if args.raw_consumer:
        helper_main(raw_consumer())
        return
    bench_main(run, args.json_out)
