"""RABBITMQ triggers: a durable queue of the trigger's own on a fanout exchange, consumed with aio-pika.

Configuration (``event_data``; see docs/rabbitmq.md):

* ``exchange_name`` (required): an existing **fanout** exchange, as FunctionGraph documents
  ("only the fanout routing mode is supported"). Checked at create time, see :func:`exchange_type`.
* ``instance_id`` (required, copied into the events), ``connect_address`` (``host:port[,...]``,
  tried in order). Without ``connect_address`` the service's instance map
  ``TRIGGERBUS_RABBITMQ_INSTANCES`` (instance id -> ``"host:port[,...]"`` or
  ``{"address": ..., "user": ...}``) names the broker; an unknown instance is refused.
* ``access_user`` (else the instance map's ``user``), ``access_password`` (required; stored
  encrypted by the trigger manager, shown as ``******``, never logged), ``vhost`` (default
  ``/``), ``ssl_enable`` (TLS with the system CA store), ``batch_size`` (1-1000, default 100).
* Extension key (Triggerbus): ``batch_window_ms`` (0-300000, default 500): how long a batch may
  wait to fill.

Create time: the connector logs in, checks that the exchange exists and is a fanout exchange,
and that the user may create, bind and consume the trigger's queue; an unreachable broker, a
refused login, a missing vhost or exchange, another exchange type or a missing permission is a
400 that names the field.

Event (contract §1.8): ``{"event_version": "v1.0", "event_time": <epoch s>, "trigger_type":
"RABBITMQ", "region", "records": [{"messages": [...], "instance_id", "exchange"}]}``, one record
per batch. Messages are the message bodies decoded as UTF-8; a body that is not UTF-8 is
delivered base64-encoded and the record gets the extension key ``"base64_messages": [i, ...]``
(indexes into ``messages``), as Kafka triggers do.

Delivery: each trigger consumes its own durable queue ``triggerbus-<trigger_id>``, bound to the
exchange, so it gets a copy of every message published to the exchange after its first
activation. Prefetch is ``max(100, 5 x batch_size)`` (at most 5000): enough for several batches
in flight. A message is acked only once the invocation of its batch reached a terminal state
(success; failure after the retry policy, its failure destination handled; or discarded), so
delivery is at least once: a dropped connection, a broker restart or a crashed service puts the
unacked messages back in the queue and they are delivered again. Delivery tags are only valid on
the channel that delivered them: item ids carry a per-channel id, and completions of a dead
channel's deliveries are ignored (the broker redelivers those messages). Bodies over 6 MB are
never invoked: a DISCARD record says why, then the message is acked.

Lifecycle: disabling stops consuming and keeps the queue (messages published meanwhile wait
there, and are delivered once the trigger is enabled again); deleting the trigger deletes the
queue and whatever it still holds (audited with the count).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ProbableAuthenticationError,
)
from pydantic import TypeAdapter, ValidationError

from bus.aio import stop_tasks
from connectors.base import UNKNOWN_LAG, ConnectorContext, Lag, RunnerConnector, TriggerSpec, int_option
from invoker.batching import register_assembler
from invoker.completion import Completion
from invoker.envelope import StreamItem
from invoker.ingest import OVERSIZED_CODE
from schemas.errors import FSSError, bad_request, unavailable
from schemas.events.rabbitmq import RabbitMQEvent
from schemas.records import AsyncStatus
from schemas.triggers import AddressList

log = logging.getLogger(__name__)

TRIGGER_TYPE = "RABBITMQ"
QUEUE_PREFIX = "triggerbus-"
MARKER = "rabbitmq.queue"  # checkpoint entry: "this trigger has a queue"; the store deletes it with the trigger
MAX_MESSAGE_BYTES = 6 * 1024 * 1024
DROP_RULE = "a FunctionGraph event is at most 6 MB"
DEFAULT_BATCH_SIZE = 100
DEFAULT_WINDOW_MS = 500
MAX_WINDOW_MS = 300_000
IN_FLIGHT_BATCHES = 5
MIN_PREFETCH = 100
MAX_PREFETCH = 5000
PUMP_CHUNK = 500  # most deliveries handed to the bus in one publish
CONNECT_TIMEOUT_S = 10.0
HEARTBEAT_S = 15  # a dead TCP connection is noticed within about two heartbeats
CLOSE_TIMEOUT_S = 5.0
ACTIVATE_WAIT_S = 5.0  # activate() waits this long for the queue to be bound and consumed
DRAIN_S = 3.0  # on deactivate, wait this long for in-flight messages to finish and be acked
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
SWEEP_FIRST_S = 0.2  # a parked (deactivated) trigger is checked for deletion after this, then less often
SWEEP_CAP_S = 30.0
QUEUE_DELETE_ATTEMPTS = 8
FANOUT = "fanout"

_ADDRESSES: TypeAdapter[str] = TypeAdapter(AddressList)
_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)'.*?current is '([^']*)'", re.DOTALL)
_BUILTIN_EXCHANGES = {  # pre-declared in every vhost; "amq." names cannot be declared by clients
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
    "amq.match": "headers",
    "amq.rabbitmq.trace": "topic",
}


def queue_name(trigger_id: str) -> str:
    """The durable queue a trigger owns (one per trigger, shared by every service process running it)."""
    return f"{QUEUE_PREFIX}{trigger_id}"


def item_id(trigger_id: str, channel_id: str, delivery_tag: int) -> str:
    return f"{trigger_id}:{channel_id}:{delivery_tag}"


def parse_item_id(trigger_id: str, value: str) -> tuple[str, int] | None:
    """``(channel id, delivery tag)`` of one of this trigger's item ids, else None."""
    prefix = f"{trigger_id}:"
    if not value.startswith(prefix):
        return None
    channel_id, sep, tag = value[len(prefix) :].rpartition(":")
    if not sep or not channel_id:
        return None
    try:
        return channel_id, int(tag)
    except ValueError:
        return None


