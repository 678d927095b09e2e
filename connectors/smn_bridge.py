"""MQTT -> SMN bridge: messages posted to MQTT topics are published to SMN topics.

External publishers that speak MQTT (devices, scripts, Mosquitto bridges) reach SMN
subscribers without the HTTP API. Configuration (``TRIGGERBUS_SMN_MQTT_BRIDGE``)::

    {"broker": "127.0.0.1:1883", "topics": {"urn:smn:local:proj:orders": "smn/orders"},
     "client_id": "triggerbus-smn-bridge", "username": "...", "password": "..."}

``topics`` maps an SMN topic URN to an MQTT topic filter (wildcards allowed; the first
matching filter wins).

Delivery: the bridge subscribes with QoS 1 on a *persistent* session (clean session off,
fixed client id) and acknowledges (PUBACK) a message only after the SMN publish returned,
i.e. after every subscriber's invocation is durable on the bus. A message received while
Triggerbus stops, or queued by the broker while it is down, is delivered again later: at
least once. Acknowledgements go out in arrival order, as MQTT requires.

Threads: paho runs its network loop in its own thread. Its ``on_message`` callback takes a
slot from a bounded semaphore (blocking paho's thread when the bridge is behind, which
stops reading from the socket: back-pressure onto the broker) and hands the message to the
event loop with ``loop.call_soon_threadsafe``. Publishing and acknowledging happen on the
event loop; ``Client.ack`` only queues a packet for paho's thread.

Poison messages (not UTF-8, over 256 KB, or refused by SMN with a 4xx such as a deleted
topic) are dropped — logged and audited as ``smnMqttMessageDropped`` — and acknowledged, so
one bad message never blocks the topic. Transient failures are retried with backoff.

After a reconnect the broker re-sends unacknowledged messages with new packet ids, so a
message received on an older connection is never acknowledged on the new one (its id may
now name another message); it is still published — the re-sent copy makes a duplicate,
never a loss.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bus.aio import stop_tasks
from invoker.smn_sink import TopicPublisher
from schemas.errors import FSSError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024
QUEUE_SLOTS = 256
DROP_ACTION = "smnMqttMessageDropped"
DEFAULT_CLIENT_ID = "triggerbus-smn-bridge"


Audit = Callable[[str, str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    host: str
    port: int
    topics: dict[str, str]  # SMN topic URN -> MQTT topic filter
    client_id: str = DEFAULT_CLIENT_ID
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, raw: Any) -> BridgeConfig:
        """From the settings' JSON object; ValueError naming the bad field otherwise."""
        if not isinstance(raw, dict):
            raise ValueError("SMN MQTT bridge: the setting must be a JSON object with 'broker' and 'topics'")
        broker = raw.get("broker")
        host, sep, port = str(broker or "").rpartition(":")
        if not isinstance(broker, str) or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"SMN MQTT bridge: broker must be 'host:port' (got {broker!r})")
        topics = raw.get("topics")
        if not isinstance(topics, dict) or not topics:
            raise ValueError("SMN MQTT bridge: topics must map SMN topic URNs to MQTT topics")
        for urn, mqtt_topic in topics.items():
            if not str(urn).startswith("urn:smn:") or not isinstance(mqtt_topic, str) or not mqtt_topic:
                raise ValueError(f"SMN MQTT bridge: topics[{urn!r}] must map an SMN topic URN to an MQTT topic")
        client_id = raw.get("client_id", DEFAULT_CLIENT_ID)
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("SMN MQTT bridge: client_id must be a non-empty string")
        return cls(
            host=host.strip("[]"),
            port=int(port),
            topics={str(k): v for k, v in topics.items()},
            client_id=client_id,
            username=raw.get("username"),
            password=raw.get("password"),
        )

    def route(self, mqtt_topic: str) -> str | None:
        """The SMN topic an MQTT message goes to (first matching filter), or None."""
        for urn, topic_filter in self.topics.items():
            if mqtt.topic_matches_sub(topic_filter, mqtt_topic):
                return urn
        return None


@dataclass(slots=True)
class _Received:
    mid: int
    mqtt_topic: str
    payload: bytes
    generation: int  # the connection it arrived on


