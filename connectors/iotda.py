"""IOTDA triggers: device messages read from an MQTT broker, delivered as IoTDA forwarding events.

Devices publish to an MQTT broker (Mosquitto, EMQX, ...) on IoTDA's topics; each trigger
subscribes its ``topics`` and turns every message into the IoTDA data-forwarding envelope
(contract §1.14) that FunctionGraph functions read::

    {"resource": "device.message", "event": "report", "event_time": "20260703T183519Z",
     "event_time_ms": "...", "request_id": "...",
     "notify_data": {"header": {"device_id", "product_id", "node_id", "app_id", "gateway_id"},
                     "body": {"topic": "...", "content": ...}}}

* ``$oc/devices/{device_id}/sys/properties/report`` -> ``device.property`` with the device's
  ``services`` as the body; ``.../sys/gateway/sub_devices/properties/report`` -> one such event
  per sub-device; every other topic -> ``device.message`` with ``{"topic", "content"}``.
* One async invocation per event (``ctx.invocations.enqueue``), not the stream batcher: IoTDA
  forwards every report on its own and handlers read one ``notify_data`` per event.

Delivery (see docs/iotda.md): each trigger keeps one MQTT session under a client id derived from
its id, never cleaned (MQTT 5 session expiry ``session_expiry_s``; MQTT 3.1.1 clean_session=0),
so QoS 1 messages published while the trigger is disabled or the service restarts wait in the
broker. Acks are manual: a QoS 1 message is PUBACKed only after its invocation is durable on the
bus, so a crash in between makes the broker send it again (at least once; a redelivered message
may run twice). QoS 0 is at most once: what is published while nobody is connected is lost.

paho-mqtt runs its network loop in a thread. Its callbacks only hand messages to the event loop
(``call_soon_threadsafe`` into a bounded queue); everything else happens on the loop. With several
service processes, a lease per trigger makes sure only one of them holds the MQTT session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from bus.aio import stop_tasks
from connectors.base import Connector, ConnectorContext, TriggerSpec
from invoker.envelope import StreamItem
from invoker.ingest import ASSEMBLY_FAILED_CODE, OVERSIZED_CODE
from schemas.errors import FSSError, bad_request
from schemas.events.iotda import IoTDAEvent, IoTDAMessageBody, IoTDAPropertiesBody, iotda_time
from schemas.records import AsyncStatus

log = logging.getLogger(__name__)

TRIGGER_TYPE = "IOTDA"
DEFAULT_EVENT_LIMIT = 256 * 1024  # an async event, like an async invocation request body
RECEIVE_MAXIMUM = 100  # MQTT 5: unacked QoS 1 messages the broker may have in flight to us
INBOX_SIZE = 1000  # messages waiting for the event loop, per trigger
QOS0_ADMIT_BELOW = INBOX_SIZE - 2 * RECEIVE_MAXIMUM  # QoS 0 never takes the room QoS 1 needs
KEEPALIVE_S = 30
PIPELINE_DEPTH = 32  # messages of one trigger being handed to the bus at once
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30


def reconnect_backoff(attempt: int) -> float:
    """The wait before reconnect number ``attempt`` (0-based): capped exponential backoff with equal
    jitter, from 0.5-1 s up to 15-30 s. paho's own reconnect delay doubles without jitter, so every
    trigger of a restarted broker would come back in lockstep; :class:`MqttLink` sets this instead."""
    ceiling = min(float(RECONNECT_MAX_S), RECONNECT_MIN_S * 2.0 ** min(attempt, 16))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class PoisonMessage(ValueError):
    """A message that can never become an event; it is recorded (DISCARD), acked and skipped."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# ------------------------------------------------------------------------------ event mapping


