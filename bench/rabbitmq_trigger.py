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
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from bench._common import (
    add_output_args,
    add_paced_args,
    add_service_args,
    batch_sizes,
    bench_main,
    bench_parser,
    bench_tmp,
    fs_type,
    helper_main,
    load_average,
    machine_basics,
    noop_handler,
    num,
    paced_count,
    paced_info,
    pair,
    per_item_ms,
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
    Produced,
    RawProcess,
    RawRun,
    TriggerRun,
    TriggerService,
    commands,
    latency_cells,
    measure_phases,
    measure_raw,
    measure_trigger,
    message,
    read_records,
    running_service,
    say,
    say_consumed,
    warm_up_trigger,
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
        return await self._send(exchange, max(1, round(rate * seconds)), Pace(rate))


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
    handler = noop_handler()
    connection = await amqp_connect(broker, "triggerbus bench raw consumer")
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch_for(batch))
    source = await channel.get_queue(queue, ensure=True)
    batches = Batches(batch, window_ms / 1000)
    try:
        say({"ready": True})
        async for command in commands():
            if command["op"] != "consume":
                return
            want = int(command["n"])
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
            say_consumed(got, invoked, first_record, done)
    finally:
        await connection.close()


# -- Triggerbus ---------------------------------------------------------------------------------------


class RabbitService(TriggerService):
    """HTTP access to the service for RABBITMQ triggers."""

    trigger_type: ClassVar[str] = TRIGGER_TYPE

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
        return await self.add_trigger(event_data)

    async def wait_connected(self, trigger_id: str, timeout: float = 30.0) -> None:
        await self.wait_state(trigger_id, lambda s: bool(s.get("connected")), timeout, "the trigger did not connect")


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
    paced_n = paced_count(args)
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

    tb_paced, tb_burst = await measure_phases(args, svc, trigger_id, label, paced, burst, n, beam, seen)

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
    argv = ["bench.rabbitmq_trigger", "--raw-consumer", "--broker", args.broker]
    argv += ["--queue", raw_queue, "--batches", str(batch), "--window-ms", str(args.window_ms)]
    async with RawProcess.running(argv, tmp / f"raw-{batch}.log") as raw:

        async def measure(name: str, count: int, send: Callable[[], Coroutine[Any, Any, Produced]] | None) -> RawRun:
            """Live: ``send`` publishes while the raw consumer consumes; without, it drains the queue."""
            return await measure_raw(raw, name, {"op": "consume", "n": count}, send, beam)

        async def raw_burst() -> Produced:
            return await pub.burst(raw_exchange, n)

        async def raw_paced() -> Produced:
            return await pub.paced(raw_exchange, args.paced_rate, args.paced_seconds)

        rp = await measure(f"{label} raw paced", paced_n, raw_paced) if paced_n else None
        rb = await measure(f"{label} raw burst", n, raw_burst)
        await pub.burst(raw_exchange, n)  # the drain: the queue fills while nobody consumes
        rd = await measure(f"{label} raw drain", n, None)
    return BatchResult(batch, n, tb_burst, tb_drain, tb_paced, rb, rd, rp)


