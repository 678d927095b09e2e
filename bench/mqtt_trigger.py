"""MQTT (IoTDA) trigger benchmark: Mosquitto -> IOTDA trigger -> no-op function, against a raw paho-mqtt consumer.

Run ``python -m bench.mqtt_trigger --help``. Nothing here asserts a speed: it measures Triggerbus
and, in the same run, on the same broker and machine, a raw paho-mqtt consumer, and prints the
ratios.

What runs: a Mosquitto broker of the bench's own (``mosquitto`` from the machine, on a free port,
no persistence, ``max_queued_messages 0`` = unbounded; ``--broker HOST:PORT`` uses another one --
the machine's shared broker keeps Mosquitto's default of 1000 queued messages per client and drops
the rest of a larger burst) and ``python -m triggerbus.cli serve`` (embedded SQLite bus and store,
fresh data dir) as subprocesses, with a Python function whose handler returns ``None``. The bench
creates an IOTDA trigger (MQTT 5, ``qos: 1``) on the topic ``$oc/devices/<id>/sys/messages/up``
and publishes to it with one paho-mqtt client (QoS 1, MQTT 5):

* **paced** -- a steady, low rate (default 200 messages/s for 3 s): the latency of the pipeline
  itself, without a backlog.
* **burst** -- N messages (default 5,000) as fast as the publisher gets them acknowledged.
  Messages/s is N divided by the time from the first publish to the moment the records API counts
  all N of the trigger's invocations SUCCESS (polled every 50 ms). IoTDA forwards every message
  on its own, so **every message is an invocation**: there is no batch size to vary.
* **drain** -- the trigger is disabled (its MQTT session stays on the broker and queues QoS 1
  messages), N messages are published, the trigger is enabled: messages/s is N divided by the
  time from the enable request to all N SUCCESS. The consume-side rate, without the publisher.

Every payload carries its publish time (``"<seq> <epoch s>"``, padded to ``--size`` bytes; not
JSON, so the event's ``notify_data.body.content`` is that text): each async record holds the
event and the attempt's start and end times, so per-message end-to-end latency is *attempt end -
publish time*, read back through the records API (at most ``--sample`` records per phase, evenly
spread).

Why this baseline: **a raw paho-mqtt consumer** (a subprocess like the service) with an MQTT 5
session of its own on a topic of its own, QoS 1, manual acks and the trigger's receive maximum:
per message it builds the same IoTDA event with the connector's own mapping
(``connectors.iotda.device_events``), calls the same no-op handler in-process, then PUBACKs.
That is the least an at-least-once MQTT-to-function pipeline must do with the same client
library against the same broker: the physical limit here. Everything Triggerbus adds -- the
durable bus hop before the PUBACK, records, the invoker, the function in a worker process -- is
the gap to it. The raw consumer gets the same paced load, the same burst and the same drain
(timed from its first message), after the Triggerbus phases.

The warm-up (300 messages on the trigger) is not measured. CPU seconds of the service, its
workers, the broker and the raw consumer come from ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench._common import (
    URN,
    Dist,
    add_output_args,
    add_paced_args,
    add_service_args,
    bench_main,
    bench_parser,
    bench_tmp,
    cpu_mark,
    cpu_since,
    cpu_split_since,
    free_port,
    fs_type,
    helper_main,
    iso_ts,
    load_average,
    machine_basics,
    noop_handler,
    num,
    paced_count,
    paced_info,
    pair,
    per_item_ms,
    poll_until,
    print_heading,
    print_section,
    ratio,
    run_results,
    step,
    step_done,
    stop_process,
)
from bench._triggers import (
    Pace,
    Produced,
    RawProcess,
    RawRun,
    TriggerRun,
    TriggerService,
    commands,
    count_statuses,
    for_each_attempt,
    measure_raw,
    message,
    new_records,
    running_service,
    say,
    say_consumed,
    sent_at,
)
from connectors.iotda import RECEIVE_MAXIMUM, HeaderDefaults, device_events

TRIGGER_TYPE = "IOTDA"
WARMUP_MESSAGES = 300
PUBLISH_WINDOW = 1000  # most unacknowledged publishes of a burst
PRODUCT = "benchprod"


def topic_for(device: str) -> str:
    return f"$oc/devices/{device}/sys/messages/up"


def split_broker(broker: str) -> tuple[str, int]:
    host, _, port = broker.rpartition(":")
    return host, int(port)


def paho_client(client_id: str) -> mqtt.Client:
    return mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def connect_and_wait(client: mqtt.Client, broker: str, props: Properties | None = None, timeout: float = 10) -> None:
    """Connect (MQTT 5, session kept), start paho's thread, block until CONNACK."""
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    host, port = split_broker(broker)
    client.connect(host, port, 30, clean_start=False, properties=props)
    client.loop_start()
    if not connected.wait(timeout):
        raise RuntimeError(f"no CONNACK from the MQTT broker at {broker}")