def client_id_for(trigger_id: str) -> str:
    """Stable per trigger, 23 characters: the length every MQTT 3.1.1 broker must accept."""
    return "tb-" + hashlib.sha256(trigger_id.encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """What an MQTT topic says about the message: whose it is and what kind of report."""

    device_id: str | None
    kind: str  # "message" | "properties" | "gateway_properties"
    request_id: str | None  # IoTDA's ``...?request_id=<id>`` topic suffix


def parse_topic(topic: str) -> DeviceTopic:
    """``$oc/devices/{device_id}/sys/...``: the device id and report kind; other topics are messages."""
    path, _, query = topic.partition("?")
    request_id = query[len("request_id=") :] if query.startswith("request_id=") else None
    parts = path.split("/")
    if len(parts) < 4 or parts[0] != "$oc" or parts[1] != "devices" or not parts[2]:
        return DeviceTopic(None, "message", request_id or None)
    rest = "/".join(parts[3:])
    kind = {
        "sys/properties/report": "properties",
        "sys/gateway/sub_devices/properties/report": "gateway_properties",
    }.get(rest, "message")
    return DeviceTopic(parts[2], kind, request_id or None)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def message_content(payload: bytes) -> Any:
    """Parsed JSON if the payload is JSON, else its text, else (binary) its base64 form."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return text


@dataclass(frozen=True, slots=True)
class HeaderDefaults:
    """Trigger settings that go into ``notify_data.header``."""

    product_id: str | None = None
    app_id: str | None = None


def header_for(device_id: str | None, defaults: HeaderDefaults, gateway_id: str | None = None) -> dict[str, Any]:
    """IoTDA device ids are ``{product_id}_{node_id}``: the node id (and, when the trigger names no
    product, the product id) come from the device id. A directly connected device is its own gateway."""
    if device_id is None:
        return {"product_id": defaults.product_id, "app_id": defaults.app_id}
    product_id, node_id = defaults.product_id, device_id
    if product_id and device_id.startswith(product_id + "_"):
        node_id = device_id[len(product_id) + 1 :]
    elif not product_id and "_" in device_id.strip("_"):
        product_id, node_id = device_id.split("_", 1)
    return {
        "device_id": device_id,
        "product_id": product_id,
        "node_id": node_id,
        "app_id": defaults.app_id,
        "gateway_id": gateway_id or device_id,
    }


def _properties_body(services: object, received_time: str, where: str) -> IoTDAPropertiesBody:
    try:
        body = IoTDAPropertiesBody.model_validate({"services": services})
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in problem["loc"])
        raise PoisonMessage(
            ASSEMBLY_FAILED_CODE,
            f"property report on {where} is not {{'services': [{{'service_id', 'properties'}}]}}: "
            f"{loc}: {problem['msg']}",
        ) from None
    for service in body.services:
        if service.event_time is None:
            service.event_time = received_time  # IoTDA stamps reports the device did not date
    return body


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """One event for the function, and the request id its invocation gets."""

    request_id: str
    device_id: str | None
    event: IoTDAEvent


def device_events(topic: str, payload: bytes, received: datetime, defaults: HeaderDefaults) -> list[DeviceEvent]:
    """The IoTDA events one MQTT message stands for (one, or one per sub-device of a gateway report)."""
    where = parse_topic(topic)
    received_time = iotda_time(received)

    def build(resource: str, body: dict[str, Any], header: dict[str, Any]) -> DeviceEvent:
        request_id = str(uuid.uuid4())
        event = IoTDAEvent.build(
            resource=resource,
            event="report",
            body=body,
            event_time=received,
            request_id=where.request_id or request_id,
            **header,
        )
        return DeviceEvent(request_id, header.get("device_id"), event)

    if where.kind == "message":
        body = IoTDAMessageBody(topic=topic, content=message_content(payload)).dump()
        return [build("device.message", body, header_for(where.device_id, defaults))]
    content = message_content(payload)
    if not isinstance(content, dict):
        raise PoisonMessage(ASSEMBLY_FAILED_CODE, f"property report on {topic} is not a JSON object")
    if where.kind == "properties":
        body = _properties_body(content.get("services"), received_time, topic).dump()
        return [build("device.property", body, header_for(where.device_id, defaults))]
    devices = content.get("devices")
    if not isinstance(devices, list) or not devices:
        raise PoisonMessage(ASSEMBLY_FAILED_CODE, f"gateway property report on {topic} has no 'devices' list")
    events = []
    for index, device in enumerate(devices):
        sub_id = device.get("device_id") if isinstance(device, dict) else None
        if not isinstance(sub_id, str) or not sub_id:
            raise PoisonMessage(
                ASSEMBLY_FAILED_CODE, f"gateway property report on {topic}: devices[{index}] has no device_id"
            )
        body = _properties_body(device.get("services"), received_time, f"{topic} devices[{index}]").dump()
        events.append(build("device.property", body, header_for(sub_id, defaults, gateway_id=where.device_id)))
    return events


# ------------------------------------------------------------------------------ the MQTT link


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """A PUBLISH handed from paho's thread to the event loop."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    generation: int  # the connection it arrived on: its PUBACK may only go back on that one
    received: float
    dup: bool = False  # the broker says it may have sent this packet before


@dataclass(frozen=True, slots=True)
class LinkConfig:
    host: str
    port: int
    topics: tuple[str, ...]
    qos: int
    client_id: str
    username: str | None
    password: str | None
    mqtt_version: str
    session_expiry_s: int


class MqttLink:
    """One trigger's MQTT session: a paho client whose thread feeds a bounded asyncio queue.

    Thread rules: paho callbacks run in paho's thread and touch only the counters guarded by
    ``_lock`` and ``loop.call_soon_threadsafe``; ``ack`` runs on the event loop and sends the
    PUBACK only if the message came in on the current connection (after a reconnect the broker
    resends unacked messages itself, so acking an old packet id could ack a different message).
    """

    def __init__(self, config: LinkConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.inbox: asyncio.Queue[MqttMessage] = asyncio.Queue(maxsize=INBOX_SIZE)
        self.connected = False
        self.subscribed = False
        self.session_present: bool | None = None
        self.last_error: str | None = None
        self.dropped_qos0 = 0
        self.stale_acks = 0
        self.needs_restart = False
        self.redeliveries_dropped = 0
        self._unacked: set[int] = set()  # packet ids in the inbox or in flight, not acked yet (loop thread)
        self._unacked_generation = 0
        self._lock = threading.Lock()
        self._generation = 0
        self._stopping = False
        self._failures = 0  # connection attempts failed (or connections lost) since the last success
        v5 = config.mqtt_version == "5"
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=None if v5 else False,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        if config.username or config.password:
            self.client.username_pw_set(config.username or "", config.password)
        self.client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)  # replaced at the first failure
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self) -> None:
        """Connect in paho's thread (retrying with backoff until stopped); returns at once."""
        if self.config.mqtt_version == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.config.session_expiry_s
            props.ReceiveMaximum = RECEIVE_MAXIMUM
            self.client.connect_async(
                self.config.host, self.config.port, KEEPALIVE_S, clean_start=False, properties=props
            )
        else:
            self.client.connect_async(self.config.host, self.config.port, KEEPALIVE_S)
        self.client.loop_start()

    async def stop(self) -> None:
        """Disconnect cleanly (the session stays on the broker) and end paho's thread."""
        if self._stopping:
            return
        self._stopping = True
        with self._lock:
            self._generation += 1  # nothing received so far is acked any more
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
        self.connected = False

    def ack(self, message: MqttMessage) -> None:
        if message.qos == 0:
            return
        with self._lock:
            if message.generation != self._generation:
                self.stale_acks += 1  # the broker resends it on the new connection
                return
            self.client.ack(message.mid, message.qos)
        if message.generation == self._unacked_generation:
            self._unacked.discard(message.mid)

    # -- paho's thread ---------------------------------------------------------------------------

    def _next_reconnect(self) -> None:
        """Make paho wait :func:`reconnect_backoff` before its next reconnect: ``reconnect_delay_set``
        resets paho's delay, so its next wait is exactly the (jittered) minimum given here. Called
        before paho waits: on a failed or refused connect and on a lost connection."""
        delay = reconnect_backoff(self._failures)
        self._failures += 1
        self.client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]  # paho sleeps any float

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            self._next_reconnect()
            return
        self.connected = True
        self._failures = 0
        self.session_present = bool(flags.session_present)
        # Subscribing again on every connect is harmless with a kept session and needed without one.
        client.subscribe([(topic, self.config.qos) for topic in self.config.topics])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._next_reconnect()
        self.last_error = (
            f"cannot reach the MQTT broker at {self.config.host}:{self.config.port}; "
            f"retrying with jittered backoff ({RECONNECT_MIN_S / 2:g} s up to {RECONNECT_MAX_S} s)"
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [f"{t} ({r})" for t, r in zip(self.config.topics, reasons, strict=False) if r.is_failure]
        if refused:
            self.last_error = f"broker refused the subscription to {', '.join(refused)}"
            self.subscribed = False
        else:
            self.subscribed = True
            self.last_error = None

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        with self._lock:
            self._generation += 1
        was_connected, self.connected, self.subscribed = self.connected, False, False
        self._next_reconnect()
        if was_connected and not self._stopping:  # (a refused connect keeps its own message)
            self.last_error = f"disconnected from the broker ({reason}); reconnecting"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        message = MqttMessage(
            msg.topic, bytes(msg.payload), msg.qos, msg.mid, self._generation, time.time(), bool(msg.dup)
        )
        with contextlib.suppress(RuntimeError):  # the loop is closing: unacked messages come back later
            self.loop.call_soon_threadsafe(self._offer, message)

    # -- the event loop --------------------------------------------------------------------------

    def _offer(self, message: MqttMessage) -> None:
        if message.generation != self._unacked_generation:
            self._unacked.clear()  # a new connection: the broker sends every unacked message again
            self._unacked_generation = message.generation
        if message.qos > 0 and message.dup and message.mid in self._unacked:
            # A resend (DUP) of a packet we hold and have not acked yet, on the same connection
            # (Mosquitto does this under load): the PUBACK of the first copy answers both.
            self.redeliveries_dropped += 1
            return
        if message.qos == 0 and self.inbox.qsize() >= QOS0_ADMIT_BELOW:
            self.dropped_qos0 += 1  # at most once: QoS 0 has no redelivery to wait for
            if self.dropped_qos0 % 100 == 1:
                log.warning("MQTT client %s: inbox full, QoS 0 messages dropped", self.config.client_id)
            return
        try:
            self.inbox.put_nowait(message)
            if message.qos > 0:
                self._unacked.add(message.mid)
        except asyncio.QueueFull:
            # Only with a broker sending more unacked QoS 1 messages than the inbox holds (MQTT
            # 3.1.1 has no receive maximum): leave it unacked and reconnect so it comes again.
            self.needs_restart = True


# ------------------------------------------------------------------------------ the connector


@dataclass(slots=True)
class _Trigger:
    spec: TriggerSpec
    link_config: LinkConfig
    defaults: HeaderDefaults
    link: MqttLink | None = None
    consumer: asyncio.Task[None] | None = None
    supervisor: asyncio.Task[None] | None = None
    leased: bool = False
    received: int = 0
    delivered: int = 0
    rejected: int = 0
    last_error: str | None = None


class IoTDAConnector(Connector):
    trigger_types: ClassVar[tuple[str, ...]] = (TRIGGER_TYPE,)

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        self.lease_ttl = float(ctx.options.get("mqtt_lease_ttl_s", 10.0))
        self.event_limit = int(ctx.options.get("max_async_body", DEFAULT_EVENT_LIMIT))
        self.default_broker = str(ctx.options.get("mqtt_broker") or "")
        self._triggers: dict[str, _Trigger] = {}

    async def close(self) -> None:
        for trigger_id in list(self._triggers):
            await self.deactivate(trigger_id)

    # -- trigger lifecycle -------------------------------------------------------------------------

    def _broker(self, data: dict[str, Any]) -> tuple[str, int]:
        address = str(data.get("broker_address") or self.default_broker)
        if not address:
            raise bad_request(
                "event_data.broker_address: is required (this service has no default MQTT broker; "
                "set TRIGGERBUS_MQTT_BROKER to give it one)"
            )
        host, _, port = address.rpartition(":")
        return host.strip("[]"), int(port)

    def _link_config(self, trigger: TriggerSpec) -> LinkConfig:
        data = trigger.event_data
        host, port = self._broker(data)
        return LinkConfig(
            host=host,
            port=port,
            topics=tuple(data["topics"]),
            qos=int(data.get("qos", 1)),
            client_id=client_id_for(trigger.trigger_id),
            username=data.get("username") or None,
            password=data.get("password") or None,
            mqtt_version=str(data.get("mqtt_version", "5")),
            session_expiry_s=int(data.get("session_expiry_s", 86400)),
        )

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        host, port = self._broker(trigger.event_data)
        # The service default is written into the trigger: changing it later does not move the
        # trigger (and its session) to another broker.
        broker = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return {"client_id": client_id_for(trigger.trigger_id), "broker_address": broker}

    async def activate(self, trigger: TriggerSpec) -> None:
        if trigger.trigger_id in self._triggers:
            await self.deactivate(trigger.trigger_id)
        data = trigger.event_data
        try:
            link_config = self._link_config(trigger)
        except FSSError as exc:  # not a caller's mistake here: the trigger shows it as its last error
            raise RuntimeError(exc.message) from None
        state = _Trigger(
            spec=trigger,
            link_config=link_config,
            defaults=HeaderDefaults(product_id=data.get("product_id"), app_id=data.get("app_id")),
        )
        self._triggers[trigger.trigger_id] = state
        state.supervisor = asyncio.create_task(self._supervise(state), name=f"iotda-{trigger.trigger_id}")

    async def deactivate(self, trigger_id: str) -> None:
        state = self._triggers.pop(trigger_id, None)
        if state is None:
            return
        await stop_tasks(state.supervisor)
        await self._stop_link(state)
        if state.leased:
            with contextlib.suppress(Exception):
                await self.ctx.state.release_lease(self._lease_name(trigger_id), self.ctx.node_id)
            state.leased = False

    def status(self, trigger_id: str) -> dict[str, Any]:
        state = self._triggers.get(trigger_id)
        if state is None:
            return {}
        link = state.link
        cfg = state.link_config
        return {
            "client_id": cfg.client_id,
            "broker": f"{cfg.host}:{cfg.port}",
            "holds_session": state.leased,
            "connected": bool(link and link.connected),
            "subscribed": bool(link and link.subscribed),
            "session_present": link.session_present if link else None,
            "received": state.received,
            "delivered": state.delivered,
            "rejected": state.rejected,
            "dropped_qos0": link.dropped_qos0 if link else 0,
            "resends_ignored": link.redeliveries_dropped if link else 0,
            "last_error": state.last_error or (link.last_error if link else None),
        }

    # -- one trigger: lease, link and consumer -----------------------------------------------------------

    @staticmethod
    def _lease_name(trigger_id: str) -> str:
        return f"iotda:{trigger_id}"

    async def _supervise(self, state: _Trigger) -> None:
        """Hold the trigger's lease and keep a link running exactly while it is held."""
        name = self._lease_name(state.spec.trigger_id)
        renewed = 0.0
        while True:
            try:
                held = await self.ctx.state.acquire_lease(name, self.ctx.node_id, self.lease_ttl)
                if held:
                    renewed = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.last_error = f"renewing the session lease failed: {exc}"
                held = state.leased and time.monotonic() - renewed < self.lease_ttl
            state.leased = held
            if held and state.link is not None and state.link.needs_restart:
                log.warning("IOTDA trigger %s: inbox overflowed; reconnecting for redelivery", state.spec.trigger_id)
                await self._stop_link(state)
            if held and state.link is None:
                self._start_link(state)
            elif not held and state.link is not None:
                log.warning("IOTDA trigger %s: lease lost; leaving the MQTT session", state.spec.trigger_id)
                await self._stop_link(state)
            await asyncio.sleep(self.lease_ttl / 3)

    def _start_link(self, state: _Trigger) -> None:
        link = MqttLink(state.link_config, asyncio.get_running_loop())
        state.link = link
        link.start()
        state.consumer = asyncio.create_task(self._consume(state, link), name=f"iotda-consume-{state.spec.trigger_id}")

    async def _stop_link(self, state: _Trigger) -> None:
        consumer, link = state.consumer, state.link
        state.consumer = state.link = None
        await stop_tasks(consumer)
        if link is not None:
            await link.stop()

    async def _consume(self, state: _Trigger, link: MqttLink) -> None:
        """Hand messages to the bus, up to ``PIPELINE_DEPTH`` at once (they share SQLite commits).

        PUBACKs go out in arrival order (MQTT wants them in the order of the PUBLISHes), each once
        its own message and every earlier one are durable: ``_ack_in_order`` awaits them FIFO.
        """
        in_flight: asyncio.Queue[tuple[MqttMessage, asyncio.Task[None]]] = asyncio.Queue(maxsize=PIPELINE_DEPTH)
        running: set[asyncio.Task[None]] = set()
        acker = asyncio.create_task(self._ack_in_order(state, link, in_flight))
        try:
            while True:
                message = await link.inbox.get()
                state.received += 1
                task = asyncio.create_task(self._handle(state, message))
                running.add(task)
                task.add_done_callback(running.discard)
                await in_flight.put((message, task))
        finally:
            children = (acker, *running)
            for task in children:
                task.cancel()  # unacked: the broker sends them again on the next connection
            await asyncio.gather(*children, return_exceptions=True)

    @staticmethod
    async def _ack_in_order(
        state: _Trigger, link: MqttLink, in_flight: asyncio.Queue[tuple[MqttMessage, asyncio.Task[None]]]
    ) -> None:
        while True:
            message, task = await in_flight.get()
            try:
                await task
            except asyncio.CancelledError:
                if task.cancelled():
                    return
                raise
            except Exception as exc:  # _handle catches everything: this is a bug; do not ack
                log.exception("IOTDA trigger %s: handling a message failed", state.spec.trigger_id)
                state.last_error = f"handling a message failed: {exc}"
                continue
            link.ack(message)

    async def _handle(self, state: _Trigger, message: MqttMessage) -> None:
        """Enqueue the message's events, or record why it has none; returns once that is durable."""
        try:
            events = device_events(
                message.topic, message.payload, datetime.fromtimestamp(message.received, UTC), state.defaults
            )
            for event in events:
                self._check_size(event, message)
        except PoisonMessage as poison:
            await self._reject(state, message, poison)
        except Exception as exc:  # a bug must not wedge the trigger: record it, move on
            log.exception("IOTDA trigger %s: building the event failed", state.spec.trigger_id)
            await self._reject(state, message, PoisonMessage(ASSEMBLY_FAILED_CODE, f"building the event failed: {exc}"))
        else:
            await self._deliver(state, message, events)

    def _check_size(self, event: DeviceEvent, message: MqttMessage) -> None:
        size = len(event.event.dump_json().encode())
        if size > self.event_limit:
            raise PoisonMessage(
                OVERSIZED_CODE,
                f"message on {message.topic} makes a {size}-byte event, over the {self.event_limit}-byte "
                "limit of an async event; it was not delivered to the function",
            )

    async def _deliver(self, state: _Trigger, message: MqttMessage, events: list[DeviceEvent]) -> None:
        """Enqueue every event (retrying; the same request ids make a retry a no-op for the invoker)."""
        for event in events:
            while True:
                try:
                    await self.ctx.invocations.enqueue(
                        state.spec.function_urn,
                        event.event.dump_json(),
                        trigger_id=state.spec.trigger_id,
                        trigger_type=TRIGGER_TYPE,
                        source=self._source(message, event.device_id),
                        request_id=event.request_id,
                        enqueued_at=message.received,
                    )
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    state.last_error = f"handing an event to the bus failed: {exc}; retrying"
                    log.warning("IOTDA trigger %s: %s", state.spec.trigger_id, state.last_error)
                    await asyncio.sleep(1.0)
            state.delivered += 1
        state.last_error = None

    @staticmethod
    def _source(message: MqttMessage, device_id: str | None) -> dict[str, Any]:
        source: dict[str, Any] = {"topic": message.topic, "qos": message.qos}
        if device_id:
            source["device_id"] = device_id
        return source

    async def _reject(self, state: _Trigger, message: MqttMessage, poison: PoisonMessage) -> None:
        """Record why the message is skipped (a DISCARD async record), so nothing vanishes silently."""
        item = StreamItem(
            item_id=f"{state.spec.trigger_id}:{message.received}:{message.mid}",
            trigger_id=state.spec.trigger_id,
            trigger_type=TRIGGER_TYPE,
            function_urn=state.spec.function_urn,
            data=None,
            size=len(message.payload),
            source={**self._source(message, parse_topic(message.topic).device_id), "size": len(message.payload)},
        )
        state.rejected += 1
        state.last_error = poison.reason
        while True:
            try:
                await self.ctx.ingest.reject([item], status=AsyncStatus.DISCARD, code=poison.code, reason=poison.reason)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("IOTDA trigger %s: recording a rejected message failed: %s", state.spec.trigger_id, exc)
                await asyncio.sleep(1.0)
