"""KAFKA (DMS for Kafka) and OPENSOURCEKAFKA triggers: consume topics with aiokafka, batch, commit when done.

Configuration (``event_data``; see docs/kafka.md):

* ``topic_ids`` (one or more topics), ``batch_size`` (1-1000, default 100).
* Brokers: OPENSOURCEKAFKA reads ``kafka_connect_address`` (comma-separated ``host:port``).
  KAFKA (DMS) reads ``kafka_connect_address`` when given, else the service's instance map
  (``TRIGGERBUS_KAFKA_INSTANCES``: instance id -> bootstrap servers); an unknown instance is
  refused at create time.
* Security: ``kafka_user``/``kafka_password`` -> SASL (mechanism from the extension key
  ``kafka_sasl_mechanism``: ``PLAIN`` (default), ``SCRAM-SHA-256``, ``SCRAM-SHA-512``);
  ``kafka_ssl_enable`` -> TLS (``SSL`` / ``SASL_SSL``) with the system CA store. The password
  is never logged or returned.
* Extension keys (Triggerbus): ``start_position`` ``LATEST`` (default) | ``EARLIEST`` |
  ``TIMESTAMP`` with ``start_timestamp`` (epoch ms); ``batch_window_ms`` (0-300000, default 500:
  how long a batch may wait to fill, like Lambda's Kafka default).

Event (contract §1.6/§1.7): ``{"event_version": "v1.0", "event_time": <epoch s>, "trigger_type":
"KAFKA", "region", "instance_id", "records": [{"messages": [...], "topic_id", "instance_id"}]}``,
one record per topic in arrival order. ``instance_id`` is top-level *and* in every record (the
two official sources disagree, see :mod:`schemas.events.kafka`). OPENSOURCEKAFKA events say
``"trigger_type": "KAFKA"`` too, and carry the trigger's ``instance_id`` if it has one, else ``""``.
Messages are the record values decoded as UTF-8 (a null value is ``""``). A value that is not
valid UTF-8 is delivered as base64, and its record gets the extension key
``"base64_messages": [i, ...]`` listing the indexes of those messages in ``messages``.

Delivery: one consumer group per trigger, ``triggerbus-<trigger_id>``, so service processes
running the same trigger split its partitions. Each Kafka record becomes one stream item; the
batcher builds the events (``batch_size`` messages, ``batch_window_ms``, or 6 MB). Offsets are
committed only when the items reached a terminal state (success, failure destination handled,
or discarded): a partition's committed offset moves over the contiguous prefix of finished
records (:class:`bus.positions.PartitionPositions`). A poison batch goes through the function's
retry policy and then FAIL (and its failure destination); that completes it and the partition
moves on. Delivery is at least once: a crash or rebalance redelivers what was consumed but not
finished.

Records over 6 MB: FunctionGraph drops Kafka records over 6 MB. Triggerbus follows that rule
but never silently: each dropped record gets a DISCARD async record naming topic, partition,
offset and size, an audit entry ``kafkaRecordDropped``, and a count in the trigger's state.

Start position: applied once, the first time a trigger's group has no committed offset for a
partition. On activation the connector resolves the position of every existing partition
(LATEST = end offsets now, EARLIEST = beginning, TIMESTAMP = ``offsets_for_times``) and commits
it for the group, so "latest" means "when the trigger was enabled", not "when the group join
finished". Partitions that appear later (new topics or partitions) start at their beginning: all
of their records are newer than the trigger. Re-enabling a trigger resumes from its committed
offsets; move them with the checkpoint API.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.helpers import create_ssl_context
from pydantic import TypeAdapter, ValidationError

from bus.aio import stop_tasks
from bus.positions import PartitionPositions
from connectors.base import UNKNOWN_LAG, ConnectorContext, Lag, RunnerConnector, TriggerSpec, int_option
from invoker import tracing
from invoker.batching import register_assembler
from invoker.completion import Completion
from invoker.envelope import StreamItem
from invoker.ingest import OVERSIZED_CODE
from schemas.errors import FSSError, bad_request, conflict, unavailable
from schemas.events.kafka import KafkaEvent
from schemas.records import AsyncStatus
from schemas.triggers import AddressList
from triggerbus.logs import log_context

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 6 * 1024 * 1024
DROP_RULE = "FunctionGraph drops Kafka records over 6 MB"
START_POSITIONS = ("LATEST", "EARLIEST", "TIMESTAMP")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_WINDOW_MS = 500
MAX_WINDOW_MS = 300_000
COMMIT_INTERVAL_S = 0.2  # commits are batched: at most one per partition set per interval
MIN_IN_FLIGHT = 100  # per partition: consumed and not yet terminal, before the partition pauses
IN_FLIGHT_PER_BATCH = 5
FETCH_MAX_RECORDS = 500
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
ACTIVATE_WAIT_S = 5.0  # activate() waits this long for the start position to be pinned
DRAIN_S = 3.0  # on deactivate, wait this long for in-flight records to finish before committing
ADMIN_TIMEOUT_S = 20.0  # checkpoint reads/writes and start-position resolution
COMMIT_TIMEOUT_S = 10.0  # one offset commit, or leaving the group
PROBE_IDLE_S = 2.0  # an idle consumer asks for the cluster's metadata this often (see _Runner._probe)
PROBE_TIMEOUT_S = 5.0

# aiokafka consumer settings applied to every consumer this connector makes; the service may
# override them with ``options["kafka_consumer"]`` (tests shorten the group timeouts).
CONSUMER_TUNING: dict[str, Any] = {}
TUNABLE = frozenset(
    {
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "rebalance_timeout_ms",
        "max_poll_interval_ms",
        "fetch_max_wait_ms",
        "fetch_min_bytes",
        "fetch_max_bytes",
        "max_partition_fetch_bytes",
        "request_timeout_ms",
        "retry_backoff_ms",
        "metadata_max_age_ms",
        "connections_max_idle_ms",
        "isolation_level",
        "client_rack",
    }
)

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_ADDRESSES: TypeAdapter[str] = TypeAdapter(AddressList)


def group_id(trigger_id: str) -> str:
    """The Kafka consumer group of a trigger (shared by every service process running it)."""
    return f"triggerbus-{trigger_id}"


def item_id(trigger_id: str, topic: str, partition: int, offset: int) -> str:
    return f"{trigger_id}:{topic}:{partition}:{offset}"


def parse_item_id(trigger_id: str, value: str) -> tuple[str, int, int] | None:
    """``(topic, partition, offset)`` of one of this trigger's item ids, else None."""
    prefix = f"{trigger_id}:"
    if not value.startswith(prefix):
        return None
    head, sep, offset = value[len(prefix) :].rpartition(":")
    topic, sep2, partition = head.rpartition(":")
    if not sep or not sep2 or not topic:
        return None
    try:
        return topic, int(partition), int(offset)
    except ValueError:
        return None