def decode_message(body: bytes) -> tuple[str, bool]:
    """A body as the event's message: UTF-8 text, else base64 (flag True)."""
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True


def assemble_event(region: str, items: list[StreamItem]) -> dict[str, Any]:
    """The RABBITMQ event for a batch: one record (a trigger has one exchange), messages in delivery order."""
    messages: list[str] = []
    binary: list[int] = []
    for item in items:
        if item.data.get("base64"):
            binary.append(len(messages))
        messages.append(str(item.data["message"]))
    first = items[0].data
    event = RabbitMQEvent.build(
        region, str(first.get("instance_id") or ""), str(first["exchange"]), messages, event_time=int(time.time())
    ).dump()
    if binary:
        event["records"][0]["base64_messages"] = binary
    return event


def plan_acks(unacked: Iterable[int], finished: set[int]) -> tuple[int | None, list[int]]:
    """How to ack the ``finished`` ones of a channel's ``unacked`` delivery tags (ascending).

    Returns ``(upto, singles)``: ack ``upto`` with ``multiple=True`` (None: no such ack), then each
    of ``singles`` alone. ``basic.ack(tag, multiple=True)`` acks every unacked delivery up to
    ``tag``, and ``tag`` must itself be unacked (acking a tag twice is a channel error that closes
    the channel). So ``upto`` ends the longest prefix of ``unacked`` that is all finished: one
    frame in the common in-order case, and never an ack of an unfinished message.
    """
    upto: int | None = None
    for tag in unacked:
        if tag not in finished:
            break
        upto = tag
    singles = sorted(tag for tag in finished if upto is None or tag > upto)
    return upto, singles


async def _ignore(message: AbstractIncomingMessage) -> None:
    """The consumer of the permission check: consumes nothing (cancelled at once; unacked ones go back)."""


def _backoff(attempt: int) -> float:
    """Capped exponential backoff with equal jitter."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** min(attempt, 16)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _reason(exc: BaseException) -> str:
    """The broker's words for an error (``REPLY_CODE - text``), else the exception's text."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- configuration ---------------------------------------------------------------------------------


@dataclass(slots=True)
class RabbitMQTriggerConfig:
    """A trigger's resolved connection and consumer settings (the password never shows in repr)."""

    trigger_id: str
    function_urn: str
    instance_id: str
    exchange: str
    addresses: list[tuple[str, int]]
    vhost: str
    user: str
    ssl: bool
    batch_size: int
    window_ms: int
    password: str = field(default="", repr=False)

    @property
    def queue(self) -> str:
        return queue_name(self.trigger_id)

    @property
    def prefetch(self) -> int:
        return min(MAX_PREFETCH, max(MIN_PREFETCH, IN_FLIGHT_BATCHES * self.batch_size))

    @property
    def address_text(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.addresses)

    def scrub(self, text: str) -> str:
        """``text`` with the password masked (broker and library messages are not trusted to omit it)."""
        return text.replace(self.password, "******") if self.password else text


def _instance_entry(instances: dict[str, Any], instance_id: str) -> tuple[str, str | None]:
    """``(address list, default user)`` of an instance in the service's map; FSS.0400 if unknown."""
    entry = instances.get(instance_id)
    if entry is None:
        names = ", ".join(sorted(instances)) or "none"
        raise bad_request(
            f"event_data.instance_id: unknown RabbitMQ instance {instance_id!r}: this Triggerbus knows {names} "
            "(TRIGGERBUS_RABBITMQ_INSTANCES); give connect_address to name the broker directly"
        )
    address, user = (entry, None) if isinstance(entry, str) else (None, None)
    if isinstance(entry, dict):
        address, user = entry.get("address"), entry.get("user")
    if not isinstance(address, str) or (user is not None and not isinstance(user, str)):
        raise bad_request(
            f"event_data.instance_id: RabbitMQ instance {instance_id!r} is configured wrongly in "
            'TRIGGERBUS_RABBITMQ_INSTANCES: expected "host:port[,...]" or {"address": "host:port", "user": "name"}'
        )
    return address, user


