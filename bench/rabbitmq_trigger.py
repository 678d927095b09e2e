"""RabbitMQ trigger benchmark: RabbitMQ -> RABBITMQ trigger -> no-op function, against a raw aio-pika consumer.

Run ``python -m bench.rabbitmq_trigger --help``. A default run takes about 2 minutes on 2
cores. Nothing here asserts a speed: it measures Triggerbus and, in the same run, on the same
broker and machine, a raw aio-pika consumer, and prints the ratios.

What runs: the machine's RabbitMQ (``--broker``, default 127.0.0.1:5672, guest/guest; the bench
makes its own exchanges and queues, with unique names, and deletes them) and ``python -m
triggerbus.cli serve`` (embedded SQLite bus and store, fresh data dir) as a subprocess, with a
Python function whose handler returns ``None``. For each batch size (default 1, 100, 1000) the
bench creates a fanout exchange and a RABBITMQ trigger on it (``batch_size``,
``batch_window_ms``), and publishes persistent messages with publisher confirms:

* **paced** -- a steady, low rate (default 200 messages/s for 3 s): the latency of the pipeline
  itself, without a backlog.
* **burst** -- N messages (default 15,000; 3,000 at batch size 1, where every message is an
  invocation of its own) as fast as one aio-pika publisher gets them confirmed (up to 1,000
  unconfirmed). Messages/s is N divided by the time from the first publish to the moment the
  trigger's state counts all N messages finished (polled every 50 ms). When the consumer keeps
  up, this is the publisher's rate; under a burst, latency is mostly queueing.
* **drain** -- the trigger is disabled (its queue stays), N messages are published into the
  queue, the trigger is enabled: messages/s is N divided by the time from the enable request to
  all N finished. This is the consume-side rate, without the publisher in the way.

Every body carries its publish time (``"<seq> <epoch s>"``, padded to ``--size`` bytes), so the
function computes nothing: each batch's async record holds the event (hence the publish times)
and the attempt's start and end times. Per-message end-to-end latency is *attempt end - publish
time*, read back through the records API (at most ``--sample`` records per phase, evenly
spread).

Why this baseline: **a raw aio-pika consumer** (a subprocess like the service) on a durable
queue of its own, bound to a fanout exchange of its own, with the trigger's prefetch
(``max(100, 5 x batch)``): it collects ``batch`` deliveries (or what arrived within the same
batch window), calls the same no-op handler in-process on a RABBITMQ-shaped event, then acks
the batch with one ``multiple`` ack. That is the least an at-least-once RabbitMQ-to-function
pipeline must do, with the same client library against the same broker: the physical limit
here. Everything Triggerbus adds -- durable hops over its bus (``tb.stream`` -> batcher ->
``tb.invocations`` -> invoker), records, the function in a worker process, acks only after a
terminal state -- is the gap to it. The raw consumer gets the same paced load, the same burst
and the same drain (timed from its first delivery), after the Triggerbus phases.

The warm-up (a trigger of its own, batch size 1, 300 messages) is not measured. CPU seconds of
the service, its workers, the broker (``beam.smp``; other users of the broker count too) and
the raw consumer come from ``/proc``: the publisher, broker, service and workers share the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from bench.async_invoke import (
    NOOP_SOURCE,
    ROOT,
    TOKEN,
    URN,
    Dist,
    _num,
    _ratio,
    child_env,
    default_workers,
    free_port,
    fs_type,
    print_table,
    server_process,
)
from bench.kafka_trigger import (
    STALL_S,
    Produced,
    Service,
    TriggerRun,
    _cpu,
    _cpu_total,
    _pair,
    _per_msg_ms,
    load_average,
    measure_trigger,
    message,
    read_records,
    sent_at,
    step,
)
from connectors.rabbitmq import IN_FLIGHT_BATCHES, MAX_PREFETCH, MIN_PREFETCH, queue_name

TRIGGER_TYPE = "RABBITMQ"
WARMUP_MESSAGES = 300
CONFIRM_WINDOW = 1000  # most unconfirmed publishes of a burst


def prefetch_for(batch: int) -> int:
    """The trigger's prefetch for a batch size (see connectors/rabbitmq.py); the raw consumer uses it too."""
    return min(MAX_PREFETCH, max(MIN_PREFETCH, IN_FLIGHT_BATCHES * batch))


