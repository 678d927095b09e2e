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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiohttp
import redis.asyncio as aioredis

from bench.async_invoke import (
    NOOP_SOURCE,
    ROOT,
    TOKEN,
    URN,
    Dist,
    _num,
    child_env,
    cpu_delta,
    cpu_snapshot,
    default_workers,
    free_port,
    print_table,
    server_process,
)
from bench.kafka_trigger import RawConsumer as KafkaRawConsumer
from bench.kafka_trigger import Service, _cpu, _cpu_total, _pair, load_average, message, step

POLL_S = 0.05
STALL_S = 60.0
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


def _iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


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


class StreamService(Service):
    """The Kafka bench's HTTP access to the service, plus the service's own APIs and one trigger type."""

    trigger_type: ClassVar[str]

    async def api(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        async with self.http.request(method, self.base + path, json=body, params=params) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {text[:500]}")
            return json.loads(text) if text else None

    async def add_trigger(self, event_data: dict[str, Any]) -> str:
        body = await self.call(
            "POST", f"/triggers/{URN}", {"trigger_type_code": self.trigger_type, "event_data": event_data}
        )
        return str(body["trigger_id"])

    async def set_status(self, trigger_id: str, status: str) -> None:
        await self.call("PUT", f"/triggers/{URN}/{self.trigger_type}/{trigger_id}", {"trigger_status": status})

    async def state(self, trigger_id: str) -> dict[str, Any]:
        body = await self.call("GET", f"/triggers/{URN}/{self.trigger_type}/{trigger_id}")
        return dict(body.get("state") or {})

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
        start, first, last_of = time.perf_counter(), time.time(), {}
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
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
    cpu = _cpu(svc.pid)
    sender = asyncio.create_task(produce())
    last_progress, last_committed = time.monotonic(), ""
    try:
        while True:
            state = await svc.state(trigger_id)
            now = time.time()
            committed = {s["shard_id"]: s["committed"] for s in state.get("shards") or []}
            if sender.done() and _reached(committed, sender.result().last):
                break
            marker = json.dumps(committed, sort_keys=True)
            if marker != last_committed:
                last_committed, last_progress = marker, time.monotonic()
            elif time.monotonic() - last_progress > STALL_S:
                phase.stalled = True
                print(f"!! {name}: stalled (committed {committed})", file=sys.stderr)
                return phase
            await asyncio.sleep(POLL_S)
        sent = sender.result()
    finally:
        sender.cancel()
    if cpu:
        phase.server_cpu_s, phase.worker_cpu_s = cpu_delta(cpu, cpu_snapshot(svc.pid), svc.pid)
    phase.wall_s = now - sent.first_put
    phase.rate = n / phase.wall_s
    phase.put_rate = sent.rate
    await read_latencies(svc, trigger_id, phase, seen, sample)
    return phase


async def read_latencies(svc: StreamService, trigger_id: str, phase: Phase, seen: set[str], sample: int) -> None:
    fresh = [r for r in await svc.records(trigger_id) if r["request_id"] not in seen]
    seen.update(r["request_id"] for r in fresh)
    phase.batches = len(fresh)
    in_records = sum(int((r.get("source") or {}).get("count") or 0) for r in fresh)
    phase.per_batch = in_records / len(fresh) if fresh else math.nan
    if in_records != phase.records:
        print(f"!! {phase.name}: the records hold {in_records} records, {phase.records} were put", file=sys.stderr)
    fresh.sort(key=lambda r: (r["created_time"], r["request_id"]))
    if len(fresh) > sample:
        fresh = [fresh[round(k * (len(fresh) - 1) / max(1, sample - 1))] for k in range(sample)]
    latencies: list[float] = []
    gate = asyncio.Semaphore(8)

    async def one(request_id: str) -> None:
        async with gate:
            detail = await svc.detail(request_id)
        attempts = detail.get("attempt_details") or []
        if detail["status"] != "SUCCESS" or not attempts or not attempts[-1]["end_time"]:
            return
        end = _iso(attempts[-1]["end_time"])
        latencies.extend((end - sent) * 1000 for sent in svc.sent_times(json.loads(detail["payload"])))

    await asyncio.gather(*(one(r["request_id"]) for r in fresh))
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
    namespace: dict[str, Any] = {}
    exec(compile(NOOP_SOURCE, "index.py", "exec"), namespace)
    handler: Callable[[Any, Any], Any] = namespace["handler"]
    client = aioredis.Redis.from_url(redis_url)
    loop = asyncio.get_running_loop()

    def say(body: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(body) + "\n")
        sys.stdout.flush()

    try:
        say({"ready": True})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or json.loads(line)["op"] != "consume":
                return
            order = json.loads(line)
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


class RawConsumer(KafkaRawConsumer):
    """The raw consumer subprocess (the Kafka bench's stdin/stdout driving), on a stream bench's streams."""

    @classmethod
    @contextlib.asynccontextmanager
    async def serving(cls, module: str, options: list[str], log: Path) -> AsyncIterator[RawConsumer]:
        argv = [sys.executable, "-m", module, "--raw-consumer", *options]
        with open(log, "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=child_env(),
                cwd=ROOT,
            )
        consumer = cls(proc)
        try:
            if not (await consumer.answer(30)).get("ready"):
                raise RuntimeError("the raw consumer did not get ready")
            yield consumer
        finally:
            await cls._stop(proc)

    async def measure(
        self,
        name: str,
        n: int,
        after: dict[str, str],
        produce: Callable[[], Coroutine[Any, Any, Produced]],
        service_pid: int,
    ) -> Phase:
        assert self.proc.stdin is not None
        cpu, service_cpu = _cpu(self.proc.pid), _cpu(service_pid)
        self.proc.stdin.write((json.dumps({"op": "consume", "n": n, "after": after}) + "\n").encode())
        await self.proc.stdin.drain()
        sent = await produce()
        answer = await self.answer(STALL_S + n / 100)
        phase = Phase(name, n, put_rate=sent.rate, batches=int(answer["batches"]))
        phase.wall_s = float(answer["done"]) - sent.first_put
        phase.rate = n / phase.wall_s
        phase.per_batch = n / phase.batches if phase.batches else math.nan
        phase.latency_ms = Dist(**answer["latency_ms"])
        phase.consumer_cpu_s = _cpu_total(cpu, self.proc.pid)
        if service_cpu:
            phase.server_cpu_s, phase.worker_cpu_s = cpu_delta(service_cpu, cpu_snapshot(service_pid), service_pid)
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
    paced_n = max(1, round(args.paced_rate * args.paced_seconds))
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

        options = ["--redis", args.redis, *raw_options]
        async with RawConsumer.serving(kind.module, options, tmp / "raw.log") as raw:
            step("raw paced")
            raw_paced = await raw.measure(
                "raw XREAD paced",
                paced_n,
                await tips(),
                lambda: producer.paced(args.paced_rate, args.paced_seconds),
                svc.pid,
            )
            step("raw burst")
            raw_burst = await raw.measure("raw XREAD burst", n, await tips(), lambda: producer.burst(n), svc.pid)
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
    with tempfile.TemporaryDirectory(
        prefix=f"tb-bench-{kind.name}-", dir=args.tmp_dir, ignore_cleanup_errors=True
    ) as name:
        tmp = Path(name)
        info = {
            "cpus": os.cpu_count(),
            "redis": args.redis,
            "workers": args.workers,
            **details,
            "paced": f"{args.paced_rate:g}/s for {args.paced_seconds:g} s",
            "loadavg_at_start": load_average(),
        }
        print(f"# Triggerbus {kind.title} trigger benchmark\n")
        print("  ".join(f"{k}={v}" for k, v in info.items()))
        port = free_port()
        argv = [sys.executable, "-m", "triggerbus.cli", "serve", "--data-dir", str(tmp / "data"), "--port", str(port)]
        env = child_env(
            TRIGGERBUS_TOKEN=TOKEN,
            TRIGGERBUS_MAX_WORKERS=str(args.workers),
            TRIGGERBUS_STREAMS_REDIS=args.redis,
            TRIGGERBUS_STREAMS_PREFIX=prefix,
        )
        started = time.perf_counter()
        cleanup = aioredis.Redis.from_url(args.redis)
        try:
            async with (
                server_process(argv, env, port, tmp / "triggerbus.log") as pid,
                aiohttp.ClientSession(
                    headers={"X-Auth-Token": TOKEN}, timeout=aiohttp.ClientTimeout(total=120)
                ) as http,
            ):
                svc = service(http, f"http://127.0.0.1:{port}", pid)
                await svc.create_function()
                phases = await measure_all(svc, prefix, tmp)
        finally:
            keys = [k async for k in cleanup.scan_iter(match=f"{prefix}:*", count=500)]
            if keys:
                await cleanup.delete(*keys)
            await cleanup.aclose()
        step(f"done in {time.perf_counter() - started:.0f} s; load average now {load_average()}")
        table = report(phases, kind)
        return {
            "command": " ".join(["python", "-m", kind.module, *sys.argv[1:]]),
            "machine": info,
            "phases": [asdict(p) for p in phases],
            "table": table,
        }


def report(phases: Sequence[Phase], kind: Kind) -> list[list[str]]:
    by_name = {p.name: p for p in phases}
    rows = []
    for p in phases:
        base = by_name.get(p.name.replace("Triggerbus", "raw XREAD"))
        ratio = f"{p.rate / base.rate:.3f}x" if base is not None and p is not base and base.rate else ""
        service = (
            "-" if p.server_cpu_s is None else f"{(p.server_cpu_s + (p.worker_cpu_s or 0)) * 1000 / p.records:.3f}"
        )
        raw = "-" if p.consumer_cpu_s is None else f"{p.consumer_cpu_s * 1000 / p.records:.3f}"
        rows.append(
            [
                p.name,
                f"{p.records:,}",
                _num(p.rate),
                ratio,
                _num(p.put_rate),
                _num(p.per_batch, 1),
                _pair(p.latency_ms),
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
    parser.add_argument("--paced-rate", type=float, default=200.0, help=f"paced phase {unit}s/s (default 200)")
    parser.add_argument("--paced-seconds", type=float, default=3.0, help="paced phase length (default 3 s)")
    parser.add_argument("--sample", type=int, default=300, help="most batch records read per phase for latency")
    parser.add_argument("--workers", "-w", type=int, default=default_workers(), help="service worker processes")
    parser.add_argument("--redis", default=os.environ.get("TRIGGERBUS_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--tmp-dir", default=None, help="where the data directory goes (default: system temp dir)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write all results to this JSON file")
    parser.add_argument("--raw-consumer", action="store_true", help=argparse.SUPPRESS)


def bench_main(
    args: argparse.Namespace,
    raw_consumer: Callable[[], Coroutine[Any, Any, None]],
    run: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
) -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C: stop the servers, clean up
    if args.raw_consumer:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(raw_consumer())
        return
    try:
        results = asyncio.run(run())
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, temporary data removed", file=sys.stderr)
        sys.exit(130)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json_out}")