# -- the broker ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def own_broker(tmp: Path) -> AsyncIterator[tuple[str, int]]:
    """A Mosquitto of the bench's own on a free port: (host:port, pid); stopped afterwards."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nlog_dest stderr\nlog_type error\n"
    )
    with open(tmp / "mosquitto.log", "ab") as log:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {(tmp / 'mosquitto.log').read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        stop_process(proc)


def mosquitto_pid() -> int | None:
    """The pid of a local ``mosquitto`` (CPU accounting with ``--broker``; the first found); None if none."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "mosquitto":
                    return int(entry.name)
    return None


# -- publishing ---------------------------------------------------------------------------------------


class Publisher:
    """One paho-mqtt client publishing QoS 1 (MQTT 5); bursts keep up to PUBLISH_WINDOW unacknowledged."""

    def __init__(self, broker: str, size: int) -> None:
        self.size = size
        self.seq = 0
        self.client = paho_client(f"tb-bench-pub-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(PUBLISH_WINDOW)
        self.client.max_queued_messages_set(0)
        self._window = threading.Semaphore(PUBLISH_WINDOW)
        self._acked = 0
        self._cond = threading.Condition()
        self.client.on_publish = self._on_publish
        connect_and_wait(self.client, broker)

    def _on_publish(self, *_: Any) -> None:
        self._window.release()
        with self._cond:
            self._acked += 1
            self._cond.notify_all()

    def _send(self, topic: str, n: int, pace: Pace | None) -> Produced:
        """In a thread: publish ``n`` messages (paced if ``pace``), return when all are acknowledged."""
        with self._cond:
            target = self._acked + n
        first = time.time()
        for i in range(n):
            if pace is not None:
                delay = pace.start + i / pace.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            self._window.acquire()
            self.client.publish(topic, message(self.seq, self.size), qos=1)
            self.seq += 1
        with self._cond:
            self._cond.wait_for(lambda: self._acked >= target, timeout=120)
        last = time.time()
        return Produced(n, first, last, n / max(last - first, 1e-9), {}, {})

    async def burst(self, topic: str, n: int) -> Produced:
        return await asyncio.to_thread(self._send, topic, n, None)

    async def paced(self, topic: str, rate: float, seconds: float) -> Produced:
        return await asyncio.to_thread(self._send, topic, max(1, round(rate * seconds)), Pace(rate))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the raw consumer (a subprocess: python -m bench.mqtt_trigger --raw-consumer ...) -------------------


async def raw_consumer_main(broker: str, topic: str) -> None:
    """Report READY (subscribed), then obey stdin, one JSON object a line.

    ``{"op": "consume", "n"}`` lets the paho thread handle ``n`` messages: the IoTDA event by the
    connector's mapping, the no-op handler, then the PUBACK. It answers one JSON line: timings and,
    per message, handler return time minus publish time. ``{"op": "pause"}`` disconnects (the
    session stays and queues); a consume with ``"resume": true`` reconnects first; ``{"op": "exit"}`` leaves.
    """
    handler = noop_handler()
    defaults = HeaderDefaults(product_id=PRODUCT, app_id=None)
    lock = threading.Lock()
    # every message handled, in order: (received, handler returned, payload); a consume command takes the
    # next n, so messages that arrive before the command was read still count for it
    handled: list[tuple[float, float, str]] = []
    enough = threading.Event()
    want = [0]  # how many handled messages the current command waits for, counted from the start
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"tb-bench-raw-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )

    def on_message(c: mqtt.Client, _: Any, msg: mqtt.MQTTMessage) -> None:
        received = time.time()
        events = device_events(msg.topic, msg.payload, datetime.fromtimestamp(received, UTC), defaults)
        for event in events:
            handler(json.loads(event.event.dump_json()), None)
        finished = time.time()
        c.ack(msg.mid, msg.qos)
        with lock:
            handled.append((received, finished, msg.payload.decode()))
            if len(handled) >= want[0]:
                enough.set()

    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    connect_and_wait(client, broker, props)
    client.subscribe(topic, qos=1)
    if not subscribed.wait(10):
        raise RuntimeError("the raw consumer's subscription was not acknowledged")
    try:
        say({"ready": True})
        async for command in commands():
            op = command["op"]
            if op == "pause":
                client.disconnect()
                client.loop_stop()
                say({"paused": True})
                continue
            if op != "consume":
                return
            with lock:
                start = want[0]
                want[0] = start + int(command["n"])
                enough.clear()
                if len(handled) >= want[0]:
                    enough.set()
            if command.get("resume"):  # the drain: reconnect to the session the broker kept queueing for
                connect_and_wait(client, broker, props)
            while not await asyncio.to_thread(enough.wait, 0.5):  # short waits: SIGTERM ends this process
                pass
            with lock:
                taken = handled[start : want[0]]
            done = [(finished, [text]) for _, finished, text in taken]
            say_consumed(len(taken), len(taken), taken[0][0] if taken else None, done)
    finally:
        client.disconnect()
        client.loop_stop()


# -- Triggerbus ---------------------------------------------------------------------------------------


class IotdaService(TriggerService):
    """HTTP access to the service for IOTDA triggers."""

    trigger_type: ClassVar[str] = TRIGGER_TYPE

    async def create_trigger(self, broker: str, topic: str) -> str:
        event_data = {"topics": [topic], "broker_address": broker, "qos": 1, "product_id": PRODUCT}
        return await self.add_trigger(event_data)

    async def wait_subscribed(self, trigger_id: str, timeout: float = 30.0) -> None:
        await self.wait_state(trigger_id, lambda s: bool(s.get("subscribed")), timeout, "the trigger did not subscribe")

    async def succeeded(self, trigger_id: str) -> int:
        """How many of the trigger's invocations are SUCCESS (records API count)."""
        params = {"trigger_id": trigger_id, "status": "SUCCESS", "limit": "1"}
        body = await self.call("GET", f"/functions/{URN}/async-invocations", params=params)
        return int(body["count"])


async def measure_trigger(
    svc: IotdaService,
    trigger_id: str,
    name: str,
    produce: Callable[[], Coroutine[Any, Any, Produced]],
    n: int,
    broker_pid: int | None,
) -> TriggerRun:
    """Run ``produce`` (``n`` messages) and poll until the trigger's SUCCESS count grew by ``n``."""
    run = TriggerRun(name, n)
    before = await svc.succeeded(trigger_id)
    cpu_server, cpu_broker = cpu_mark(svc.pid), cpu_mark(broker_pid)
    bench_cpu = time.process_time()
    sender = asyncio.create_task(produce())
    done_at: list[float] = []

    async def probe() -> tuple[bool, int]:
        produced_all = sender.done()
        count = await svc.succeeded(trigger_id) - before
        if produced_all and count >= n:
            done_at.append(time.time())
        return bool(done_at), count

    try:
        finished = await poll_until(probe)
        sent = await sender
    finally:
        sender.cancel()
    run.server_cpu_s, run.worker_cpu_s = cpu_split_since(cpu_server, svc.pid)
    run.broker_cpu_s = cpu_since(cpu_broker, broker_pid)
    run.bench_cpu_s = time.process_time() - bench_cpu
    run.finished = await svc.succeeded(trigger_id) - before
    run.produce_rate = sent.rate
    if not finished:
        run.stalled = True
        step(f"!! {name}: stalled at {run.finished} of {n} SUCCESS")
        return run
    run.wall_s = done_at[0] - sent.first_send
    run.rate = n / run.wall_s
    return run


async def read_records(svc: IotdaService, trigger_id: str, run: TriggerRun, seen: set[str], sample: int) -> None:
    """Invocations and latencies of ``run`` from the trigger's records not in ``seen`` (which it extends)."""
    fresh = await new_records(svc, trigger_id, seen)
    run.batches = run.messages_in_records = len(fresh)
    run.per_batch = 1.0
    run.statuses = count_statuses(fresh)
    if set(run.statuses) - {"SUCCESS"} or len(fresh) != run.messages:
        step(f"!! {run.name}: {len(fresh)} records for {run.messages} messages, statuses {run.statuses}")
    latencies: list[float] = []
    waits: list[float] = []
    durations: list[float] = []

    def each(detail: dict[str, Any], attempt: dict[str, Any]) -> None:
        t = sent_at(str(json.loads(detail["payload"])["notify_data"]["body"]["content"]))
        latencies.append((iso_ts(attempt["end_time"]) - t) * 1000)
        waits.append((iso_ts(attempt["start_time"]) - t) * 1000)
        durations.append(float(attempt["duration_ms"]))

    run.latency_sample_records = await for_each_attempt(svc, fresh, sample, each)
    run.latency_ms, run.wait_ms, run.duration_ms = Dist.of(latencies), Dist.of(waits), Dist.of(durations)


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class Result:
    messages: int
    paced: TriggerRun | None
    burst: TriggerRun
    drain: TriggerRun
    raw_paced: RawRun | None
    raw_burst: RawRun
    raw_drain: RawRun


async def run_triggerbus(
    args: argparse.Namespace, svc: IotdaService, pub: Publisher, broker: str, broker_pid: int | None
) -> tuple[TriggerRun | None, TriggerRun, TriggerRun]:
    topic = topic_for(f"{PRODUCT}_{uuid.uuid4().hex[:8]}")
    trigger_id = await svc.create_trigger(broker, topic)
    await svc.wait_subscribed(trigger_id)
    seen: set[str] = set()

    async def warm() -> Produced:
        return await pub.burst(topic, WARMUP_MESSAGES)

    step(f"warm-up: {WARMUP_MESSAGES} messages")
    warm_run = await measure_trigger(svc, trigger_id, "warm-up", warm, WARMUP_MESSAGES, None)
    if warm_run.stalled:
        raise RuntimeError("the warm-up messages did not all finish; see the service log")
    await asyncio.sleep(1.0)  # redeliveries, if any, are the warm-up's
    warm_records = len(await new_records(svc, trigger_id, seen))
    if warm_records != WARMUP_MESSAGES:
        step(f"!! warm-up: {warm_records} invocations for {WARMUP_MESSAGES} messages (redelivered)")

    async def paced() -> Produced:
        return await pub.paced(topic, args.paced_rate, args.paced_seconds)

    async def burst() -> Produced:
        return await pub.burst(topic, args.messages)

    tb_paced = None
    if paced_count(args):
        step(f"Triggerbus paced, {paced_count(args)} messages at {args.paced_rate:g}/s")
        tb_paced = await measure_trigger(svc, trigger_id, "paced", paced, paced_count(args), broker_pid)
        await read_records(svc, trigger_id, tb_paced, seen, args.sample)
    step(f"Triggerbus burst of {args.messages}")
    tb_burst = await measure_trigger(svc, trigger_id, "burst", burst, args.messages, broker_pid)
    await read_records(svc, trigger_id, tb_burst, seen, args.sample)
    state = await svc.state(trigger_id)
    step(f"trigger state after the burst: received {state.get('received')}, delivered {state.get('delivered')}")

    step(f"Triggerbus drain of {args.messages}")
    await svc.set_status(trigger_id, "DISABLED")  # the session stays on the broker and queues
    await pub.burst(topic, args.messages)

    async def enable() -> Produced:
        started = time.time()
        await svc.set_status(trigger_id, "ACTIVE")
        return Produced(args.messages, started, started, math.nan, {}, {})

    tb_drain = await measure_trigger(svc, trigger_id, "drain", enable, args.messages, broker_pid)
    await read_records(svc, trigger_id, tb_drain, seen, min(args.sample, 200))
    await svc.delete_trigger(trigger_id)
    return tb_paced, tb_burst, tb_drain


async def run_raw(
    args: argparse.Namespace, pub: Publisher, broker: str, broker_pid: int | None, tmp: Path
) -> tuple[RawRun | None, RawRun, RawRun]:
    topic = topic_for(f"{PRODUCT}_raw{uuid.uuid4().hex[:8]}")
    argv = ["bench.mqtt_trigger", "--raw-consumer", "--broker", broker, "--topic", topic]
    async with RawProcess.running(argv, tmp / "raw.log") as raw:

        async def measure(
            name: str, count: int, send: Callable[[], Coroutine[Any, Any, Produced]] | None, resume: bool = False
        ) -> RawRun:
            return await measure_raw(raw, name, {"op": "consume", "n": count, "resume": resume}, send, broker_pid)

        async def raw_paced() -> Produced:
            return await pub.paced(topic, args.paced_rate, args.paced_seconds)

        async def raw_burst() -> Produced:
            return await pub.burst(topic, args.messages)

        n_paced = paced_count(args)
        step("raw consumer: paced, burst, drain")
        rp = await measure("raw paced", n_paced, raw_paced) if n_paced else None
        rb = await measure("raw burst", args.messages, raw_burst)
        await raw.send({"op": "pause"})
        await raw.answer(30)
        await pub.burst(topic, args.messages)  # queued on the broker for the raw consumer's session
        rd = await measure("raw drain", args.messages, None, resume=True)
    return rp, rb, rd


# -- report ---------------------------------------------------------------------------------------------


def report(r: Result) -> tuple[list[list[str]], list[list[str]]]:
    rows: list[list[str]] = []
    for label, tb, raw in (("burst (live)", r.burst, r.raw_burst), ("drain", r.drain, r.raw_drain)):
        rows.append(
            [
                label,
                f"{tb.finished:,}/{r.messages:,}",
                num(tb.rate),
                num(raw.rate),
                ratio(tb.rate, raw.rate),
                num(tb.produce_rate) if label.startswith("burst") else "-",
                num(tb.server_cpu_s, 1),
                num(tb.worker_cpu_s, 1),
                num(tb.broker_cpu_s, 1),
                num(per_item_ms(tb.finished, tb.server_cpu_s, tb.worker_cpu_s), 3),
                num(per_item_ms(raw.messages, raw.consumer_cpu_s), 3),
            ]
        )
    print_section(
        "Throughput: messages/s, every message one invocation (ratio = Triggerbus / raw)",
        [
            "phase",
            "messages",
            "Triggerbus msg/s",
            "raw msg/s",
            "ratio",
            "publish msg/s",
            "server CPU s",
            "workers CPU s",
            "broker CPU s",
            "CPU ms/msg server+workers",
            "CPU ms/msg raw",
        ],
        rows,
    )
    latency: list[list[str]] = []
    for label, tb, raw in (("paced", r.paced, r.raw_paced), ("burst", r.burst, r.raw_burst)):
        if tb is None:
            continue
        latency.append(
            [
                label,
                pair(tb.latency_ms),
                pair(raw.latency_ms if raw else None),
                ratio(
                    tb.latency_ms.p50 if tb.latency_ms else None, raw.latency_ms.p50 if raw and raw.latency_ms else None
                ),
                ratio(
                    tb.latency_ms.p99 if tb.latency_ms else None, raw.latency_ms.p99 if raw and raw.latency_ms else None
                ),
                pair(tb.wait_ms),
                num(tb.duration_ms.p50 if tb.duration_ms else None, 2),
                f"{tb.latency_sample_records:,}/{tb.batches:,}",
            ]
        )
    print_section(
        "Latency per message, publish -> processed, p50 / p99 ms (Triggerbus: end of the attempt)",
        [
            "phase",
            "Triggerbus",
            "raw",
            "p50 ratio",
            "p99 ratio",
            "publish -> attempt start",
            "attempt duration p50 ms",
            "records read",
        ],
        latency,
    )
    return rows, latency


def machine_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    version = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [shutil.which("mosquitto") or "mosquitto", "-h"], capture_output=True, text=True, timeout=5
        ).stdout
        version = out.splitlines()[0] if out else "?"
    return {
        **machine_basics(),
        "paho_mqtt": paho.mqtt.__version__,
        "broker": args.broker or f"own ({version}, no persistence, unbounded queues)",
        "synchronous": args.sync,
        "data_dir_fs": fs_type(tmp),
        "workers": args.workers,
        "message_bytes": args.size,
        "paced": paced_info(args),
        "loadavg_at_start": load_average(),
    }