def broker_pid() -> int | None:
    """The RabbitMQ node's Erlang VM (``beam.smp``), for CPU accounting; None if not found."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if b"beam.smp" in cmdline and b"rabbit" in cmdline:
                return int(entry.name)
    return None


async def amqp_connect(broker: str, name: str) -> AbstractConnection:
    host, _, port = broker.rpartition(":")
    return await aio_pika.connect(
        host=host, port=int(port), login="guest", password="guest", client_properties={"connection_name": name}
    )


# -- publishing ---------------------------------------------------------------------------------------


class Publisher:
    """Persistent messages with publisher confirms; bursts keep up to CONFIRM_WINDOW unconfirmed."""

    def __init__(self, connection: AbstractConnection, size: int) -> None:
        self.connection = connection
        self.size = size
        self.seq = 0

    def _message(self) -> aio_pika.Message:
        body = message(self.seq, self.size)
        self.seq += 1
        return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

    async def _send(self, exchange: str, n: int, pace: Callable[[int], Coroutine[Any, Any, None]] | None) -> Produced:
        channel = await self.connection.channel(publisher_confirms=True)
        try:
            target = await channel.get_exchange(exchange, ensure=False)
            window = asyncio.Semaphore(CONFIRM_WINDOW)
            pending: set[asyncio.Task[Any]] = set()

            async def one(msg: aio_pika.Message) -> None:
                try:
                    await target.publish(msg, routing_key="")
                finally:
                    window.release()

            first = time.time()
            for i in range(n):
                if pace is not None:
                    await pace(i)
                await window.acquire()
                task = asyncio.create_task(one(self._message()))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            last = time.time()
        finally:
            await channel.close()
        return Produced(n, first, last, n / max(last - first, 1e-9), {}, {})

    async def burst(self, exchange: str, n: int) -> Produced:
        return await self._send(exchange, n, None)

    async def paced(self, exchange: str, rate: float, seconds: float) -> Produced:
        n = max(1, round(rate * seconds))
        start = time.perf_counter()

        async def pace(i: int) -> None:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

        return await self._send(exchange, n, pace)


# -- the raw consumer (a subprocess: python -m bench.rabbitmq_trigger --raw-consumer ...) -------------


class Batches:
    """Deliveries grouped like the trigger's batcher does: ``size`` of them, or what came within ``window_s``."""

    def __init__(self, size: int, window_s: float) -> None:
        self.size = size
        self.window_s = window_s
        self.buffer: list[AbstractIncomingMessage] = []
        self.some = asyncio.Event()
        self.full = asyncio.Event()

    async def add(self, message: AbstractIncomingMessage) -> None:
        self.buffer.append(message)
        self.some.set()
        if len(self.buffer) >= self.size:
            self.full.set()

    async def next(self) -> list[AbstractIncomingMessage]:
        await self.some.wait()
        if len(self.buffer) < self.size and self.window_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.full.wait(), self.window_s)
        taken, self.buffer = self.buffer[: self.size], self.buffer[self.size :]
        if not self.buffer:
            self.some.clear()
        if len(self.buffer) < self.size:
            self.full.clear()
        return taken


async def raw_consumer_main(broker: str, queue: str, batch: int, window_ms: int) -> None:
    """Report READY, then obey stdin, one JSON object a line.

    ``{"op": "consume", "n"}`` consumes ``n`` messages with the trigger's prefetch: batches of
    ``batch`` (or what arrived within ``window_ms`` of a batch's first message), the no-op
    handler on each batch's event, then one ``multiple`` ack. It answers one JSON line:
    timings and, per message, handler return time minus publish time. ``{"op": "exit"}`` leaves.
    """
    namespace: dict[str, Any] = {}
    exec(compile(NOOP_SOURCE, "index.py", "exec"), namespace)
    handler: Callable[[Any, Any], Any] = namespace["handler"]
    connection = await amqp_connect(broker, "triggerbus bench raw consumer")
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch_for(batch))
    source = await channel.get_queue(queue, ensure=True)
    batches = Batches(batch, window_ms / 1000)
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
            want = int(json.loads(line)["n"])
            tag = await source.consume(batches.add, no_ack=False)
            got = invoked = 0
            first_record: float | None = None
            done: list[tuple[float, list[str]]] = []
            while got < want:
                taken = await batches.next()
                if first_record is None:
                    first_record = time.time()
                texts = [m.body.decode() for m in taken]
                event = {
                    "event_version": "v1.0",
                    "event_time": int(time.time()),
                    "trigger_type": TRIGGER_TYPE,
                    "region": "local",
                    "records": [{"messages": texts, "instance_id": "raw", "exchange": "raw"}],
                }
                handler(event, None)
                finished = time.time()
                await taken[-1].ack(multiple=True)
                invoked += 1
                got += len(taken)
                done.append((finished, texts))
            await source.cancel(tag)
            latencies = [(t - sent_at(m)) * 1000 for t, texts in done for m in texts]
            say(
                {
                    "messages": got,
                    "batches": invoked,
                    "first_record": first_record,
                    "last_done": done[-1][0] if done else None,
                    "latency_ms": asdict(Dist.of(latencies)),
                }
            )
    finally:
        await connection.close()


