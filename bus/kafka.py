"""The bus on Kafka, with faust-streaming: for when one machine is not enough.

Same contract as the embedded bus (see :mod:`bus.base`), with these mappings:

* **Topics** are Kafka topics; a message's key picks its partition, so one function's
  invocations (key = URN) keep their order within a partition.
* **Subscriptions** are Faust agents on the service's consumer group (the Faust app
  id). Every service process joins the group, so partitions are shared out, and the
  partitions of a process that dies are taken over by the others. Each agent reads
  with ``stream.noack().noack_take(max, within=...)`` and hands the events to the
  consumer code; an event is acked only when that code calls ``ack`` — that is, when
  the invocation reached a terminal state. Faust commits the highest *contiguous*
  acked offset of each partition, so a crash replays what was not finished
  (at-least-once), never skips it.
* **Delays** (``deliver_at``, used for retries with backoff) do not hold the partition
  of the event that failed: the message goes to a *delay tier* topic
  (``tb.delay.1s``, ``5s``, ``30s``, ``2m``, ``10m``, ``1h``) chosen as the longest tier
  not longer than the remaining delay. Every message of a tier waits exactly the
  tier's delay, so each tier is a FIFO whose head is always the next one due; its
  mover sleeps until the head is due, then forwards the message to the next tier (or,
  under a second from due, to its target topic) and acks it. A retry 5 minutes out
  hops 2m -> 2m -> 30s -> 30s -> 5s ... and arrives within about a second of its time.
* **Publishing** waits for the broker's acknowledgement (``acks=all``). Unlike the
  embedded bus, a multi-message publish is not atomic (Kafka without transactions):
  on a failure some messages may already be written, and a retry duplicates them.
  Consumers are idempotent by request id, so this stays at-least-once.

Known difference from the embedded bus: topics are declared up front (Faust agents
cannot be added to a running consumer without a rebalance), so the invoker's
per-function overflow lanes are not used on Kafka (see ``dynamic_topics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bus.aio import stop_tasks
from bus.base import DEFAULT_PARTITIONS, Bus, Message, Outgoing, Subscription

log = logging.getLogger(__name__)

# (tier name, delay in seconds), longest first
DELAY_TIERS: tuple[tuple[str, float], ...] = (
    ("1h", 3600.0),
    ("10m", 600.0),
    ("2m", 120.0),
    ("30s", 30.0),
    ("5s", 5.0),
    ("1s", 1.0),
)
DELAY_PREFIX = "tb.delay."
H_DUE = "tb-due"
H_TARGET = "tb-target"
H_KEY = "tb-key"
H_TIER_DUE = "tb-tier-due"
_INTERNAL_HEADERS = (H_DUE, H_TARGET, H_KEY, H_TIER_DUE)


@dataclass(slots=True)
class TopicSpec:
    name: str
    partitions: int


class KafkaBus(Bus):
    """A :class:`Bus` on Kafka via faust-streaming. Subscribe before :meth:`ready`."""

    dynamic_topics = False

    def __init__(
        self,
        bootstrap: str,
        *,
        app_id: str = "triggerbus",
        partitions: int = DEFAULT_PARTITIONS,
        topics: Sequence[str] = (),
        session_timeout_s: float = 10.0,
        heartbeat_s: float = 3.0,
        commit_interval_s: float = 0.2,
        fetch_max_wait_ms: int | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
        topic_prefix: str | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.app_id = app_id
        self.default_partitions = partitions
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.session_timeout_s = session_timeout_s
        # Several deployments (or test runs) may share a cluster: each one's topics are its own.
        self.topic_prefix = f"{app_id}." if topic_prefix is None else topic_prefix
        self._declared: dict[str, TopicSpec] = {}
        self.app = faust.App(
            app_id,
            broker=f"kafka://{bootstrap}",
            value_serializer="raw",
            key_serializer="raw",
            web_enabled=False,
            store="memory://",
            processing_guarantee="at_least_once",
            consumer_auto_offset_reset="earliest",
            topic_partitions=partitions,
            topic_allow_declare=True,
            broker_session_timeout=session_timeout_s,
            broker_heartbeat_interval=heartbeat_s,
            broker_commit_interval=commit_interval_s,
            broker_commit_every=100,
            producer_acks=-1,
            producer_max_request_size=max_message_bytes,
            consumer_max_fetch_size=max_message_bytes,
            stream_wait_empty=False,
            stream_buffer_maxsize=1000,
            loghandlers=[],
        )
        self._faust_topics: dict[str, faust.TopicT] = {}
        for name in topics:
            self.declare(name)
        for tier, _ in DELAY_TIERS:
            self.declare(DELAY_PREFIX + tier, partitions=1)
        self._subscriptions: list[KafkaSubscription] = []
        self._ready = asyncio.Event()
        self._started = False
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._moved = 0
        self._broadcasts: list[asyncio.Task[None]] = []

    # -- topics --------------------------------------------------------------------------

    def declare(self, name: str, partitions: int | None = None) -> faust.TopicT:
        topic = self._faust_topics.get(name)
        if topic is None:
            count = partitions or self.default_partitions
            topic = self.app.topic(self.physical(name), partitions=count, key_type=bytes, value_type=bytes)
            self._faust_topics[name] = topic
            self._declared[name] = TopicSpec(name, count)
        return topic

    def physical(self, name: str) -> str:
        """The Kafka topic behind a bus topic name."""
        return self.topic_prefix + name

    def logical(self, physical: str) -> str:
        return physical.removeprefix(self.topic_prefix)

    async def topics(self) -> list[str]:
        return sorted(self._declared)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing runs yet: components subscribe first, then the service calls :meth:`ready`."""
        for tier, delay in DELAY_TIERS:
            self._add_delay_mover(DELAY_PREFIX + tier, delay)

    async def ready(self) -> None:
        if self._started:
            return
        self._started = True
        await self.app.start()
        if self.fetch_max_wait_ms is not None:
            self._tune_fetch_wait()
        self._ready.set()
        if self._subscriptions:
            await self._joined(timeout_s=max(30.0, 3 * self.session_timeout_s))

    async def _joined(self, timeout_s: float) -> None:
        """Wait until the group gave this member its partitions, so the first events are not
        held up by the join (a consumer group takes a few seconds to form). Never fails: a
        member that got nothing, or a slow group, just starts consuming later."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.app.rebalancing and self.app.consumer.assignment():
                return
            await asyncio.sleep(0.05)
        log.warning("the Kafka consumer group has not assigned partitions after %.0f s; going on", timeout_s)

    def _tune_fetch_wait(self) -> None:
        """Lower the consumer's long-poll wait (Faust fixes it at 1.5 s).

        On Apache Kafka a waiting fetch returns as soon as data arrives, so this is only
        a latency knob for brokers that answer at the deadline (e.g. tansu in tests).
        """
        thread = getattr(self.app.consumer, "_thread", None)
        consumer = getattr(thread, "_consumer", None)
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = self.fetch_max_wait_ms

    async def close(self) -> None:
        await stop_tasks(*self._broadcasts)
        for sub in list(self._subscriptions):
            await sub.close()
        if self._started:
            with contextlib.suppress(Exception):
                await self.app.consumer.commit()
            await self.app.stop()
        for client in (self._admin, self._offsets):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close() if isinstance(client, AIOKafkaAdminClient) else await client.stop()

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, *messages: Outgoing) -> None:
        if not messages:
            return
        if not self._started:
            await self.ready()
        now = time.time()
        pending = []
        for m in messages:
            if m.deliver_at is not None and m.deliver_at - now >= 0.05:
                pending.append(await self._send_delayed(m.topic, m.key, m.value, m.headers, m.deliver_at, now))
            else:
                pending.append(await self._send(m.topic, m.key, m.value, m.headers))
        for future in pending:
            await future  # broker acknowledged (acks=all)

    async def _send(self, topic: str, key: str | None, value: bytes, headers: dict[str, str]) -> Any:
        return await self.declare(topic).send(
            key=key.encode() if key is not None else None,
            value=value,
            headers={k: v.encode() for k, v in headers.items()},
            force=True,  # never wait for the "current event" (Faust attachments)
        )

    async def _send_delayed(
        self, topic: str, key: str | None, value: bytes, headers: dict[str, str], due: float, now: float
    ) -> Any:
        remaining = due - now
        tier, delay = next(((t, d) for t, d in DELAY_TIERS if d <= remaining), DELAY_TIERS[-1])
        internal = {
            **{k: v for k, v in headers.items() if k not in _INTERNAL_HEADERS},
            H_DUE: repr(due),
            H_TARGET: topic,
            H_TIER_DUE: repr(now + min(delay, remaining)),
        }
        if key is not None:
            internal[H_KEY] = key
        return await self._send(DELAY_PREFIX + tier, key, value, internal)

    def _add_delay_mover(self, topic_name: str, delay: float) -> None:
        topic = self.declare(topic_name, partitions=1)

        async def mover(stream: Any) -> AsyncIterator[None]:  # a faust.Stream (StreamT lacks noack)
            async for event in stream.noack().events():
                headers = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in event.headers.items()}
                tier_due = float(headers.get(H_TIER_DUE, "0"))
                wait = tier_due - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                due = float(headers.get(H_DUE, "0"))
                target = headers.get(H_TARGET, "")
                key = headers.get(H_KEY)
                user_headers = {k: v for k, v in headers.items() if k not in _INTERNAL_HEADERS}
                value = event.value if isinstance(event.value, bytes) else bytes(event.value or b"")
                remaining = due - time.time()
                if remaining >= DELAY_TIERS[-1][1]:
                    await (await self._send_delayed(target, key, value, user_headers, due, time.time()))
                else:
                    if remaining > 0:
                        await asyncio.sleep(remaining)
                    await (await self._send(target, key, value, user_headers))
                    self._moved += 1
                event.ack()
                yield None

        self.app.agent(topic, name=f"triggerbus.delay.{topic_name}")(mover)

    # -- consuming --------------------------------------------------------------------------------

    def subscribe(self, group: str, topics: Sequence[str], *, max_in_flight: int = 1000) -> Subscription:
        if self._started:
            raise RuntimeError("subscribe before ready(): a running Faust consumer cannot add agents")
        sub = KafkaSubscription(self, group, list(topics), max_in_flight)
        self._subscriptions.append(sub)
        return sub

    def listen_broadcast(self, topic: str, handler: Callable[[Message], None]) -> None:
        """Read *every* message published to ``topic`` from now on, in this process.

        A plain consumer without a group (all partitions assigned, starting at the end),
        for messages every process must see, such as invocation completions.
        """
        self.declare(topic)
        self._broadcasts.append(asyncio.create_task(self._broadcast_loop(topic, handler), name=f"broadcast-{topic}"))

    async def _ensure_topic(self, topic: str) -> None:
        admin, _ = await self._clients()
        spec = self._declared.get(topic) or TopicSpec(topic, self.default_partitions)
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [NewTopic(self.physical(topic), num_partitions=spec.partitions, replication_factor=1)]
            )

    async def _broadcast_loop(self, topic: str, handler: Callable[[Message], None]) -> None:
        await self._ready.wait()
        await self._ensure_topic(topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=self.fetch_max_wait_ms or 500,
        )
        await consumer.start()
        kafka_topic = self.physical(topic)
        try:
            partitions = consumer.partitions_for_topic(kafka_topic)
            while not partitions:
                await asyncio.sleep(0.2)
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(kafka_topic)
            tps = [TopicPartition(kafka_topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                for tp, records in batches.items():
                    for record in records:
                        try:
                            handler(
                                Message(
                                    topic=topic,
                                    partition=tp.partition,
                                    offset=record.offset,
                                    key=record.key.decode() if record.key else None,
                                    value=record.value or b"",
                                    headers={k: v.decode(errors="replace") for k, v in record.headers},
                                    timestamp=record.timestamp / 1000,
                                )
                            )
                        except Exception:
                            log.exception("broadcast handler for %s failed", topic)
        finally:
            await consumer.stop()

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await self._admin.start()
        if self._offsets is None:
            self._offsets = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
            await self._offsets.start()
        return self._admin, self._offsets

    async def lag(self, group: str, topic: str) -> dict[int, int]:
        """Uncommitted messages per partition of the service's consumer group."""
        admin, offsets = await self._clients()
        kafka_topic = self.physical(topic)
        partitions = offsets.partitions_for_topic(kafka_topic) or set()
        if not partitions:
            await offsets._client.force_metadata_update()
            partitions = offsets.partitions_for_topic(kafka_topic) or set()
        tps = [TopicPartition(kafka_topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        ends = await offsets.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(self.app_id, partitions=tps)
        out = {}
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            out[tp.partition] = max(0, ends[tp] - done)
        return out

    async def pending_delayed(self, topic: str) -> int:
        """Messages waiting in the delay tiers (for every target topic: Kafka cannot tell them apart)."""
        total = 0
        for tier, _ in DELAY_TIERS:
            total += sum((await self.lag(self.app_id, DELAY_PREFIX + tier)).values())
        return total


class KafkaSubscription(Subscription):
    """Events of some topics, delivered through a bounded queue by a Faust agent."""

    def __init__(self, bus: KafkaBus, group: str, topics: list[str], max_in_flight: int) -> None:
        self.bus = bus
        self.group = group
        self.topics = topics
        self.max_in_flight = max_in_flight
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._events: dict[tuple[str, int, int], Any] = {}
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._closed = False
        channels = [bus.declare(t) for t in topics]
        channel = (
            channels[0]
            if len(channels) == 1
            else bus.app.topic(*map(bus.physical, topics), key_type=bytes, value_type=bytes)
        )
        bus.app.agent(channel, name=f"triggerbus.{group}.{'+'.join(topics)}")(self._agent)

    async def _agent(self, stream: Any) -> AsyncIterator[None]:  # a faust.Stream (StreamT lacks noack)
        async for batch in stream.noack().noack_take(256, within=0.05):
            for event in batch:
                while len(self._events) >= self.max_in_flight and not self._closed:
                    self._capacity.clear()
                    await self._capacity.wait()  # back-pressure: Faust pauses fetching when we stop reading
                msg = event.message
                headers = {
                    k: (v.decode(errors="replace") if isinstance(v, bytes) else str(v)) for k, v in (msg.headers or [])
                }
                message = Message(
                    topic=self.bus.logical(msg.topic),
                    partition=msg.partition,
                    offset=msg.offset,
                    key=msg.key.decode() if isinstance(msg.key, bytes) else msg.key,
                    value=msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b""),
                    headers=headers,
                    timestamp=(msg.timestamp or time.time() * 1000) / 1000,
                )
                self._events[(message.topic, message.partition, message.offset)] = event
                await self._queue.put(message)
            yield None

    @property
    def in_flight(self) -> int:
        return len(self._events)

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        await self.bus._ready.wait()
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(out) < max_messages:
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                try:
                    out.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    break
            try:
                async with asyncio.timeout(remaining):
                    out.append(await self._queue.get())
            except TimeoutError:
                break
        return out

    def ack(self, message: Message) -> None:
        event = self._events.pop((message.topic, message.partition, message.offset), None)
        if event is not None:
            event.ack()  # Faust commits it once every earlier offset of the partition is acked too
        self._capacity.set()

    async def commit(self) -> None:
        if self.bus._started:
            await self.bus.app.consumer.commit()

    async def close(self) -> None:
        self._closed = True
        self._capacity.set()