def decode_message(value: bytes | None) -> tuple[str, bool]:
    """A record value as the event's message: UTF-8 text, else base64 (flag True)."""
    if value is None:
        return "", False
    try:
        return value.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), True


def assemble_event(region: str, items: list[StreamItem]) -> dict[str, Any]:
    """The KAFKA event for a batch: one record per topic, topics in order of first arrival."""
    topics: dict[str, list[str]] = {}
    binary: dict[str, list[int]] = {}
    for item in items:
        data = item.data
        messages = topics.setdefault(str(data["topic"]), [])
        if data.get("base64"):
            binary.setdefault(str(data["topic"]), []).append(len(messages))
        messages.append(str(data["message"]))
    instance_id = str(items[0].data.get("instance_id") or "")
    event = KafkaEvent.build(region, instance_id, list(topics.items()), event_time=int(time.time())).dump()
    for record in event["records"]:
        indexes = binary.get(record["topic_id"])
        if indexes:
            record["base64_messages"] = indexes
    return event


def _backoff(attempt: int) -> float:
    """Capped exponential backoff with equal jitter."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** min(attempt, 16)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class KafkaTriggerConfig:
    """A trigger's resolved consumer configuration (the password never shows in repr)."""

    trigger_id: str
    trigger_type: str
    function_urn: str
    bootstrap: str
    instance_id: str
    topics: list[str]
    batch_size: int
    window_ms: int
    start_position: str
    start_timestamp: int | None
    security: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def group(self) -> str:
        return group_id(self.trigger_id)

    @property
    def in_flight_limit(self) -> int:
        return max(MIN_IN_FLIGHT, IN_FLIGHT_PER_BATCH * self.batch_size)


