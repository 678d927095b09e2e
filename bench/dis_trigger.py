"""DIS trigger benchmark: DIS put -> DIS trigger -> no-op function, against a raw Redis XREAD consumer.

Run ``python -m bench.dis_trigger --help``. A default run takes about a minute on 2 cores.
Nothing here asserts a speed: it measures Triggerbus and, in the same run, on the same Redis
stream and machine, with the same producer, a raw consumer, and prints the ratios.

What runs: ``python -m triggerbus.cli serve`` (embedded SQLite bus and store, fresh data dir,
``TRIGGERBUS_STREAMS_REDIS`` pointing at the machine's Redis with a key prefix of its own, deleted
afterwards) as a subprocess, with a Python function whose handler returns ``None``, and a DIS
stream of P partitions (default 1). The producer is the service's own put API
(``POST /v2/{project}/records``): puts of up to 500 records as fast as one client sends them
(burst) or one record per put at a steady rate (paced). Every record's data is ``"<seq> <epoch
s>"`` padded to ``--size`` bytes, so the function computes nothing: the async record of each batch
holds the event (the records, so their send times) and the attempt's end time.

* **Triggerbus**: a DIS trigger (TRIM_HORIZON, ``batch_size`` B, ``polling_interval``
  ``--polling-ms`` ms, serial or ``--concurrent``). Records/s is N divided by the time from the
  first put to the moment the trigger's committed position reaches the last record of every
  shard (polled every 50 ms): committed means the batches' invocations finished. Per-record
  latency is *attempt end - send time*, read back through the records API (at most ``--sample``
  records per phase, evenly spread).
* **Raw**: a subprocess that reads the same shards' Redis streams with ``XREAD BLOCK`` (count B),
  builds the same DIS event per shard batch and calls the same no-op handler in-process. That is
  the least a Redis-stream-to-function pipeline does: the physical limit here. It reads its *own*
  records, put with the same producer after the Triggerbus phases (the trigger is disabled by
  then), so both measure put-to-processed. It keeps no position and no records: everything
  Triggerbus adds (a durable hop over its bus, records, process isolation of the function,
  positions committed after terminal states, polling every ``--polling-ms``) is the gap.

The warm-up (100 records through the trigger) is not measured. CPU seconds of the service, its
worker processes and the raw consumer are read from ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bench.async_invoke import (
    NOOP_SOURCE,
    PROJECT,
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
from bench.kafka_trigger import Service, _cpu, _cpu_total, _pair, load_average, message, sent_at, step
from connectors.redis_streams import sequence_number

TRIGGER_TYPE = "DIS"
PUT_RECORDS = 500
POLL_S = 0.05
STALL_S = 60.0
WARMUP_RECORDS = 100


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


class DISService(Service):
    """The Kafka bench's HTTP access to the service, plus the DIS API and DIS triggers."""

    async def dis(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        async with self.http.request(method, self.base + path, json=body, params=params) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {text[:500]}")
            return json.loads(text) if text else None

    async def create_stream(self, name: str, partitions: int) -> str:
        body = await self.dis("POST", f"/v2/{PROJECT}/streams", {"stream_name": name, "partition_count": partitions})
        return str(body["stream_id"])

    async def put(self, stream: str, values: Sequence[bytes]) -> list[dict[str, str]]:
        records = [{"data": base64.b64encode(v).decode(), "partition_key": str(i)} for i, v in enumerate(values)]
        body = await self.dis("POST", f"/v2/{PROJECT}/records", {"stream_name": stream, "records": records})
        return list(body["records"])

    async def create_dis_trigger(self, stream: str, args: argparse.Namespace, batch: int) -> str:
        event_data = {
            "stream_name": stream,
            "sharditerator_type": "TRIM_HORIZON",
            "polling_interval": args.polling_ms,
            "polling_unit": "ms",
            "batch_size": batch,
            "is_serial": not args.concurrent,
            **({"concurrency": args.concurrency} if args.concurrent else {}),
        }
        body = await self.call(
            "POST", f"/triggers/{URN}", {"trigger_type_code": TRIGGER_TYPE, "event_data": event_data}
        )
        return str(body["trigger_id"])

    async def set_status(self, trigger_id: str, status: str) -> None:
        await self.call("PUT", f"/triggers/{URN}/{TRIGGER_TYPE}/{trigger_id}", {"trigger_status": status})

    async def state(self, trigger_id: str) -> dict[str, Any]:
        body = await self.call("GET", f"/triggers/{URN}/{TRIGGER_TYPE}/{trigger_id}")
        return dict(body.get("state") or {})


class Producer:
    """Puts records through the service's DIS API, as every DIS producer would."""

    def __init__(self, svc: DISService, stream: str, size: int) -> None:
        self.svc, self.stream, self.size = svc, stream, size
        self.seq = 0

    def _values(self, n: int) -> list[bytes]:
        values = [message(self.seq + i, self.size) for i in range(n)]
        self.seq += n
        return values

    async def burst(self, n: int) -> Produced:
        first, last_of = time.time(), {}
        for start in range(0, n, PUT_RECORDS):
            for placed in await self.svc.put(self.stream, self._values(min(PUT_RECORDS, n - start))):
                last_of[placed["partition_id"]] = placed["sequence_number"]
        end = time.time()
        return Produced(n, first, end, n / max(end - first, 1e-9), last_of)

    async def paced(self, rate: float, seconds: float) -> Produced:
        n = max(1, round(rate * seconds))
        start, first, last_of = time.perf_counter(), time.time(), {}
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            [placed] = await self.svc.put(self.stream, self._values(1))
            last_of[placed["partition_id"]] = placed["sequence_number"]
        end = time.time()
        return Produced(n, first, end, n / max(end - first, 1e-9), last_of)


# -- Triggerbus phases ----------------------------------------------------------------------------------


def _reached(committed: dict[str, str | None], targets: dict[str, str]) -> bool:
    return all(
        (committed.get(shard) or "") and int(committed[shard] or 0) >= int(seq) for shard, seq in targets.items()
    )


async def measure_trigger(
    svc: DISService,
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


async def read_latencies(svc: DISService, trigger_id: str, phase: Phase, seen: set[str], sample: int) -> None:
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
        for record in json.loads(detail["payload"])["Message"]["records"]:
            latencies.append((end - sent_at(base64.b64decode(record["data"]).decode())) * 1000)

    await asyncio.gather(*(one(r["request_id"]) for r in fresh))
    phase.latency_ms = Dist.of(latencies)


# -- the raw consumer (a subprocess: python -m bench.dis_trigger --raw-consumer ...) --------------------


async def raw_consumer_main(redis_url: str, keys: list[str], batch: int) -> None:
    """Report READY, then obey stdin, one JSON object a line.

    ``{"op": "consume", "n", "after": {key: id}}`` reads ``n`` records after those ids with ``XREAD
    BLOCK`` (``COUNT`` batch), builds one DIS event per shard batch, calls the no-op handler on it,
    and answers one JSON line: timings and per-record handler-return minus send time.
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
                answer = await client.xread(positions, count=batch, block=1000)
                for raw_key, entries in answer or []:
                    key = raw_key.decode()
                    if first_read is None:
                        first_read = time.time()
                    event = {
                        "ShardID": key.rsplit(":", 1)[1],
                        "Message": {
                            "next_partition_cursor": "",
                            "records": [
                                {
                                    "partition_key": fields[b"k"].decode(),
                                    "data": base64.b64encode(fields[b"d"]).decode(),
                                    "sequence_number": sequence_number(entry_id.decode()),
                                }
                                for entry_id, fields in entries
                            ],
                            "millis_behind_latest": "",
                        },
                        "Tag": "latest",
                        "StreamName": "raw",
                    }
                    handler(event, None)
                    done = time.time()
                    latencies += [(done - sent_at(fields[b"d"].decode())) * 1000 for _, fields in entries]
                    positions[key] = entries[-1][0].decode()
                    got += len(entries)
                    batches += 1
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


class RawConsumer:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, redis_url: str, keys: list[str], batch: int, log: Path) -> AsyncIterator[RawConsumer]:
        argv = [sys.executable, "-m", "bench.dis_trigger", "--raw-consumer", "--redis", redis_url]
        argv += ["--keys", ",".join(keys), "--batch", str(batch)]
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
            raise RuntimeError(f"the raw consumer exited with {await self.proc.wait()}; see its log")
        return dict(json.loads(line))

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


# -- main ---------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"tb-bench-dis-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="tb-bench-dis-", dir=args.tmp_dir, ignore_cleanup_errors=True) as name:
        tmp = Path(name)
        info = {
            "cpus": os.cpu_count(),
            "redis": args.redis,
            "workers": args.workers,
            "partitions": args.partitions,
            "record_bytes": args.size,
            "batch_size": args.batch,
            "polling": f"{args.polling_ms} ms",
            "mode": f"concurrent ({args.concurrency})" if args.concurrent else "serial",
            "paced": f"{args.paced_rate:g}/s for {args.paced_seconds:g} s",
            "loadavg_at_start": load_average(),
        }
        print("# Triggerbus DIS trigger benchmark\n")
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
                svc = DISService(http, f"http://127.0.0.1:{port}", pid)
                await svc.create_function()
                phases = await measure_all(args, svc, prefix, tmp)
        finally:
            keys = [k async for k in cleanup.scan_iter(match=f"{prefix}:*", count=500)]
            if keys:
                await cleanup.delete(*keys)
            await cleanup.aclose()
        step(f"done in {time.perf_counter() - started:.0f} s; load average now {load_average()}")
        table = report(phases)
        return {
            "command": " ".join(["python", "-m", "bench.dis_trigger", *sys.argv[1:]]),
            "machine": info,
            "phases": [asdict(p) for p in phases],
            "table": table,
        }


async def measure_all(args: argparse.Namespace, svc: DISService, prefix: str, tmp: Path) -> list[Phase]:
    seen: set[str] = set()
    step("warm-up")
    await svc.create_stream("bench-warmup", 1)
    warm_id = await svc.create_dis_trigger("bench-warmup", args, 1)
    warm = Producer(svc, "bench-warmup", args.size)
    await measure_trigger(svc, warm_id, "warm-up", lambda: warm.burst(WARMUP_RECORDS), WARMUP_RECORDS, seen, 1)
    await svc.set_status(warm_id, "DISABLED")

    stream = "bench"
    stream_id = await svc.create_stream(stream, args.partitions)
    producer = Producer(svc, stream, args.size)
    trigger_id = await svc.create_dis_trigger(stream, args, args.batch)
    paced_n = max(1, round(args.paced_rate * args.paced_seconds))
    step(f"Triggerbus paced: {paced_n} records")
    tb_paced = await measure_trigger(
        svc,
        trigger_id,
        "Triggerbus paced",
        lambda: producer.paced(args.paced_rate, args.paced_seconds),
        paced_n,
        seen,
        args.sample,
    )
    step(f"Triggerbus burst: {args.records} records")
    tb_burst = await measure_trigger(
        svc, trigger_id, "Triggerbus burst", lambda: producer.burst(args.records), args.records, seen, args.sample
    )
    await svc.set_status(trigger_id, "DISABLED")

    keys = [f"{prefix}:dis:{stream_id}:{i}" for i in range(args.partitions)]
    client = aioredis.Redis.from_url(args.redis)
    try:

        async def tips() -> dict[str, str]:
            out = {}
            for key in keys:
                newest = await client.xrevrange(key, count=1)
                out[key] = newest[0][0].decode() if newest else "0-0"
            return out

        async with RawConsumer.running(args.redis, keys, args.batch, tmp / "raw.log") as raw:
            step("raw paced")
            raw_paced = await raw.measure(
                "raw XREAD paced",
                paced_n,
                await tips(),
                lambda: producer.paced(args.paced_rate, args.paced_seconds),
                svc.pid,
            )
            step("raw burst")
            raw_burst = await raw.measure(
                "raw XREAD burst", args.records, await tips(), lambda: producer.burst(args.records), svc.pid
            )
    finally:
        await client.aclose()
    return [tb_paced, raw_paced, tb_burst, raw_burst]


def report(phases: Sequence[Phase]) -> list[list[str]]:
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
    print_table(
        [
            "phase",
            "records",
            "records/s",
            "vs raw",
            "put/s",
            "records/batch",
            "latency p50 / p99 ms",
            "service+workers CPU ms/record",
            "raw consumer CPU ms/record",
        ],
        rows,
    )
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dis_trigger",
        description="Measure DIS put -> DIS trigger -> no-op function against a raw Redis XREAD consumer.",
    )
    parser.add_argument("--records", "-n", type=int, default=20_000, help="burst size (default 20000)")
    parser.add_argument(
        "--batch", type=int, default=100, help="the trigger's batch_size, and the raw COUNT (default 100)"
    )
    parser.add_argument("--polling-ms", type=int, default=20, help="the trigger's polling_interval in ms (default 20)")
    parser.add_argument("--concurrent", action="store_true", help="is_serial false (default: serial)")
    parser.add_argument("--concurrency", type=int, default=10, help="batches in flight when --concurrent (default 10)")
    parser.add_argument("--partitions", "-p", type=int, default=1, help="partitions of the stream (default 1)")
    parser.add_argument("--size", type=int, default=100, help="record bytes (default 100)")
    parser.add_argument("--paced-rate", type=float, default=200.0, help="paced phase records/s (default 200)")
    parser.add_argument("--paced-seconds", type=float, default=3.0, help="paced phase length (default 3 s)")
    parser.add_argument("--sample", type=int, default=300, help="most batch records read per phase for latency")
    parser.add_argument("--workers", "-w", type=int, default=default_workers(), help="service worker processes")
    parser.add_argument("--redis", default=os.environ.get("TRIGGERBUS_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--tmp-dir", default=None, help="where the data directory goes (default: system temp dir)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write all results to this JSON file")
    parser.add_argument("--raw-consumer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keys", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.records, args.batch, args.polling_ms, args.partitions, args.size, args.sample, args.workers) < 1:
        parser.error("--records, --batch, --polling-ms, --partitions, --size, --sample and --workers must be >= 1")
    if not 1 <= args.batch <= 10000 or not 1 <= args.concurrency <= 80 or args.paced_rate <= 0:
        parser.error("--batch must be 1-10000, --concurrency 1-80, --paced-rate > 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C: stop the servers, clean up
    if args.raw_consumer:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(raw_consumer_main(args.redis, args.keys.split(","), args.batch))
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