@contextlib.asynccontextmanager
async def the_broker(args: argparse.Namespace, tmp: Path) -> AsyncIterator[tuple[str, int | None]]:
    if args.broker:
        yield args.broker, mosquitto_pid()
        return
    async with own_broker(tmp) as (address, pid):
        yield address, pid


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with bench_tmp("tb-bench-mqtt-", args.tmp_dir) as tmp:
        info = machine_info(args, tmp)
        print_heading("MQTT (IoTDA) trigger", info)
        started = time.perf_counter()
        async with the_broker(args, tmp) as (broker, broker_pid):
            service = running_service(
                IotdaService, tmp, TRIGGERBUS_SQLITE_SYNCHRONOUS=args.sync, TRIGGERBUS_MAX_WORKERS=str(args.workers)
            )
            pub = await asyncio.to_thread(Publisher, broker, args.size)
            try:
                async with service as svc:
                    tb_paced, tb_burst, tb_drain = await run_triggerbus(args, svc, pub, broker, broker_pid)
                rp, rb, rd = await run_raw(args, pub, broker, broker_pid, tmp)
            finally:
                pub.close()
        step_done(started)
        result = Result(args.messages, tb_paced, tb_burst, tb_drain, rp, rb, rd)
        rows, latency = report(result)
        return run_results(
            "bench.mqtt_trigger", info, started, result=asdict(result), throughput_table=rows, latency_table=latency
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "bench.mqtt_trigger", "Measure MQTT (Mosquitto) -> IOTDA trigger -> no-op function against a raw paho consumer."
    )
    parser.add_argument(
        "--broker", default="", help="MQTT broker host:port (default: a Mosquitto of the bench's own, unbounded queues)"
    )
    parser.add_argument("--messages", "-n", type=int, default=5_000, help="burst and drain size (default 5000)")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    add_paced_args(parser, 200.0, "paced phase msg/s, 0 = off (default 200)")
    parser.add_argument("--sample", type=int, default=1000, help="most records read per phase for latency")
    add_service_args(parser, sync=True)
    add_output_args(parser, "where the data directory goes")
    parser.add_argument("--raw-consumer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.messages, args.workers, args.sample, args.size) < 1:
        parser.error("--messages, --workers, --sample and --size must be >= 1")
    if args.paced_rate < 0 or args.paced_seconds <= 0:
        parser.error("--paced-rate must be >= 0, --paced-seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.raw_consumer:
        helper_main(raw_consumer_main(args.broker, args.topic))
        return
    bench_main(lambda: run(args), args.json_out, "service and broker stopped, temporary data removed")


if __name__ == "__main__":
    main()