def resolve_config(trigger: TriggerSpec, kafka_instances: dict[str, str]) -> KafkaTriggerConfig:
    """Check a trigger's event_data beyond the schema; FSS.0400 naming the field otherwise."""
    data = trigger.event_data
    topics = data.get("topic_ids") or []
    if not isinstance(topics, list) or not topics:
        raise bad_request("event_data.topic_ids: must list at least one topic")
    seen: set[str] = set()
    for topic in topics:
        if not isinstance(topic, str) or not _TOPIC_RE.match(topic) or topic in (".", ".."):
            raise bad_request(
                f"event_data.topic_ids: {topic!r} is not a valid Kafka topic name "
                "(1-249 characters: letters, digits, '.', '_', '-')"
            )
        if topic in seen:
            raise bad_request(f"event_data.topic_ids: topic {topic!r} is listed twice")
        seen.add(topic)
    instance_id = str(data.get("instance_id") or "")
    address = data.get("kafka_connect_address")
    if address:
        bootstrap = str(address)
    elif trigger.trigger_type == "OPENSOURCEKAFKA":
        raise bad_request("event_data.kafka_connect_address: is required for OPENSOURCEKAFKA triggers")
    else:
        known = kafka_instances.get(instance_id)
        if not known:
            names = ", ".join(sorted(kafka_instances)) or "none"
            raise bad_request(
                f"event_data.instance_id: unknown Kafka instance {instance_id!r}: this Triggerbus knows "
                f"{names} (TRIGGERBUS_KAFKA_INSTANCES); give kafka_connect_address to name the brokers directly"
            )
        try:
            bootstrap = _ADDRESSES.validate_python(known)
        except ValidationError as exc:
            raise bad_request(
                f"event_data.instance_id: Kafka instance {instance_id!r} is configured with a bad "
                f"address list: {exc.errors()[0]['msg']}"
            ) from None
    batch_size = int_option(data, "batch_size", 100, 1, 1000)
    window_ms = int_option(data, "batch_window_ms", DEFAULT_WINDOW_MS, 0, MAX_WINDOW_MS)
    position = data.get("start_position", "LATEST")
    if not isinstance(position, str) or position.strip().upper() not in START_POSITIONS:
        raise bad_request(f"event_data.start_position: must be one of {', '.join(START_POSITIONS)} (got {position!r})")
    position = position.strip().upper()
    timestamp = int_option(data, "start_timestamp", None, 0, 253402300799999)
    if position == "TIMESTAMP" and timestamp is None:
        raise bad_request("event_data.start_timestamp: is required (epoch milliseconds) with start_position TIMESTAMP")
    if position != "TIMESTAMP" and timestamp is not None:
        raise bad_request(f"event_data.start_timestamp: only applies to start_position TIMESTAMP (got {position})")
    security = _security(data)
    assert batch_size is not None and window_ms is not None
    return KafkaTriggerConfig(
        trigger_id=trigger.trigger_id,
        trigger_type=trigger.trigger_type,
        function_urn=trigger.function_urn,
        bootstrap=bootstrap,
        instance_id=instance_id,
        topics=list(topics),
        batch_size=batch_size,
        window_ms=window_ms,
        start_position=position,
        start_timestamp=timestamp,
        security=security,
    )


def _security(data: dict[str, Any]) -> dict[str, Any]:
    """aiokafka client keyword arguments for SASL and TLS."""
    user, password = data.get("kafka_user"), data.get("kafka_password")
    ssl_enable = data.get("kafka_ssl_enable") is True
    mechanism = data.get("kafka_sasl_mechanism")
    if mechanism is not None and (not isinstance(mechanism, str) or mechanism.upper() not in SASL_MECHANISMS):
        raise bad_request(
            f"event_data.kafka_sasl_mechanism: must be one of {', '.join(SASL_MECHANISMS)} (got {mechanism!r})"
        )
    if bool(user) != bool(password):
        raise bad_request("event_data.kafka_user and event_data.kafka_password: give both for SASL, or neither")
    if mechanism is not None and not user:
        raise bad_request("event_data.kafka_sasl_mechanism: needs kafka_user and kafka_password")
    kwargs: dict[str, Any] = {}
    if user:
        kwargs.update(
            security_protocol="SASL_SSL" if ssl_enable else "SASL_PLAINTEXT",
            sasl_mechanism=(mechanism or "PLAIN").upper(),
            sasl_plain_username=str(user),
            sasl_plain_password=str(password),
        )
    elif ssl_enable:
        kwargs["security_protocol"] = "SSL"
    return kwargs


# -- a running trigger ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Partition:
    """What one consumer knows about one assigned partition."""

    tp: TopicPartition
    positions: PartitionPositions | None = None  # set on the first record of this assignment
    in_flight: set[int] = field(default_factory=set)  # consumed offsets not yet terminal
    committed: int | None = None  # the group's committed offset (next offset to read)
    committed_known: bool = False
    next_offset: int | None = None  # consumed position
    paused: bool = False
    consumed: int = 0


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runner: _Runner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.runner.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.runner.assigned(set(assigned))