@dataclass
class RawRun:
    name: str
    messages: int
    batches: int
    rate: float  # messages / (last done - first publish), or / (last done - first delivery) for a drain
    wall_s: float
    latency_ms: Dist | None  # publish -> handler returned (live runs only)
    consumer_cpu_s: float | None = None
    broker_cpu_s: float | None = None


class RawConsumer:
    """The raw consumer subprocess, driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, broker: str, queue: str, batch: int, window_ms: int, log: Path
    ) -> AsyncIterator[RawConsumer]:
        argv = [sys.executable, "-m", "bench.rabbitmq_trigger", "--raw-consumer", "--broker", broker]
        argv += ["--queue", queue, "--batches", str(batch), "--window-ms", str(window_ms)]
        with open(log, "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=child_env(),
                cwd=ROOT,
            )
        try:
            ready = await cls(proc).answer(30)
            if not ready.get("ready"):
                raise RuntimeError(f"the raw consumer did not get ready: {ready}")
            yield cls(proc)
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

    async def consume(self, n: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": "consume", "n": n}) + "\n").encode())
        await self.proc.stdin.drain()


# -- Triggerbus ---------------------------------------------------------------------------------------


class RabbitService(Service):
    """The Kafka bench's HTTP access to the service, for RABBITMQ triggers."""

    async def create_trigger(self, broker: str, exchange: str, batch: int, window_ms: int) -> str:
        event_data = {
            "instance_id": "bench",
            "connect_address": broker,
            "exchange_name": exchange,
            "access_user": "guest",
            "access_password": "guest",
            "batch_size": batch,
            "batch_window_ms": window_ms,
        }
        body = await self.call(
            "POST", f"/triggers/{URN}", {"trigger_type_code": TRIGGER_TYPE, "event_data": event_data}
        )
        return str(body["trigger_id"])

    async def set_status(self, trigger_id: str, status: str) -> None:
        await self.call("PUT", f"/triggers/{URN}/{TRIGGER_TYPE}/{trigger_id}", {"trigger_status": status})

    async def delete_trigger(self, trigger_id: str) -> None:
        await self.call("DELETE", f"/triggers/{URN}/{TRIGGER_TYPE}/{trigger_id}")

    async def state(self, trigger_id: str) -> dict[str, Any]:
        body = await self.call("GET", f"/triggers/{URN}/{TRIGGER_TYPE}/{trigger_id}")
        return dict(body.get("state") or {})

    async def wait_connected(self, trigger_id: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = await self.state(trigger_id)
            if state.get("connected"):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the trigger did not connect in {timeout} s: {state}")


class Resources:
    """Exchanges and queues the bench made on the shared broker: always deleted at the end."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.exchanges: list[str] = []
        self.queues: list[str] = []

    async def fanout(self, label: str) -> str:
        name = f"tb-bench-{label}-{uuid.uuid4().hex[:8]}"
        channel = await self.connection.channel()
        await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
        await channel.close()
        self.exchanges.append(name)
        return name

    async def queue_on(self, exchange: str) -> str:
        name = f"tb-bench-raw-{uuid.uuid4().hex[:8]}"
        channel = await self.connection.channel()
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key="")
        await channel.close()
        self.queues.append(name)
        return name

    async def cleanup(self) -> None:
        channel = await self.connection.channel()
        for queue in self.queues:
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        for exchange in self.exchanges:
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
        with contextlib.suppress(Exception):
            await channel.close()


# -- one batch size -------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    batch: int
    messages: int
    burst: TriggerRun
    drain: TriggerRun
    paced: TriggerRun | None
    raw_burst: RawRun
    raw_drain: RawRun
    raw_paced: RawRun | None


def raw_run(name: str, answer: dict[str, Any], start: float | None) -> RawRun:
    """``start``: time.time() of the first publish (live), or None to time from the first delivery (drain)."""
    begin = start if start is not None else answer["first_record"]
    wall = float(answer["last_done"]) - float(begin)
    latency = Dist(**answer["latency_ms"]) if start is not None else None
    return RawRun(name, int(answer["messages"]), int(answer["batches"]), answer["messages"] / wall, wall, latency)


async def run_batch(
    args: argparse.Namespace,
    svc: RabbitService,
    res: Resources,
    pub: Publisher,
    batch: int,
    beam: int | None,
    tmp: Path,
) -> BatchResult:
    n = args.messages_batch1 if batch == 1 else args.messages
    paced_n = max(1, round(args.paced_rate * args.paced_seconds)) if args.paced_rate > 0 else 0
    label = f"batch {batch}"
    exchange = await res.fanout(f"b{batch}")
    trigger_id = await svc.create_trigger(args.broker, exchange, batch, args.window_ms)
    res.queues.append(queue_name(trigger_id))
    await svc.wait_connected(trigger_id)
    seen: set[str] = set()

    async def burst() -> Produced:
        return await pub.burst(exchange, n)

    async def paced() -> Produced:
        return await pub.paced(exchange, args.paced_rate, args.paced_seconds)

    tb_paced: TriggerRun | None = None
    if paced_n:  # first, so that its latency is not that of a service still digesting a burst
        step(f"{label}: Triggerbus paced, {paced_n} messages at {args.paced_rate:g}/s")
        tb_paced = await measure_trigger(svc, trigger_id, f"{label} paced", paced, paced_n, beam)
        await read_records(svc, trigger_id, tb_paced, seen, args.sample)
    step(f"{label}: Triggerbus burst of {n}")
    tb_burst = await measure_trigger(svc, trigger_id, f"{label} burst", burst, n, beam)
    await read_records(svc, trigger_id, tb_burst, seen, args.sample)

    step(f"{label}: Triggerbus drain of {n}")
    await svc.set_status(trigger_id, "DISABLED")  # the queue stays and fills
    await pub.burst(exchange, n)

    async def enable() -> Produced:
        started = time.time()
        await svc.set_status(trigger_id, "ACTIVE")
        return Produced(n, started, started, math.nan, {}, {})

    tb_drain = await measure_trigger(svc, trigger_id, f"{label} drain", enable, n, beam)
    await read_records(svc, trigger_id, tb_drain, seen, min(args.sample, 100))
    await svc.delete_trigger(trigger_id)  # its queue goes with it

    step(f"{label}: raw consumer")
    raw_exchange = await res.fanout(f"raw{batch}")
    raw_queue = await res.queue_on(raw_exchange)
    async with RawConsumer.running(args.broker, raw_queue, batch, args.window_ms, tmp / f"raw-{batch}.log") as raw:
        raw_pid = raw.proc.pid

        async def measure_raw(name: str, count: int, send: Callable[[], Coroutine[Any, Any, Produced]]) -> RawRun:
            """Live: ``send`` publishes while the raw consumer consumes."""
            cpu_raw, cpu_beam = _cpu(raw_pid), _cpu(beam)
            await raw.consume(count)
            sent = await send()
            result = raw_run(name, await raw.answer(STALL_S + count / 100), sent.first_send)
            result.consumer_cpu_s, result.broker_cpu_s = _cpu_total(cpu_raw, raw_pid), _cpu_total(cpu_beam, beam)
            return result

        async def raw_burst() -> Produced:
            return await pub.burst(raw_exchange, n)

        async def raw_paced() -> Produced:
            return await pub.paced(raw_exchange, args.paced_rate, args.paced_seconds)

        rp = await measure_raw(f"{label} raw paced", paced_n, raw_paced) if paced_n else None
        rb = await measure_raw(f"{label} raw burst", n, raw_burst)
        await pub.burst(raw_exchange, n)  # the drain: the queue fills while nobody consumes
        cpu_raw = _cpu(raw_pid)
        await raw.consume(n)
        cpu_beam = _cpu(beam)
        rd = raw_run(f"{label} raw drain", await raw.answer(STALL_S + n / 100), None)
        rd.consumer_cpu_s, rd.broker_cpu_s = _cpu_total(cpu_raw, raw_pid), _cpu_total(cpu_beam, beam)
    return BatchResult(batch, n, tb_burst, tb_drain, tb_paced, rb, rd, rp)


async def warm_up(args: argparse.Namespace, svc: RabbitService, res: Resources, pub: Publisher) -> None:
    """Batch size 1 on an exchange of its own: starts the workers and runs every code path once."""
    exchange = await res.fanout("warmup")
    trigger_id = await svc.create_trigger(args.broker, exchange, 1, args.window_ms)
    res.queues.append(queue_name(trigger_id))
    await svc.wait_connected(trigger_id)

    async def send() -> Produced:
        return await pub.burst(exchange, WARMUP_MESSAGES)

    run = await measure_trigger(svc, trigger_id, "warm-up", send, WARMUP_MESSAGES, None)
    if run.stalled:
        raise RuntimeError("the warm-up messages did not all finish; see the service log")
    await svc.delete_trigger(trigger_id)


# -- report --------------------------------------------------------------------------------------------


def report(results: Sequence[BatchResult]) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    live: list[list[str]] = []
    drain: list[list[str]] = []
    latency: list[list[str]] = []
    for r in results:
        b, raw = r.burst, r.raw_burst
        live.append(
            [
                str(r.batch),
                f"{b.finished:,}/{r.messages:,}",
                _num(b.rate),
                _num(raw.rate),
                _ratio(b.rate, raw.rate),
                _num(b.produce_rate),
                f"{b.batches:,}",
                _num(b.per_batch, 1),
            ]
        )
        d, rd = r.drain, r.raw_drain
        drain.append(
            [
                str(r.batch),
                f"{d.finished:,}/{r.messages:,}",
                _num(d.rate),
                _num(rd.rate),
                _ratio(d.rate, rd.rate),
                _num(d.per_batch, 1),
                _num(d.server_cpu_s, 1),
                _num(d.worker_cpu_s, 1),
                _num(d.broker_cpu_s, 1),
                _num(rd.broker_cpu_s, 1),
                _num(_per_msg_ms(d.finished, d.server_cpu_s, d.worker_cpu_s), 3),
                _num(_per_msg_ms(rd.messages, rd.consumer_cpu_s), 3),
            ]
        )
        p, rp = r.paced, r.raw_paced
        latency.append(
            [
                str(r.batch),
                _pair(b.latency_ms),
                _pair(raw.latency_ms),
                _pair(p.latency_ms if p else None),
                _pair(rp.latency_ms if rp else None),
                _pair(p.wait_ms if p else None),
                _num(p.per_batch, 1) if p else "-",
                f"{b.latency_sample_records:,}/{b.batches:,}",
            ]
        )
    print()
    print("## Live burst: N messages, first publish -> all processed (ratio = Triggerbus / raw)")
    print()
    print_table(
        [
            "batch",
            "messages",
            "Triggerbus msg/s",
            "raw msg/s",
            "ratio",
            "publish msg/s",
            "batches invoked",
            "msgs/batch",
        ],
        live,
    )
    print()
    print("## Drain: N messages already in the queue, consumer started -> all processed (ratio = Triggerbus / raw)")
    print()
    print_table(
        [
            "batch",
            "messages",
            "Triggerbus msg/s",
            "raw msg/s",
            "ratio",
            "msgs/batch",
            "server CPU s",
            "workers CPU s",
            "broker CPU s (TB)",
            "broker CPU s (raw)",
            "CPU ms/msg server+workers",
            "CPU ms/msg raw",
        ],
        drain,
    )
    print()
    print("## Latency per message, publish -> processed, p50 / p99 ms (Triggerbus: end of the attempt)")
    print()
    print_table(
        [
            "batch",
            "burst Triggerbus",
            "burst raw",
            "paced Triggerbus",
            "paced raw",
            "paced publish -> attempt start",
            "paced msgs/batch",
            "records read (burst)",
        ],
        latency,
    )
    return live, drain, latency


def machine_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "aio_pika": aio_pika.__version__,
        "broker": f"RabbitMQ at {args.broker}",
        "synchronous": args.sync,
        "data_dir_fs": fs_type(tmp),
        "workers": args.workers,
        "message_bytes": args.size,
        "batch_window_ms": args.window_ms,
        "paced": f"{args.paced_rate:g}/s for {args.paced_seconds:g} s" if args.paced_rate > 0 else "off",
        "loadavg_at_start": load_average(),
    }


# -- main ----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tb-bench-rmq-", dir=args.tmp_dir, ignore_cleanup_errors=True) as name:
        tmp = Path(name)
        info = machine_info(args, tmp)
        print("# Triggerbus RabbitMQ trigger benchmark")
        print()
        print("  ".join(f"{k}={v}" for k, v in info.items()))
        started = time.perf_counter()
        beam = broker_pid()
        port = free_port()
        argv = [sys.executable, "-m", "triggerbus.cli", "serve", "--data-dir", str(tmp / "triggerbus-data")]
        argv += ["--port", str(port)]
        env = child_env(
            TRIGGERBUS_TOKEN=TOKEN, TRIGGERBUS_SQLITE_SYNCHRONOUS=args.sync, TRIGGERBUS_MAX_WORKERS=str(args.workers)
        )
        connection = await amqp_connect(args.broker, "triggerbus bench publisher")
        res = Resources(connection)
        try:
            async with (
                server_process(argv, env, port, tmp / "triggerbus.log") as pid,
                aiohttp.ClientSession(
                    headers={"X-Auth-Token": TOKEN}, timeout=aiohttp.ClientTimeout(total=120)
                ) as http,
            ):
                svc = RabbitService(http, f"http://127.0.0.1:{port}", pid)
                pub = Publisher(connection, args.size)
                await svc.create_function()
                step("warm-up")
                await warm_up(args, svc, res, pub)
                results = [await run_batch(args, svc, res, pub, batch, beam, tmp) for batch in args.batches]
        finally:
            await res.cleanup()
            await connection.close()
        step(f"done in {time.perf_counter() - started:.0f} s; load average now {load_average()}")
        live, drain, latency = report(results)
        return {
            "command": " ".join(["python", "-m", "bench.rabbitmq_trigger", *sys.argv[1:]]),
            "machine": info,
            "results": [asdict(r) for r in results],
            "live_table": live,
            "drain_table": drain,
            "latency_table": latency,
            "seconds": time.perf_counter() - started,
        }


def _batches(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(not 1 <= v <= 1000 for v in values):
        raise argparse.ArgumentTypeError("batch sizes are integers between 1 and 1000, comma-separated")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rabbitmq_trigger",
        description="Measure RabbitMQ -> RABBITMQ trigger -> no-op function against a raw aio-pika consumer.",
    )
    parser.add_argument("--broker", default="127.0.0.1:5672", help="RabbitMQ host:port, guest/guest (default local)")
    parser.add_argument(
        "--messages", "-n", type=int, default=15_000, help="burst and drain size per batch size (default 15000)"
    )
    parser.add_argument(
        "--messages-batch1", type=int, default=3_000, help="burst and drain size at batch size 1 (default 3000)"
    )
    parser.add_argument("--batches", type=_batches, default=[1, 100, 1000], help="batch sizes (default 1,100,1000)")
    parser.add_argument(
        "--window-ms", type=int, default=100, help="batch_window_ms, also the raw consumer's (default 100)"
    )
    parser.add_argument("--size", type=int, default=100, help="message body bytes (default 100)")
    parser.add_argument("--paced-rate", type=float, default=200.0, help="paced phase msg/s, 0 = off (default 200)")
    parser.add_argument("--paced-seconds", type=float, default=3.0, help="paced phase length (default 3 s)")
    parser.add_argument("--sample", type=int, default=1000, help="most records read per phase for latency")
    parser.add_argument("--workers", "-w", type=int, default=default_workers(), help="service worker processes")
    parser.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL", help="SQLite synchronous (default FULL)")
    parser.add_argument("--tmp-dir", default=None, help="where the data directory goes (default: system temp dir)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write all results to this JSON file")
    parser.add_argument("--raw-consumer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--queue", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.messages, args.messages_batch1, args.workers, args.sample, args.size) < 1:
        parser.error("--messages, --messages-batch1, --workers, --sample and --size must be >= 1")
    if args.window_ms < 0 or args.paced_rate < 0 or args.paced_seconds <= 0:
        parser.error("--window-ms and --paced-rate must be >= 0, --paced-seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C: stop the service, clean up
    if args.raw_consumer:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(raw_consumer_main(args.broker, args.queue, args.batches[0], args.window_ms))
        return
    try:
        results = asyncio.run(run(args))
    except KeyboardInterrupt:
        print("\ninterrupted: service stopped, exchanges and queues deleted", file=sys.stderr)
        sys.exit(130)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json_out}")


if __name__ == "__main__":
    main()