def _parse_addresses(text: str, where: str) -> list[tuple[str, int]]:
    try:
        normalized = _ADDRESSES.validate_python(text)
    except ValidationError as exc:
        raise bad_request(f"{where}: {exc.errors()[0]['msg']}") from None
    addresses = []
    for part in normalized.split(","):
        host, _, port = part.rpartition(":")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def resolve_config(trigger: TriggerSpec, instances: dict[str, Any]) -> RabbitMQTriggerConfig:
    """Check a trigger's event_data beyond the schema; FSS.0400 naming the field otherwise."""
    data = trigger.event_data
    exchange = data.get("exchange_name")
    if not isinstance(exchange, str) or not exchange.strip():
        raise bad_request("event_data.exchange_name: is required (the fanout exchange to consume)")
    if len(exchange.encode()) > 255:
        raise bad_request("event_data.exchange_name: must be at most 255 bytes")
    instance_id = str(data.get("instance_id") or "")
    address = data.get("connect_address")
    default_user: str | None = None
    if address:
        addresses = _parse_addresses(str(address), "event_data.connect_address")
    else:
        known, default_user = _instance_entry(instances, instance_id)
        addresses = _parse_addresses(known, f"event_data.instance_id: RabbitMQ instance {instance_id!r} address")
    user = data.get("access_user") or default_user
    if not isinstance(user, str) or not user:
        raise bad_request(
            "event_data.access_user: is required (the instance map TRIGGERBUS_RABBITMQ_INSTANCES gives no user "
            f"for instance {instance_id!r})"
        )
    password = data.get("access_password")
    if not isinstance(password, str) or not password:
        raise bad_request("event_data.access_password: is required")
    vhost = data.get("vhost") or "/"
    if not isinstance(vhost, str) or len(vhost.encode()) > 255:
        raise bad_request(f"event_data.vhost: must be a virtual host name of at most 255 bytes (got {vhost!r})")
    ssl_enable = data.get("ssl_enable")
    if ssl_enable is not None and not isinstance(ssl_enable, bool):
        raise bad_request(f"event_data.ssl_enable: must be true or false (got {ssl_enable!r})")
    return RabbitMQTriggerConfig(
        trigger_id=trigger.trigger_id,
        function_urn=trigger.function_urn,
        instance_id=instance_id,
        exchange=exchange,
        addresses=addresses,
        vhost=vhost,
        user=user,
        ssl=ssl_enable is True,
        batch_size=int_option(data, "batch_size", DEFAULT_BATCH_SIZE, 1, 1000),
        window_ms=int_option(data, "batch_window_ms", DEFAULT_WINDOW_MS, 0, MAX_WINDOW_MS),
        password=password,
    )


# -- talking to the broker ------------------------------------------------------------------------------


class BrokerError(Exception):
    """Connecting failed; the message is safe to show (no password) and names the field at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name
        self.message = message


async def connect(
    cfg: RabbitMQTriggerConfig, *, name: str, timeout: float = CONNECT_TIMEOUT_S
) -> tuple[AbstractConnection, str]:
    """A connection to the first address that answers, and that address; :class:`BrokerError` otherwise."""
    failures: list[str] = []
    for host, port in cfg.addresses:
        try:
            connection = await aio_pika.connect(
                host=host,
                port=port,
                login=cfg.user,
                password=cfg.password,
                virtualhost=cfg.vhost,
                ssl=cfg.ssl,
                ssl_context=ssl.create_default_context() if cfg.ssl else None,
                timeout=timeout,
                heartbeat=HEARTBEAT_S,
                client_properties={"connection_name": name},
            )
            return connection, f"{host}:{port}"
        except ProbableAuthenticationError:
            raise BrokerError(
                "access_user",
                f"RabbitMQ at {host}:{port} refused the login of user {cfg.user!r}: wrong user name or access_password",
            ) from None
        except AMQPError as exc:
            if "Connection.OpenOk" in str(exc):  # the broker closed the connection instead of opening the vhost
                raise BrokerError(
                    "vhost",
                    f"RabbitMQ at {host}:{port} refused to open vhost {cfg.vhost!r} for user {cfg.user!r}: "
                    "the vhost does not exist or the user has no permission on it",
                ) from None
            failures.append(f"{host}:{port}: {cfg.scrub(_reason(exc))}")
        except Exception as exc:  # refused, timed out, TLS handshake, name resolution ...
            failures.append(f"{host}:{port}: {cfg.scrub(_reason(exc))}")
    raise BrokerError("connect_address", "cannot connect to RabbitMQ at " + "; ".join(failures))


async def _close_quietly(closable: AbstractConnection | AbstractChannel | None) -> None:
    if closable is None:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await closable.close()


async def exchange_type(connection: AbstractConnection, name: str) -> str | None:
    """``"fanout"`` if exchange ``name`` is a fanout exchange, else its type; None if it does not exist.

    AMQP has no way to *read* an exchange's type: a passive declare says only whether the
    exchange exists. But a non-passive ``exchange.declare`` of an existing exchange is a no-op
    when its arguments are equivalent, and is refused with ``406 PRECONDITION_FAILED -
    inequivalent arg 'type' ... current is 'direct'`` when the type differs. RabbitMQ compares
    the type *before* ``durable``, ``auto_delete``, ``internal`` and the arguments
    (``rabbit_exchange:assert_equivalence``), so:

    * the passive declare first makes sure we never create an exchange (declaring a missing one
      would create it);
    * then we declare it as fanout with the usual flags (durable, not auto-delete, not internal);
      a 406 naming ``type`` gives the real type; a 406 naming one of the flags proves the type
      matched, and we flip that flag and declare again, so the common answer is a plain
      declare-ok; a 406 naming an argument (``alternate-exchange``) also comes after the type check.

    Each refused declare closes its channel, so every attempt uses a throwaway channel. The
    management API would tell the type directly but is an optional plugin; declaring needs
    only the ``configure`` permission on the exchange. The pre-declared ``amq.*`` exchanges
    have fixed types and are answered from the table. The one side effect is a race: if
    someone deletes the exchange between the passive check and the declare, the declare
    recreates it as a durable fanout exchange.
    """
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, passive=True)
    except ChannelNotFoundEntity:
        return None
    finally:
        await _close_quietly(channel)
    if name in _BUILTIN_EXCHANGES:
        return _BUILTIN_EXCHANGES[name]
    flags = {"durable": True, "auto_delete": False, "internal": False}
    for _ in range(len(flags) + 1):
        channel = await connection.channel()
        try:
            await channel.declare_exchange(
                name,
                aio_pika.ExchangeType.FANOUT,
                durable=flags["durable"],
                auto_delete=flags["auto_delete"],
                internal=flags["internal"],
            )
            return FANOUT
        except ChannelPreconditionFailed as exc:
            match = _INEQUIVALENT.search(str(exc))
            if match is None:
                raise
            arg, current = match.group(1), match.group(2)
            if arg == "type":
                return current or "not fanout"
            if arg not in flags:
                return FANOUT  # an argument differs: the type was compared first and matched
            flags[arg] = not flags[arg]
        finally:
            await _close_quietly(channel)
    return FANOUT


# -- a running trigger ------------------------------------------------------------------------------


class ChannelLost(Exception):
    """The consuming channel or its connection went away."""


@dataclass(eq=False, slots=True)
class _Session:
    """One channel's deliveries. Delivery tags mean something only on the channel that gave them out."""

    channel_id: str
    in_flight: dict[int, AbstractIncomingMessage] = field(default_factory=dict)  # unacked, in tag order
    finished: set[int] = field(default_factory=set)  # terminal, waiting for their ack
    alive: bool = True
    ack_wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # nothing unacked, or the channel is gone

    def end(self) -> None:
        self.alive = False
        self.idle.set()