async def warm_up(args: argparse.Namespace, svc: RabbitService, res: Resources, pub: Publisher) -> None:
    """Batch size 1 on an exchange of its own: starts the workers and runs every code path once."""
    exchange = await res.fanout("warmup")
    trigger_id = await svc.create_trigger(args.broker, exchange, 1, args.window_ms)
    res.queues.append(queue_name(trigger_id))
    await svc.wait_connected(trigger_id)

    async def send() -> Produced:
        return await pub.burst(exchange, WARMUP_MESSAGES)

    await warm_up_trigger(svc, trigger_id, send, WARMUP_MESSAGES)
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
                num(b.rate),
                num(raw.rate),
                ratio(b.rate, raw.rate),
                num(b.produce_rate),
                f"{b.batches:,}",
                num(b.per_batch, 1),
            ]
        )
        d, rd = r.drain, r.raw_drain
        drain.append(
            [
                str(r.batch),
                f"{d.finished:,}/{r.messages:,}",
                num(d.rate),
                num(rd.rate),
                ratio(d.rate, rd.rate),
                num(d.per_batch, 1),
                num(d.server_cpu_s, 1),
                num(d.worker_cpu_s, 1),
                num(d.broker_cpu_s, 1),
                num(rd.broker_cpu_s, 1),
                num(per_item_ms(d.finished, d.server_cpu_s, d.worker_cpu_s), 3),
                num(per_item_ms(rd.messages, rd.consumer_cpu_s), 3),
            ]
        )
        p = r.paced
        latency.append(
            [
                str(r.batch),
                *latency_cells(r),
                pair(p.wait_ms if p else None),
                num(p.per_batch, 1) if p else "-",
                f"{b.latency_sample_records:,}/{b.batches:,}",
            ]
        )
    print_section(
        "Live burst: N messages, first publish -> all processed (ratio = Triggerbus / raw)",
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
    print_section(
        "Drain: N messages already in the queue, consumer started -> all processed (ratio = Triggerbus / raw)",
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
    print_section(
        "Latency per message, publish -> processed, p50 / p99 ms (Triggerbus: end of the attempt)",
        [
            "batch",
            *LATENCY_COLUMNS,
            "paced publish -> attempt start",
            "paced msgs/batch",
            "records read (burst)",
        ],
        latency,
    )
    return live, drain, latency


def machine_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    return {
        **machine_basics(),
        "aio_pika": aio_pika.__version__,
        "broker": f"RabbitMQ at {args.broker}",
        "synchronous": args.sync,
        "data_dir_fs": fs_type(tmp),
        "workers": args.workers,
        "message_bytes": args.size,
        "batch_window_ms": args.window_ms,
        "paced": paced_info(args),
        "loadavg_at_start": load_average(),
    }


# -- main ----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with bench_tmp("tb-bench-rmq-", args.tmp_dir) as tmp:
        info = machine_info(args, tmp)
        print_heading("RabbitMQ trigger", info)
        started = time.perf_counter()
        beam = broker_pid()
        service = running_service(
            RabbitService, tmp, TRIGGERBUS_SQLITE_SYNCHRONOUS=args.sync, TRIGGERBUS_MAX_WORKERS=str(args.workers)
        )
        connection = await amqp_connect(args.broker, "triggerbus bench publisher")
        res = Resources(connection)
        try:
            async with service as svc:
                pub = Publisher(connection, args.size)
                step("warm-up")
                await warm_up(args, svc, res, pub)
                results = [await run_batch(args, svc, res, pub, batch, beam, tmp) for batch in args.batches]
        finally:
            await res.cleanup()
            await connection.close()
        step_done(started)
        live, drain, latency = report(results)
        return run_results(
            "bench.rabbitmq_trigger",
            info,
            started,
            results=[asdict(r) for r in results],
            live_table=live,
            drain_table=drain,
            latency_table=latency,
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "bench.rabbitmq_trigger",
        "Measure RabbitMQ -> RABBITMQ trigger -> no-op function against a raw aio-pika consumer.",
    )
    parser.add_argument("--broker", default="127.0.0.1:5672", help="RabbitMQ host:port, guest/guest (default local)")
    parser.add_argument(
        "--messages", "-n", type=int, default=15_000, help="burst and drain size per batch size (default 15000)"
    )
    parser.add_argument(
        "--messages-batch1", type=int, default=3_000, help="burst and drain size at batch size 1 (default 3000)"
    )
    parser.add_argument(
        "--batches", type=batch_sizes(1000), default=[1, 100, 1000], help="batch sizes (default 1,100,1000)"
    )
    parser.add_argument(
        "--window-ms", type=int, default=100, help="batch_window_ms, also the raw consumer's (default 100)"
    )
    parser.add_argument("--size", type=int, default=100, help="message body bytes (default 100)")
    add_paced_args(parser, 200.0, "paced phase msg/s, 0 = off (default 200)")
    parser.add_argument("--sample", type=int, default=1000, help="most records read per phase for latency")
    add_service_args(parser, sync=True)
    add_output_args(parser, "where the data directory goes")
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
    if args.raw_consumer:
        helper_main(raw_consumer_main(args.broker, args.queue, args.batches[0], args.window_ms))
        return
    bench_main(lambda: run(args), args.json_out, "service stopped, exchanges and queues deleted")


if __name__ == "__main__":
    main()