class _Runner:
    """One trigger's consumer: fetch, hand over, track completions, commit, reconnect."""

    def __init__(self, connector: KafkaConnector, cfg: KafkaTriggerConfig) -> None:
        self.connector = connector
        self.ctx = connector.ctx
        self.cfg = cfg
        self.state = "starting"
        self.positioned = asyncio.Event()
        self.first_attempt_done = asyncio.Event()
        self.parts: dict[TopicPartition, _Partition] = {}
        self.kept: dict[TopicPartition, _Partition] = {}  # revoked in a rebalance; may come back
        self.assign_generation = 0
        self.consumer: AIOKafkaConsumer | None = None
        self.attempt = 0
        self.stopping = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.dropped = 0
        self.published = 0
        self.finished: dict[str, int] = {}
        self.missing_topics: list[str] = []
        self._commit_lock = asyncio.Lock()
        self._commit_wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._stop_listening = self.ctx.completion.listen(cfg.trigger_id, self.on_completion)

    def start(self) -> None:
        # The task inherits the log context: every line it logs names the trigger and function.
        with log_context(trigger_id=self.cfg.trigger_id, function_urn=self.cfg.function_urn):
            self._task = asyncio.create_task(self._run(), name=f"kafka-{self.cfg.trigger_id}")

    # -- errors and status -------------------------------------------------------------------------

    def error(self, what: str, exc: BaseException) -> None:
        text = f"{what}: {type(exc).__name__}: {exc}"[:1000]
        if text != self.last_error:
            log.warning("kafka trigger %s: %s", self.cfg.trigger_id, text)
        self.last_error = text
        self.last_error_at = time.time()

    def status(self) -> dict[str, Any]:
        partitions = []
        consumer = self.consumer
        for tp, part in sorted(self.parts.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
            end: int | None = None
            if consumer is not None:
                with contextlib.suppress(Exception):
                    end = consumer.highwater(tp)
            committed = part.committed if part.committed_known else None
            partitions.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed": committed,
                    "position": part.next_offset,
                    "in_flight": len(part.in_flight),
                    "oldest_in_flight": min(part.in_flight) if part.in_flight else None,
                    "paused": part.paused,
                    "consumed": part.consumed,
                    "end_offset": end,
                    "lag": None if end is None or committed is None else max(0, end - committed),
                }
            )
        body: dict[str, Any] = {
            "consumer_state": self.state,
            "group": self.cfg.group,
            "bootstrap_servers": self.cfg.bootstrap,
            "topics": self.cfg.topics,
            "partitions": partitions,
            "published": self.published,
            "finished": dict(self.finished),
            "dropped": self.dropped,
            "last_error": self.last_error,
            "last_error_time": _iso(self.last_error_at),
        }
        assigned_topics = {tp.topic for tp in self.parts}
        missing = [t for t in self.missing_topics if t not in assigned_topics]
        if missing:
            body["missing_topics"] = missing  # did not exist when the trigger was activated
        return body

    async def lag(self) -> Lag:
        """End offset minus the group's committed offset, summed over the partitions read here.

        Unknown unless consuming with every partition's committed offset known (a partition read
        by another process of a shared trigger is that process's to report).
        """
        consumer, parts = self.consumer, dict(self.parts)
        if consumer is None or self.state != "running" or not parts:
            return UNKNOWN_LAG
        ends = dict(await consumer.end_offsets(list(parts)))
        total = 0
        for tp, part in parts.items():
            end = ends.get(tp)
            if end is None or not part.committed_known or part.committed is None:
                return UNKNOWN_LAG
            total += max(0, end - part.committed)
        return Lag.behind(total, None, None)

    # -- the consume loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self.stopping:
            try:
                if not self.positioned.is_set():
                    await self.connector.pin_start_positions(self)
                    self.positioned.set()
                await self._consume()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error("consumer failed" if self.positioned.is_set() else "resolving start positions", exc)
                self.first_attempt_done.set()
                self.state = "reconnecting"  # closing may wait for a dead broker (bounded)
                await self._close_consumer()
                if self.stopping:
                    return
                self.state = "backoff"
                delay = _backoff(self.attempt)
                self.attempt += 1
                await asyncio.sleep(delay)

    async def _consume(self) -> None:
        cfg = self.cfg
        consumer = self.connector.make_consumer(cfg, group=cfg.group, auto_offset_reset="earliest")
        consumer.subscribe(cfg.topics, listener=_Rebalance(self))
        self.consumer = consumer
        await consumer.start()
        self.state = "running"
        self.first_attempt_done.set()
        self._committer = asyncio.create_task(self._commit_loop(), name=f"kafka-commit-{cfg.trigger_id}")
        contact = time.monotonic()
        while not self.stopping:
            batch = await consumer.getmany(timeout_ms=1000, max_records=FETCH_MAX_RECORDS)
            generation = self.assign_generation
            if self.stopping:
                return  # fetched but not handed over: read again from the committed offset
            if batch:
                contact = time.monotonic()
            elif time.monotonic() - contact >= PROBE_IDLE_S:
                await self._probe(consumer)
                contact = time.monotonic()
            self.attempt = 0
            await self._refresh_committed(consumer)
            for tp, records in batch.items():
                if generation != self.assign_generation:
                    # A rebalance happened while we handed over earlier partitions: the new
                    # assignment restarts from the committed offsets, so these are re-fetched.
                    break
                await self._handle(consumer, tp, records)

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """Raise if no broker answers a metadata request.

        aiokafka reconnects inside ``getmany`` by itself, forever and without jitter, and an idle
        consumer cannot tell a quiet topic from a dead broker. So when nothing arrived for
        :data:`PROBE_IDLE_S`, ask the cluster; if nobody answers, :meth:`_run` rebuilds the consumer
        with its capped, jittered backoff, and the trigger's state (and ``/health``) says so.
        """
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await consumer.topics()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ConnectionError(f"no broker of {self.cfg.bootstrap} answers: {type(exc).__name__}: {exc}") from exc

    async def _refresh_committed(self, consumer: AIOKafkaConsumer) -> None:
        for tp, part in list(self.parts.items()):
            if part.committed_known:
                continue
            try:
                committed = await consumer.committed(tp)
            except Exception as exc:
                self.error(f"reading the committed offset of {tp.topic}/{tp.partition}", exc)
                return
            if self.parts.get(tp) is part and not part.committed_known:
                part.committed = committed
                part.committed_known = True

    async def _handle(self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        part = self.parts.get(tp)
        if part is None:
            return
        cfg = self.cfg
        items: list[StreamItem] = []
        oversized: list[tuple[StreamItem, int]] = []
        limit = self.connector.max_record_bytes
        for record in records:
            offset = int(record.offset)
            if part.next_offset is not None and offset < part.next_offset:
                continue  # already handed over in this assignment
            if len(part.in_flight) >= cfg.in_flight_limit:
                # Too much unfinished work on this partition: fetch the rest again once
                # completions bring it under half the limit (see on_completion).
                consumer.seek(tp, offset)
                consumer.pause(tp)
                part.paused = True
                break
            if part.positions is None:
                part.positions = PartitionPositions(offset - 1)
            part.positions.delivered(offset)
            part.in_flight.add(offset)
            part.next_offset = offset + 1
            part.consumed += 1
            value: bytes | None = record.value
            raw_size = len(value) if value is not None else 0
            message, is_b64 = decode_message(value)
            size = len(json.dumps(message, ensure_ascii=False).encode()) if not is_b64 else len(message) + 2
            item = StreamItem(
                item_id=item_id(cfg.trigger_id, tp.topic, tp.partition, offset),
                trigger_id=cfg.trigger_id,
                trigger_type=cfg.trigger_type,
                function_urn=cfg.function_urn,
                data={"topic": tp.topic, "message": message, "base64": is_b64, "instance_id": cfg.instance_id},
                size=size,
                source={
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "offset": offset,
                    "timestamp": int(record.timestamp),
                },
                batch_size=cfg.batch_size,
                window_ms=cfg.window_ms,
                trace=tracing.from_headers(record.headers),
            )
            if max(raw_size, size) > limit:
                oversized.append((item, raw_size))
            else:
                items.append(item)
        if items:
            tracing.receive_items(f"receive {tp.topic}", items, {"messaging.destination.name": tp.topic})
            await self._publish(items)
        for item, raw_size in oversized:
            await self._drop(item, raw_size, limit)

    async def _publish(self, items: list[StreamItem]) -> None:
        while True:
            try:
                await self.ctx.ingest.publish(items)
                self.published += len(items)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error("handing records to the bus", exc)
                await asyncio.sleep(1.0)

    async def _drop(self, item: StreamItem, raw_size: int, limit: int) -> None:
        source = item.source
        where = f"{source['topic']}/{source['partition']}@{source['offset']}"
        encoded = "" if item.size <= raw_size else f" ({item.size} bytes in the event)"
        reason = (
            f"Kafka record {where} is {raw_size} bytes{encoded}, over the {limit}-byte limit: {DROP_RULE}; "
            "it was not delivered to the function"
        )
        item.source = {**source, "size": raw_size}
        self.dropped += 1
        request_id = await self.ctx.ingest.reject(
            [item], status=AsyncStatus.DISCARD, code=OVERSIZED_CODE, reason=reason
        )
        try:
            await self.ctx.state.audit(
                "kafkaRecordDropped",
                self.cfg.trigger_id,
                {
                    "topic": source["topic"],
                    "partition": source["partition"],
                    "offset": source["offset"],
                    "size": raw_size,
                    "limit": limit,
                    "rule": DROP_RULE,
                    "request_id": request_id,
                },
            )
        except Exception as exc:
            self.error("auditing a dropped record", exc)

    # -- completions and commits ---------------------------------------------------------------------

    def on_completion(self, completion: Completion) -> None:
        """Called by the invoker (synchronously) when items of this trigger are terminal."""
        status = str(completion.status)
        moved = False
        for value in completion.item_ids:
            parsed = parse_item_id(self.cfg.trigger_id, value)
            if parsed is None:
                continue
            topic, partition, offset = parsed
            tp = TopicPartition(topic, partition)
            part = self.parts.get(tp) or self.kept.get(tp)  # kept: revoked, maybe coming back
            if part is None or offset not in part.in_flight or part.positions is None:
                continue  # not ours (any more): revoked, or consumed before a restart
            part.in_flight.discard(offset)
            part.positions.ack(offset)
            self.finished[status] = self.finished.get(status, 0) + 1
            moved = moved or part.positions.dirty
            if part.paused and len(part.in_flight) <= self.cfg.in_flight_limit // 2 and self.consumer is not None:
                with contextlib.suppress(Exception):
                    self.consumer.resume(part.tp)
                part.paused = False
        if moved:
            self._commit_wake.set()
        if self.stopping and not any(p.in_flight for p in self.parts.values()):
            self._drained.set()

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self.commit_done()

    async def commit_done(self, only: set[TopicPartition] | None = None) -> None:
        """Commit, for each partition, the offset after its contiguous finished prefix."""
        consumer = self.consumer
        if consumer is None:
            return
        async with self._commit_lock:
            chosen: dict[TopicPartition, tuple[_Partition, int]] = {}
            for tp, part in self.parts.items():
                if only is not None and tp not in only:
                    continue
                if part.positions is not None and part.positions.dirty:
                    chosen[tp] = (part, part.positions.committed + 1)
                    part.positions.dirty = False
            if not chosen:
                return
            try:
                async with asyncio.timeout(COMMIT_TIMEOUT_S):  # aiokafka retries retriable errors forever
                    await consumer.commit({tp: offset for tp, (_, offset) in chosen.items()})
            except Exception as exc:
                for part, _ in chosen.values():
                    if part.positions is not None:
                        part.positions.dirty = True
                self.error("committing offsets", exc)
                return
            for part, offset in chosen.values():
                part.committed = offset
                part.committed_known = True

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        """Rebalance: commit what is done for partitions we lose, and keep their state aside.

        With eager rebalancing every partition is revoked, and most come straight back to
        the same member. Keeping their in-flight state (completions keep arriving) lets
        such a partition carry on where it was instead of re-reading and re-running
        everything after its committed offset.
        """
        self.assign_generation += 1
        await self.commit_done(revoked)
        for tp in revoked:
            part = self.parts.pop(tp, None)
            if part is not None and part.positions is not None and part.committed_known:
                self.kept[tp] = part

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        self.assign_generation += 1
        kept, self.kept = self.kept, {}
        for tp in assigned:
            if tp in self.parts:
                continue
            part = kept.get(tp)
            if part is not None and await self._still_ours(tp, part):
                self.parts[tp] = part
                if part.next_offset is not None and self.consumer is not None:
                    self.consumer.seek(tp, part.next_offset)  # what is in flight is not read again
                if part.paused and self.consumer is not None:
                    self.consumer.pause(tp)
            else:
                self.parts[tp] = _Partition(tp)
        for tp in list(self.parts):
            if tp not in assigned:
                self.parts.pop(tp, None)

    async def _still_ours(self, tp: TopicPartition, part: _Partition) -> bool:
        """True if nobody committed this partition since we last did (it did not move away and back)."""
        if self.consumer is None:
            return False
        try:
            committed = await self.consumer.committed(tp)
        except Exception as exc:
            self.error(f"reading the committed offset of {tp.topic}/{tp.partition}", exc)
            return False
        return committed == part.committed

    # -- stopping ------------------------------------------------------------------------------------

    async def stop(self, drain_s: float) -> None:
        """Stop fetching, give in-flight records ``drain_s`` to finish, commit, leave the group."""
        self.stopping = True
        try:
            if self.consumer is not None and any(p.in_flight for p in self.parts.values()):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(drain_s):
                        await self._drained.wait()
            await stop_tasks(self._task, self._committer)
            await self._close_consumer()
        finally:
            self._stop_listening()
            self.state = "stopped"

    async def _close_consumer(self) -> None:
        await stop_tasks(self._committer)
        self._committer = None
        consumer = self.consumer
        if consumer is None:
            return
        try:
            await self.commit_done()
        finally:
            self.consumer = None
            try:
                async with asyncio.timeout(COMMIT_TIMEOUT_S):
                    await consumer.stop()
            except Exception as exc:
                self.error("stopping the consumer", exc)
            self.parts.clear()
            self.kept.clear()
            self.assign_generation += 1


# -- the connector -----------------------------------------------------------------------------------


class KafkaConnector(RunnerConnector[_Runner]):
    trigger_types: ClassVar[tuple[str, ...]] = ("KAFKA", "OPENSOURCEKAFKA")

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        region = ctx.region
        for trigger_type in ("KAFKA", "OPENSOURCEKAFKA"):
            register_assembler(trigger_type, lambda items: assemble_event(region, items))

    @property
    def kafka_instances(self) -> dict[str, str]:
        return dict(self.ctx.options.get("kafka_instances") or {})

    @property
    def max_record_bytes(self) -> int:
        return int(self.ctx.options.get("kafka_max_record_bytes") or MAX_RECORD_BYTES)

    @property
    def drain_s(self) -> float:
        return float(self.ctx.options.get("kafka_drain_s", DRAIN_S))

    def make_consumer(self, cfg: KafkaTriggerConfig, *, group: str, **extra: Any) -> AIOKafkaConsumer:
        tuning = {**CONSUMER_TUNING, **(self.ctx.options.get("kafka_consumer") or {})}
        unknown = set(tuning) - TUNABLE
        if unknown:
            raise ValueError(f"kafka consumer settings {sorted(unknown)} are not tunable (tunable: {sorted(TUNABLE)})")
        security = dict(cfg.security)
        if security.get("security_protocol") in ("SSL", "SASL_SSL"):
            security["ssl_context"] = create_ssl_context()
        kwargs: dict[str, Any] = {
            "bootstrap_servers": cfg.bootstrap.split(","),
            "group_id": group,
            "client_id": f"triggerbus-{self.ctx.node_id}",
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            **tuning,
            **security,
            **extra,
        }
        return AIOKafkaConsumer(**kwargs)

    def _config(self, trigger: TriggerSpec) -> KafkaTriggerConfig:
        return resolve_config(trigger, self.kafka_instances)

    # -- lifecycle -------------------------------------------------------------------------------------

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        cfg = self._config(trigger)
        extra: dict[str, Any] = {"start_position": cfg.start_position}
        if "batch_window_ms" not in trigger.event_data:
            extra["batch_window_ms"] = cfg.window_ms
        return extra

    async def activate(self, trigger: TriggerSpec) -> None:
        cfg = self._config(trigger)
        runner = _Runner(self, cfg)
        await self.replace_runner(trigger.trigger_id, runner)
        runner.start()
        # Pin the start position before returning, so "LATEST" means "from now on"; a broker
        # that does not answer in time is retried in the background (see the trigger's state).
        waiters = [
            asyncio.ensure_future(runner.positioned.wait()),
            asyncio.ensure_future(runner.first_attempt_done.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=ACTIVATE_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # -- start position --------------------------------------------------------------------------------

    async def pin_start_positions(self, runner: _Runner) -> None:
        """Commit the configured start position for every partition the group has no offset for."""
        cfg = runner.cfg
        async with self._admin(cfg) as consumer:
            partitions, missing_topics = await self._partitions(consumer, cfg.topics)
            runner.missing_topics = missing_topics
            if missing_topics:
                log.info(
                    "kafka trigger %s: topics %s do not exist yet; they will be read from their beginning",
                    cfg.trigger_id,
                    missing_topics,
                )
            unset = [tp for tp in partitions if await consumer.committed(tp) is None]
            if not unset:
                return
            offsets = await self._start_offsets(consumer, cfg, unset)
            consumer.assign(unset)
            try:
                await consumer.commit(offsets)
            except Exception:
                # Another process of this trigger may already run the group (then it pinned them).
                still = [tp for tp in unset if await consumer.committed(tp) is None]
                if still:
                    raise
                return
        with contextlib.suppress(Exception):
            await self.ctx.state.audit(
                "kafkaStartPosition",
                cfg.trigger_id,
                {
                    "group": cfg.group,
                    "start_position": cfg.start_position,
                    "start_timestamp": cfg.start_timestamp,
                    "partitions": [
                        {"topic": tp.topic, "partition": tp.partition, "offset": offset}
                        for tp, offset in sorted(offsets.items())
                    ],
                },
            )

    async def _start_offsets(
        self, consumer: AIOKafkaConsumer, cfg: KafkaTriggerConfig, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        if cfg.start_position == "EARLIEST":
            return dict(await consumer.beginning_offsets(tps))
        ends = dict(await consumer.end_offsets(tps))
        if cfg.start_position == "LATEST":
            return ends
        assert cfg.start_timestamp is not None
        return await self._offsets_at(consumer, cfg.start_timestamp, tps, ends)

    @staticmethod
    async def _offsets_at(
        consumer: AIOKafkaConsumer, timestamp: int, tps: list[TopicPartition], ends: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """The first offset at or after ``timestamp`` per partition; the end offset when none is."""
        found = await consumer.offsets_for_times(dict.fromkeys(tps, timestamp))
        result: dict[TopicPartition, int] = {}
        for tp in tps:
            hit = found.get(tp)
            # Kafka answers "no such record" with None; some Kafka-protocol brokers answer with
            # offset 0 and timestamp -1, which must not rewind the partition to its start.
            result[tp] = ends[tp] if hit is None or hit.timestamp < 0 else int(hit.offset)
        return result

    # -- checkpoints -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admin(self, cfg: KafkaTriggerConfig) -> AsyncIterator[AIOKafkaConsumer]:
        """A short-lived consumer of the trigger's group that never joins it (offset reads/commits)."""
        consumer = self.make_consumer(cfg, group=cfg.group)
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT_S):
                await consumer.start()
        except TimeoutError:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise ConnectionError(f"Kafka brokers {cfg.bootstrap} did not answer in {ADMIN_TIMEOUT_S:.0f} s") from None
        except BaseException:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT_S):
                yield consumer
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    @staticmethod
    async def _partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> tuple[list[TopicPartition], list[str]]:
        await consumer.topics()  # refreshes the cluster metadata
        partitions: list[TopicPartition] = []
        missing: list[str] = []
        for topic in topics:
            numbers = consumer.partitions_for_topic(topic)
            if not numbers:
                missing.append(topic)
                continue
            partitions.extend(TopicPartition(topic, n) for n in sorted(numbers))
        return partitions, missing

    async def _checkpoint(self, consumer: AIOKafkaConsumer, cfg: KafkaTriggerConfig) -> dict[str, Any]:
        partitions, missing = await self._partitions(consumer, cfg.topics)
        ends = dict(await consumer.end_offsets(partitions)) if partitions else {}
        rows = []
        for tp in partitions:
            committed = await consumer.committed(tp)
            end = ends.get(tp)
            rows.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed": committed,
                    "end_offset": end,
                    "lag": None if committed is None or end is None else max(0, end - committed),
                }
            )
        body: dict[str, Any] = {"group": cfg.group, "partitions": rows}
        if missing:
            body["missing_topics"] = missing
        return body

    async def get_checkpoint(self, trigger: TriggerSpec) -> dict[str, Any]:
        cfg = self._config(trigger)
        try:
            async with self._admin(cfg) as consumer:
                return await self._checkpoint(consumer, cfg)
        except FSSError:
            raise
        except Exception as exc:
            raise unavailable(f"reading the offsets of group {cfg.group} from {cfg.bootstrap} failed: {exc}") from None

    async def set_checkpoint(self, trigger: TriggerSpec, body: dict[str, Any]) -> dict[str, Any]:
        cfg = self._config(trigger)
        if trigger.trigger_id in self._runners:
            raise conflict(f"trigger {trigger.trigger_id} is still consuming here: disable it first")
        has_partitions, has_timestamp = "partitions" in body, "timestamp" in body
        if has_partitions == has_timestamp:
            raise bad_request(
                'give either "partitions": [{"topic", "partition", "offset"}, ...] or "timestamp": <epoch ms>'
            )
        unknown_keys = sorted(set(body) - {"partitions", "timestamp"})
        if unknown_keys:
            raise bad_request(f"unknown keys {unknown_keys}: expected partitions or timestamp")
        try:
            async with self._admin(cfg) as consumer:
                partitions, missing = await self._partitions(consumer, cfg.topics)
                if has_timestamp:
                    timestamp = body["timestamp"]
                    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
                        raise bad_request(f"timestamp: must be epoch milliseconds >= 0 (got {timestamp!r})")
                    if not partitions:
                        raise bad_request(f"none of the trigger's topics {cfg.topics} exists")
                    ends = dict(await consumer.end_offsets(partitions))
                    offsets = await self._offsets_at(consumer, timestamp, partitions, ends)
                else:
                    offsets = await self._requested_offsets(consumer, cfg, body["partitions"], partitions, missing)
                consumer.assign(list(offsets))
                try:
                    await consumer.commit(offsets)
                except Exception as exc:
                    raise conflict(
                        f"committing offsets for group {cfg.group} failed ({type(exc).__name__}: {exc}); "
                        "is another Triggerbus process still running this trigger?"
                    ) from None
                return await self._checkpoint(consumer, cfg)
        except FSSError:
            raise
        except Exception as exc:
            raise unavailable(f"setting the offsets of group {cfg.group} on {cfg.bootstrap} failed: {exc}") from None

    @staticmethod
    async def _requested_offsets(
        consumer: AIOKafkaConsumer,
        cfg: KafkaTriggerConfig,
        requested: Any,
        partitions: list[TopicPartition],
        missing: list[str],
    ) -> dict[TopicPartition, int]:
        if not isinstance(requested, list) or not requested:
            raise bad_request('partitions: must be a non-empty list of {"topic", "partition", "offset"}')
        known = set(partitions)
        wanted: dict[TopicPartition, int] = {}
        for index, entry in enumerate(requested):
            where = f"partitions[{index}]"
            if not isinstance(entry, dict) or set(entry) != {"topic", "partition", "offset"}:
                raise bad_request(f'{where}: must be {{"topic", "partition", "offset"}} (got {entry!r})')
            topic, partition, offset = entry["topic"], entry["partition"], entry["offset"]
            if topic not in cfg.topics:
                raise bad_request(f"{where}.topic: {topic!r} is not one of the trigger's topic_ids {cfg.topics}")
            if topic in missing:
                raise bad_request(f"{where}.topic: topic {topic!r} does not exist on {cfg.bootstrap}")
            if isinstance(partition, bool) or not isinstance(partition, int):
                raise bad_request(f"{where}.partition: must be an integer (got {partition!r})")
            tp = TopicPartition(topic, partition)
            if tp not in known:
                count = sum(1 for p in partitions if p.topic == topic)
                raise bad_request(
                    f"{where}.partition: topic {topic!r} has no partition {partition} (partitions 0-{count - 1})"
                )
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise bad_request(f"{where}.offset: must be an integer >= 0 (got {offset!r})")
            if tp in wanted:
                raise bad_request(f"{where}: {topic}/{partition} is listed twice")
            wanted[tp] = offset
        begins = dict(await consumer.beginning_offsets(list(wanted)))
        ends = dict(await consumer.end_offsets(list(wanted)))
        for tp, offset in wanted.items():
            if not begins[tp] <= offset <= ends[tp]:
                raise bad_request(
                    f"offset {offset} of {tp.topic}/{tp.partition} is outside the partition's "
                    f"offsets {begins[tp]}-{ends[tp]} (beginning-end)"
                )
        return wanted