class _Runner:
    """One trigger's consumer: connect, declare and bind the queue, consume, hand over, ack when done, reconnect."""

    def __init__(self, connector: RabbitMQConnector, cfg: RabbitMQTriggerConfig) -> None:
        self.connector = connector
        self.ctx = connector.ctx
        self.cfg = cfg
        self.state = "starting"
        self.first_attempt_done = asyncio.Event()
        self.session: _Session | None = None
        self.address: str | None = None
        self.attempt = 0
        self.stopping = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.consumed = 0
        self.redelivered = 0
        self.acked = 0
        self.published = 0
        self.dropped = 0
        self.connects = 0
        self.stale_completions = 0
        self.finished: dict[str, int] = {}
        self._inbox: asyncio.Queue[tuple[_Session, AbstractIncomingMessage]] = asyncio.Queue(maxsize=2 * cfg.prefetch)
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._stop_listening = self.ctx.completion.listen(cfg.trigger_id, self.on_completion)

    def start(self) -> None:
        name = self.cfg.trigger_id
        self._pump_task = asyncio.create_task(self._pump(), name=f"rabbitmq-pump-{name}")
        self._task = asyncio.create_task(self._run(), name=f"rabbitmq-{name}")

    # -- errors and status ---------------------------------------------------------------------------

    def error(self, what: str, text: str) -> None:
        text = self.cfg.scrub(f"{what}: {text}")[:1000]
        if text != self.last_error:
            log.warning("rabbitmq trigger %s: %s", self.cfg.trigger_id, text)
        self.last_error = text
        self.last_error_at = time.time()

    def status(self) -> dict[str, Any]:
        session = self.session
        cfg = self.cfg
        return {
            "consumer_state": self.state,
            "connected": session is not None and session.alive,
            "address": self.address,
            "vhost": cfg.vhost,
            "user": cfg.user,
            "exchange": cfg.exchange,
            "queue": cfg.queue,
            "prefetch": cfg.prefetch,
            "in_flight": len(session.in_flight) if session is not None and session.alive else 0,
            "consumed": self.consumed,
            "redelivered": self.redelivered,
            "published": self.published,
            "acked": self.acked,
            "dropped": self.dropped,
            "finished": dict(self.finished),
            "stale_completions": self.stale_completions,  # of an earlier channel's deliveries (redelivered)
            "connects": self.connects,
            "last_error": self.last_error,
            "last_error_time": _iso(self.last_error_at),
        }

    async def lag(self) -> Lag:
        """Messages in the trigger's queue (ready, from a passive declare) plus those delivered and not
        yet finished; their ages are not known. Unknown while not consuming."""
        queue, session = self._queue, self.session
        if self.state != "connected" or queue is None or session is None or not session.alive:
            return UNKNOWN_LAG
        channel = await queue.channel.get_underlay_channel()
        declared = await channel.queue_declare(queue=self.cfg.queue, passive=True)
        records = int(declared.message_count or 0) + len(session.in_flight)
        return Lag.behind(records, None, None)

    # -- connection loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self.stopping:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except BrokerError as exc:
                self.error("connecting", exc.message)
            except ChannelLost as exc:
                self.error("connection lost", str(exc))
            except Exception as exc:
                self.error("consuming", _reason(exc))
            self.first_attempt_done.set()
            if self.stopping:
                break
            self.state = "backoff"
            delay = _backoff(self.attempt)
            self.attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
        self.state = "stopped"

    async def _consume(self) -> None:
        cfg = self.cfg
        self.state = "connecting"
        connection, address = await connect(
            cfg, name=f"triggerbus rabbitmq trigger {cfg.trigger_id} ({self.ctx.node_id})"
        )
        session: _Session | None = None
        acker: asyncio.Task[None] | None = None
        lost = asyncio.Event()
        reasons: list[str] = []

        def on_close(_sender: Any, exc: BaseException | None = None) -> None:
            reasons.append(_reason(exc) if exc is not None else "closed")
            if session is not None:
                session.end()
            lost.set()

        try:
            connection.close_callbacks.add(on_close)
            channel = await connection.channel()
            channel.close_callbacks.add(on_close)
            await channel.set_qos(prefetch_count=cfg.prefetch)
            exchange = await channel.get_exchange(cfg.exchange, ensure=True)  # passive: never creates it
            queue = await channel.declare_queue(cfg.queue, durable=True)
            await queue.bind(exchange, routing_key="")
            session = _Session(uuid.uuid4().hex[:12])
            underlay = await channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.add(
                lambda _frame: on_close(None, ChannelLost(f"the broker cancelled the consumer of queue {cfg.queue}"))
            )
            self._queue = queue
            self.session = session
            self._consumer_tag = await queue.consume(partial(self._on_message, session), no_ack=False)
            self.address = address
            self.connects += 1
            self.attempt = 0
            self.state = "connected"
            self.first_attempt_done.set()
            if self.connects > 1:
                log.info("rabbitmq trigger %s: consuming %s again", cfg.trigger_id, cfg.queue)
            acker = asyncio.create_task(self._ack_loop(session), name=f"rabbitmq-ack-{cfg.trigger_id}")
            waiters = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self._stop.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if lost.is_set() and not self.stopping:
                raise ChannelLost(cfg.scrub("; ".join(dict.fromkeys(reasons)) or "closed"))
        finally:
            if session is not None:
                session.end()  # its deliveries go back to the queue with the channel
            self._queue = None
            self._consumer_tag = None
            await stop_tasks(acker)
            await _close_quietly(connection)

    # -- deliveries ----------------------------------------------------------------------------------

    async def _on_message(self, session: _Session, message: AbstractIncomingMessage) -> None:
        """Called by aio-pika per delivery, in delivery order: note it, hand it to the pump."""
        tag = message.delivery_tag
        if not session.alive or tag is None:
            return  # the channel is gone: the broker gives the message to the next consumer
        session.in_flight[tag] = message
        session.idle.clear()
        self.consumed += 1
        if message.redelivered:
            self.redelivered += 1
        try:
            self._inbox.put_nowait((session, message))
        except asyncio.QueueFull:  # cannot happen while prefetch bounds deliveries; give it back
            session.in_flight.pop(tag, None)
            self.error("inbox full", f"message {tag} returned to the queue")
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)

    async def _pump(self) -> None:
        """Turn deliveries into stream items and hand them to the bus, many per publish."""
        while True:
            entries = [await self._inbox.get()]
            while len(entries) < PUMP_CHUNK and not self._inbox.empty():
                entries.append(self._inbox.get_nowait())
            try:
                await self._hand_over(entries)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Not expected; these deliveries stay unacked and come back with the next channel.
                log.exception("rabbitmq trigger %s: handing over deliveries failed", self.cfg.trigger_id)
                self.error("handing over deliveries", _reason(exc))

    async def _hand_over(self, entries: list[tuple[_Session, AbstractIncomingMessage]]) -> None:
        items: list[StreamItem] = []
        oversized: list[tuple[StreamItem, int]] = []
        limit = self.connector.max_message_bytes
        for session, message in entries:
            if not session.alive:
                continue  # its channel is gone: redelivered on the next one
            item, raw_size = self._item(session, message)
            if max(raw_size, item.size) > limit:
                oversized.append((item, raw_size))
            else:
                items.append(item)
        sessions = [session for session, _ in entries]
        if items:
            await self._retry("handing messages to the bus", sessions, partial(self._publish, items))
        for item, raw_size in oversized:
            await self._retry("recording a dropped message", sessions, partial(self._drop, item, raw_size, limit))

    def _item(self, session: _Session, message: AbstractIncomingMessage) -> tuple[StreamItem, int]:
        cfg = self.cfg
        tag = int(message.delivery_tag or 0)
        body = message.body
        text, is_b64 = decode_message(body)
        size = len(text) + 2 if is_b64 else len(json.dumps(text, ensure_ascii=False).encode())
        source: dict[str, Any] = {
            "exchange": cfg.exchange,
            "queue": cfg.queue,
            "channel": session.channel_id,
            "delivery_tag": tag,
            "redelivered": bool(message.redelivered),
        }
        if message.message_id:
            source["message_id"] = str(message.message_id)
        item = StreamItem(
            item_id=item_id(cfg.trigger_id, session.channel_id, tag),
            trigger_id=cfg.trigger_id,
            trigger_type=TRIGGER_TYPE,
            function_urn=cfg.function_urn,
            data={"message": text, "base64": is_b64, "exchange": cfg.exchange, "instance_id": cfg.instance_id},
            size=size,
            source=source,
            batch_size=cfg.batch_size,
            window_ms=cfg.window_ms,
        )
        return item, len(body)

    async def _retry(self, what: str, sessions: list[_Session], step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` until it succeeds, or until no channel could ack its messages any more."""
        while True:
            try:
                await step()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error(what, _reason(exc))
                if not any(s.alive for s in sessions):
                    return  # the broker redelivers them on the next channel
                await asyncio.sleep(1.0)

    async def _publish(self, items: list[StreamItem]) -> None:
        await self.ctx.ingest.publish(items)
        self.published += len(items)

    async def _drop(self, item: StreamItem, raw_size: int, limit: int) -> None:
        """A body too large for any event: a DISCARD record says why, then the completion acks it."""
        source = item.source
        where = f"from exchange {self.cfg.exchange!r}"
        if "message_id" in source:
            where += f" (message_id {source['message_id']!r})"
        encoded = "" if item.size <= raw_size else f" ({item.size} bytes in the event)"
        reason = (
            f"RabbitMQ message {where} is {raw_size} bytes{encoded}, over the {limit}-byte limit: {DROP_RULE}; "
            "it was not delivered to the function"
        )
        item.source = {**source, "size": raw_size}
        request_id = await self.ctx.ingest.reject(
            [item], status=AsyncStatus.DISCARD, code=OVERSIZED_CODE, reason=reason
        )
        self.dropped += 1
        try:
            await self.ctx.state.audit(
                "rabbitmqMessageDropped",
                self.cfg.trigger_id,
                {**item.source, "limit": limit, "rule": DROP_RULE, "request_id": request_id},
            )
        except Exception as exc:
            self.error("auditing a dropped message", _reason(exc))

    # -- completions and acks ------------------------------------------------------------------------

    def on_completion(self, completion: Completion) -> None:
        """Called by the invoker (synchronously) when items of this trigger are terminal."""
        session = self.session
        status = str(completion.status)
        woke = False
        for value in completion.item_ids:
            parsed = parse_item_id(self.cfg.trigger_id, value)
            if parsed is None:
                continue
            channel_id, tag = parsed
            if session is None or not session.alive or channel_id != session.channel_id or tag not in session.in_flight:
                self.stale_completions += 1  # an earlier channel's delivery: the broker redelivers it
                continue
            if tag in session.finished:
                continue  # announced again (the invocation was redelivered on the bus)
            session.finished.add(tag)
            self.finished[status] = self.finished.get(status, 0) + 1
            woke = True
        if woke and session is not None:
            session.ack_wake.set()

    async def _ack_loop(self, session: _Session) -> None:
        while session.alive:
            await session.ack_wake.wait()
            session.ack_wake.clear()
            try:
                await self._ack_finished(session)
            except Exception as exc:
                # The channel died under us: everything unacked goes back to the queue.
                self.error("acking", _reason(exc))
                return

    async def _ack_finished(self, session: _Session) -> None:
        """Ack every finished delivery (see :func:`plan_acks`); a tag leaves ``in_flight`` before its ack."""
        # sorted: deliveries arrive in tag order, but a multiple ack must never rely on that
        upto, singles = plan_acks(sorted(session.in_flight), session.finished)
        session.finished.clear()
        covered = [tag for tag in session.in_flight if upto is not None and tag <= upto]
        last = session.in_flight[upto] if upto is not None else None
        messages = [session.in_flight.pop(tag) for tag in singles]
        for tag in covered:
            del session.in_flight[tag]
        if last is not None:
            await last.ack(multiple=True)
            self.acked += len(covered)
        for message in messages:
            await message.ack()
            self.acked += 1
        if not session.in_flight:
            session.idle.set()  # only now: stop() closes the channel once idle, and the acks must go first

    # -- stopping ------------------------------------------------------------------------------------

    async def stop(self, drain_s: float) -> None:
        """Stop consuming, give in-flight messages ``drain_s`` to finish (and be acked), close the channel.

        What is still unacked then goes back to the queue and is delivered again later.
        """
        self.stopping = True
        try:
            queue, tag, session = self._queue, self._consumer_tag, self.session
            if queue is not None and tag is not None and session is not None and session.alive:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await queue.cancel(tag)  # no new deliveries; the unacked ones can still be acked
                if session.in_flight:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(drain_s):
                            await session.idle.wait()
            self._stop.set()
            if self._task is not None:  # let it close the connection itself; cancel it if it hangs
                await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT_S * 2)
            await stop_tasks(self._task, self._pump_task)
        finally:
            self._stop_listening()
            self.session = None
            self.state = "stopped"


# -- the connector ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Parked:
    """A deactivated trigger whose queue is deleted if the trigger turns out to be deleted."""

    cfg: RabbitMQTriggerConfig
    due: float
    interval: float = SWEEP_FIRST_S
    failures: int = 0


class RabbitMQConnector(RunnerConnector[_Runner]):
    """RABBITMQ triggers; also deletes the queue of a trigger that was deleted.

    The connector interface has no "deleted" call: deleting an active trigger deactivates it,
    then removes it from the store (with its checkpoints). So each activation writes a
    checkpoint entry (:data:`MARKER`), a deactivated trigger is *parked*, and a sweeper checks
    parked triggers for that entry, soon after deactivation and then less often: once it is
    gone the trigger was deleted, and its queue is deleted too. A disabled trigger keeps its
    queue. (A trigger deleted while disabled *and* after a restart of this process was never
    parked here; its queue stays until deleted by hand, see docs/rabbitmq.md.)
    """

    trigger_types: ClassVar[tuple[str, ...]] = (TRIGGER_TYPE,)

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        self._parked: dict[str, _Parked] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_wake = asyncio.Event()
        region = ctx.region
        register_assembler(TRIGGER_TYPE, lambda items: assemble_event(region, items))

    @property
    def instances(self) -> dict[str, Any]:
        return dict(self.ctx.options.get("rabbitmq_instances") or {})

    @property
    def max_message_bytes(self) -> int:
        return int(self.ctx.options.get("rabbitmq_max_message_bytes") or MAX_MESSAGE_BYTES)

    @property
    def drain_s(self) -> float:
        return float(self.ctx.options.get("rabbitmq_drain_s", DRAIN_S))

    def config(self, trigger: TriggerSpec) -> RabbitMQTriggerConfig:
        return resolve_config(trigger, self.instances)

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="rabbitmq-queue-sweeper")

    async def close(self) -> None:
        await stop_tasks(self._sweeper)
        await super().close()

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        cfg = self.config(trigger)
        await self.check_broker(cfg)
        return {} if "batch_window_ms" in trigger.event_data else {"batch_window_ms": cfg.window_ms}

    async def check_broker(self, cfg: RabbitMQTriggerConfig) -> None:
        """Log in and make sure the exchange exists and is fanout; FSS.0400 naming the field otherwise."""
        try:
            connection, address = await connect(cfg, name=f"triggerbus rabbitmq check {cfg.trigger_id}")
        except BrokerError as exc:
            raise bad_request(f"event_data.{exc.field_name}: {exc.message}") from None
        where = f"vhost {cfg.vhost!r} on {address}"
        try:
            kind = await exchange_type(connection, cfg.exchange)
            if kind is None:
                raise bad_request(f"event_data.exchange_name: exchange {cfg.exchange!r} does not exist in {where}")
            if kind != FANOUT:
                raise bad_request(
                    f"event_data.exchange_name: exchange {cfg.exchange!r} is a {kind} exchange; RABBITMQ triggers "
                    "support only fanout exchanges (as on FunctionGraph): use a fanout exchange instead"
                )
            await self._check_queue_permissions(connection, cfg, where)
        except FSSError:
            raise
        except ChannelAccessRefused as exc:
            raise bad_request(
                f"event_data.exchange_name: user {cfg.user!r} may not declare exchange {cfg.exchange!r} in {where}, "
                f"which Triggerbus needs to check that it is a fanout exchange ({cfg.scrub(_reason(exc))})"
            ) from None
        except (AMQPError, OSError, TimeoutError) as exc:
            raise bad_request(
                f"event_data.exchange_name: checking exchange {cfg.exchange!r} in {where} failed: "
                f"{cfg.scrub(_reason(exc))}"
            ) from None
        finally:
            await _close_quietly(connection)

    @staticmethod
    async def _check_queue_permissions(connection: AbstractConnection, cfg: RabbitMQTriggerConfig, where: str) -> None:
        """Declare, bind and consume the trigger's queue once, as an exclusive queue deleted right after.

        The user needs ``configure`` on the queue, ``write`` on it and ``read`` on the exchange to
        bind, ``read`` on it to consume. Trying is the only way AMQP tells; the exclusive queue
        (same name, so the same permission patterns apply) never outlives this check.
        """
        channel = await connection.channel()
        step = f"create queue {cfg.queue!r}"
        try:
            queue = await channel.declare_queue(cfg.queue, exclusive=True, auto_delete=True)
            step = f"bind queue {cfg.queue!r} to exchange {cfg.exchange!r}"
            await queue.bind(cfg.exchange, routing_key="")
            step = f"consume queue {cfg.queue!r}"
            tag = await queue.consume(_ignore, no_ack=False)
            await queue.cancel(tag)
            step = f"delete queue {cfg.queue!r}"
            await queue.delete(if_unused=False, if_empty=False)
        except ChannelAccessRefused as exc:
            raise bad_request(
                f"event_data.access_user: user {cfg.user!r} may not {step} in {where}: {cfg.scrub(_reason(exc))}"
            ) from None
        finally:
            await _close_quietly(channel)

    async def activate(self, trigger: TriggerSpec) -> None:
        cfg = self.config(trigger)
        self._parked.pop(trigger.trigger_id, None)
        await self.ctx.state.put_checkpoint(
            cfg.trigger_id, MARKER, {"queue": cfg.queue, "exchange": cfg.exchange, "vhost": cfg.vhost}
        )
        runner = _Runner(self, cfg)
        await self.replace_runner(trigger.trigger_id, runner)
        runner.start()
        # Return once the queue is bound (messages published from now on are kept), or after
        # ACTIVATE_WAIT_S; a broker that is not there is retried in the background (see the state).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACTIVATE_WAIT_S):
                await runner.first_attempt_done.wait()

    async def deactivate(self, trigger_id: str) -> None:
        runner = self._runners.pop(trigger_id, None)
        if runner is None:
            return
        await runner.stop(self.drain_s)
        self._parked[trigger_id] = _Parked(runner.cfg, time.monotonic() + SWEEP_FIRST_S)
        self._sweep_wake.set()

    async def deleted(self, trigger: TriggerSpec) -> None:
        """Delete the trigger's queue now; on failure the sweep keeps trying (and finally audits)."""
        parked = self._parked.pop(trigger.trigger_id, None)
        cfg = parked.cfg if parked is not None else self.config(trigger)
        try:
            await self.delete_queue(cfg)
        except Exception as exc:
            log.warning(
                "rabbitmq trigger %s: deleting queue %s failed, retrying: %s",
                trigger.trigger_id,
                cfg.queue,
                cfg.scrub(exc.message if isinstance(exc, BrokerError) else _reason(exc)),
            )
            self._parked[trigger.trigger_id] = _Parked(cfg, time.monotonic() + _backoff(1), failures=1)
            self._sweep_wake.set()

    # -- the queue of a deleted trigger ----------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            now = time.monotonic()
            due = [(tid, p) for tid, p in self._parked.items() if p.due <= now]
            for trigger_id, parked in due:
                await self._sweep_one(trigger_id, parked)
            wait = min((p.due for p in self._parked.values()), default=now + SWEEP_CAP_S) - time.monotonic()
            self._sweep_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, wait)):
                    await self._sweep_wake.wait()

    async def _sweep_one(self, trigger_id: str, parked: _Parked) -> None:
        try:
            still_there = await self.ctx.state.get_checkpoint(trigger_id, MARKER) is not None
        except Exception as exc:
            log.warning("rabbitmq trigger %s: reading its queue marker failed: %s", trigger_id, _reason(exc))
            still_there = True
        if self._parked.get(trigger_id) is not parked:
            return  # activated again meanwhile
        if still_there:
            parked.interval = min(SWEEP_CAP_S, parked.interval * 2)
            parked.due = time.monotonic() + parked.interval
            return
        try:
            await self.delete_queue(parked.cfg)
        except Exception as exc:
            parked.failures += 1
            text = parked.cfg.scrub(exc.message if isinstance(exc, BrokerError) else _reason(exc))
            if parked.failures < QUEUE_DELETE_ATTEMPTS:
                parked.due = time.monotonic() + _backoff(parked.failures)
                return
            log.error(
                "rabbitmq trigger %s was deleted but its queue %s was not: %s", trigger_id, parked.cfg.queue, text
            )
            with contextlib.suppress(Exception):
                await self.ctx.state.audit(
                    "rabbitmqQueueNotDeleted", trigger_id, {"queue": parked.cfg.queue, "error": text}
                )
        if self._parked.get(trigger_id) is parked:
            del self._parked[trigger_id]

    async def delete_queue(self, cfg: RabbitMQTriggerConfig) -> int:
        """Delete a trigger's queue; returns how many messages it still held (now gone)."""
        connection, _ = await connect(cfg, name=f"triggerbus rabbitmq cleanup {cfg.trigger_id}")
        try:
            channel = await connection.channel()
            result = await channel.queue_delete(cfg.queue)
        finally:
            await _close_quietly(connection)
        dropped = int(getattr(result, "message_count", 0) or 0)
        log.info(
            "rabbitmq trigger %s was deleted: queue %s deleted with %d messages", cfg.trigger_id, cfg.queue, dropped
        )
        with contextlib.suppress(Exception):
            await self.ctx.state.audit(
                "rabbitmqQueueDeleted",
                cfg.trigger_id,
                {"queue": cfg.queue, "exchange": cfg.exchange, "vhost": cfg.vhost, "messages_dropped": dropped},
            )
        return dropped

    # -- checkpoint: where the queue stands ------------------------------------------------------------

    async def get_checkpoint(self, trigger: TriggerSpec) -> dict[str, Any]:
        """The trigger's queue as the broker sees it: messages waiting (ready, not delivered) and consumers."""
        cfg = self.config(trigger)
        body: dict[str, Any] = {"queue": cfg.queue, "exchange": cfg.exchange, "vhost": cfg.vhost}
        try:
            connection, _ = await connect(cfg, name=f"triggerbus rabbitmq checkpoint {cfg.trigger_id}")
        except BrokerError as exc:
            raise unavailable(f"reading queue {cfg.queue}: {exc.message}") from None
        try:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(cfg.queue, passive=True)
            except ChannelNotFoundEntity:
                return {**body, "exists": False}
            result = declared.declaration_result
            return {
                **body,
                "exists": True,
                "messages_ready": int(result.message_count or 0),
                "consumers": int(result.consumer_count or 0),
            }
        except FSSError:
            raise
        except Exception as exc:
            raise unavailable(f"reading queue {cfg.queue}: {cfg.scrub(_reason(exc))}") from None
        finally:
            await _close_quietly(connection)