class MqttBridge:
    def __init__(
        self, config: BridgeConfig, publisher: TopicPublisher, audit: Audit, *, slots: int = QUEUE_SLOTS
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.audit = audit
        self._slots = threading.BoundedSemaphore(slots)
        self._queue: asyncio.Queue[_Received] = asyncio.Queue(maxsize=slots)  # never fuller than the slots
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._generation = 0
        self._stopping = threading.Event()
        self.connected = False
        self.subscribed = False  # the broker confirmed our subscriptions on the current connection
        self.forwarded = 0
        self.dropped = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            clean_session=False,  # persistent session: the broker keeps our QoS 1 messages while we are away
            manual_ack=True,
        )
        if self.config.username:
            client.username_pw_set(self.config.username, self.config.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.connect_async(self.config.host, self.config.port, keepalive=30)
        client.loop_start()
        self._client = client
        self._task = asyncio.create_task(self._forward_loop(), name="smn-mqtt-bridge")

    async def close(self) -> None:
        self._stopping.set()
        await stop_tasks(self._task)
        self._task = None
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)  # joins paho's thread
        # Messages still queued were never acknowledged: the broker re-sends them next time.

    # -- paho's thread -----------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("SMN MQTT bridge: %s:%s refused the connection: %s", self.config.host, self.config.port, reason)
            return
        self._generation += 1
        self.connected = True
        self.subscribed = False
        client.subscribe([(topic_filter, 1) for topic_filter in self.config.topics.values()])
        log.info("SMN MQTT bridge connected to %s:%s", self.config.host, self.config.port)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.warning("SMN MQTT bridge: the broker refused subscriptions: %s", refused)
        self.subscribed = not refused

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected = False
        self.subscribed = False
        if not self._stopping.is_set():
            log.warning("SMN MQTT bridge disconnected (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        item = _Received(message.mid, message.topic, bytes(message.payload), self._generation)
        while not self._slots.acquire(timeout=0.5):
            if self._stopping.is_set():
                return  # not acknowledged: re-sent on the next connection
        loop = self._loop
        try:
            assert loop is not None
            loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutting down)
            self._slots.release()

    # -- the event loop -----------------------------------------------------------------------------------

    async def _forward_loop(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._forward(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("SMN MQTT bridge: forwarding a message from %s failed", item.mqtt_topic)
            finally:
                self._slots.release()

    async def _forward(self, item: _Received) -> None:
        topic_urn = self.config.route(item.mqtt_topic)
        if topic_urn is None:
            await self._drop(item, "", "no SMN topic is mapped to this MQTT topic")
            return
        if len(item.payload) > MAX_MESSAGE_BYTES:
            await self._drop(item, topic_urn, f"{len(item.payload)} bytes, over the {MAX_MESSAGE_BYTES}-byte SMN limit")
            return
        try:
            text = item.payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            await self._drop(item, topic_urn, f"payload is not UTF-8 text (byte {exc.start})")
            return
        if not text:
            await self._drop(item, topic_urn, "empty payload (an SMN message must not be empty)")
            return
        delay = 0.5
        while True:
            try:
                await self.publisher.publish(topic_urn, message=text, attributes={"mqtt_topic": item.mqtt_topic})
                break
            except FSSError as exc:
                if exc.status < 500:
                    await self._drop(item, topic_urn, exc.message)
                    return
                log.warning("SMN MQTT bridge: publishing to %s failed (%s); retrying", topic_urn, exc.message)
            except Exception as exc:
                log.warning("SMN MQTT bridge: publishing to %s failed (%s); retrying", topic_urn, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        self.forwarded += 1
        self._ack(item)

    async def _drop(self, item: _Received, topic_urn: str, reason: str) -> None:
        self.dropped += 1
        log.warning("SMN MQTT bridge: dropped a message from %s: %s", item.mqtt_topic, reason)
        detail = {"mqtt_topic": item.mqtt_topic, "bytes": len(item.payload), "reason": reason}
        try:
            await self.audit(DROP_ACTION, topic_urn or item.mqtt_topic, detail)
        except Exception:
            log.exception("SMN MQTT bridge: auditing a dropped message failed")
        self._ack(item)

    def _ack(self, item: _Received) -> None:
        client = self._client
        if client is None or item.generation != self._generation:
            return  # arrived on an earlier connection: the broker re-sends it (see the module docstring)
        client.ack(item.mid, 1)
