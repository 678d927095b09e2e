"""IOTDA triggers against the real Mosquitto at 127.0.0.1:1883 and a real service.

Covered: a device message becomes the exact IoTDA forwarding event; a property report (the
third-party capture, golden); the best-practice WGS84 -> GCJ02 scenario end to end; messages
published while the trigger is disabled, or while the whole service is down, are delivered
afterwards (persistent session, QoS 1); an unacked message comes back after a reconnect (manual
acks); a malformed property report is recorded as DISCARD and does not block later messages;
precise 400s for bad configs; the password is stored encrypted and never returned.

Topics carry a fresh uuid per test, so runs do not see each other's messages. Triggers use the
shortest session expiry (60 s), so the sessions tests leave on the broker go away soon.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.base import TriggerSpec
from connectors.iotda import IoTDAConnector, LinkConfig, MqttLink, MqttMessage, client_id_for
from invoker.completion import CompletionHub
from tests.integration.conftest import ROOT, Harness, free_port, make_settings, running
from tests.support.connectors import node_context
from tests.support.recording import REQUEST_RECORDER, wait_lines
from tests.support.waiting import bounded_waits
from tests.unit.test_event_schemas import golden
from triggerbus.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

BROKER = "127.0.0.1:1883"
CODE = "IOTDA"
WAIT = 30.0
wait_for, _ = bounded_waits(WAIT, interval=0.05)
GCJ02_FUNCTION = (ROOT / "tests" / "functions" / "iot_gcj02.py").read_text()
IOTDA_TIME = re.compile(r"^\d{8}T\d{6}Z$")
IOTDA_TIME_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


# -- helpers ---------------------------------------------------------------------------------------------


def unique(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:10]}"


def publish_sync(topic: str, payload: bytes | str, qos: int = 1) -> None:
    """Publish as a device would: its own connection, waiting for the broker's PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("device-"), protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"publishing to {topic} did not complete"
    finally:
        client.disconnect()
        client.loop_stop()


async def publish(topic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> None:
    data = json.dumps(payload) if isinstance(payload, dict) else payload
    await asyncio.to_thread(publish_sync, topic, data, qos)


async def create_trigger(h: Harness, urn: str, event_data: dict[str, Any], status: int = 201) -> dict[str, Any]:
    """An IOTDA trigger of ``urn`` (sessions kept 60 s unless said), asserting the answer's ``status``."""
    answer, result = await h.create_trigger(urn, CODE, {"session_expiry_s": 60, **event_data})
    assert answer == status, result
    return dict(result)


async def wait_subscribed(h: Harness, urn: str, trigger_id: str) -> dict[str, Any]:
    async def subscribed() -> dict[str, Any] | None:
        state = await h.trigger_state(urn, CODE, trigger_id)
        return state if state.get("subscribed") else None

    return dict(await wait_for(subscribed, f"trigger {trigger_id} to subscribe"))


async def recorder(h: Harness, tmp_path: Path) -> tuple[str, Path]:
    """A new REQUEST_RECORDER function: its URN and output file."""
    return await h.create_recorder(unique("iot"), REQUEST_RECORDER, tmp_path)


def without_times(event: dict[str, Any]) -> dict[str, Any]:
    """The event minus the fields that differ per delivery, after checking their format."""
    assert IOTDA_TIME.match(event["event_time"]), event["event_time"]
    assert IOTDA_TIME_MS.match(event["event_time_ms"]), event["event_time_ms"]
    ms = event["event_time_ms"]
    assert event["event_time"] == ms[0:4] + ms[5:7] + ms[8:10] + "T" + ms[11:13] + ms[14:16] + ms[17:19] + "Z"
    return {k: v for k, v in event.items() if k not in ("event_time", "event_time_ms", "request_id")}


# -- events ---------------------------------------------------------------------------------------------


async def test_a_device_message_becomes_the_iotda_forwarding_event(harness: Harness, tmp_path: Path) -> None:
    urn, out = await recorder(harness, tmp_path)
    product = unique("p")
    trigger = await create_trigger(
        harness,
        urn,
        {
            "broker_address": BROKER,
            "topics": ["$oc/devices/+/sys/messages/up"],
            "product_id": product,
            "app_id": "app-1",
        },
    )
    assert trigger["trigger_status"] == "ACTIVE"
    assert trigger["event_data"]["client_id"] == client_id_for(trigger["trigger_id"])
    await wait_subscribed(harness, urn, trigger["trigger_id"])

    device = f"{product}_node-7"
    topic = f"$oc/devices/{device}/sys/messages/up"
    await publish(topic, {"lat": 1.5, "lng": 2.5, "note": "héllo"})
    await publish(topic, "plain text, not JSON")
    lines = await wait_lines(out, 2)
    mine = [line for line in lines if line["event"]["notify_data"]["header"].get("device_id") == device]
    assert len(mine) == 2
    header = {"device_id": device, "product_id": product, "node_id": "node-7", "app_id": "app-1", "gateway_id": device}
    expected = [
        {
            "resource": "device.message",
            "event": "report",
            "notify_data": {"header": header, "body": {"topic": topic, "content": content}},
        }
        for content in ({"lat": 1.5, "lng": 2.5, "note": "héllo"}, "plain text, not JSON")
    ]
    assert sorted((without_times(m["event"]) for m in mine), key=json.dumps) == sorted(expected, key=json.dumps)
    for line in mine:
        assert line["event"]["request_id"] == line["request_id"]  # the event names its invocation
        record = await harness.record(urn, line["request_id"])
        assert record["trigger_id"] == trigger["trigger_id"]
        assert record["trigger_type"] == "IOTDA"
        assert record["source"]["topic"] == topic
        assert record["source"]["device_id"] == device


async def test_a_property_report_matches_the_forwarding_capture(harness: Harness, tmp_path: Path) -> None:
    sample = golden("iotda_forwarding_3p")
    header = sample["notify_data"]["header"]
    urn, out = await recorder(harness, tmp_path)
    topic = f"$oc/devices/{header['device_id']}/sys/properties/report"
    trigger = await create_trigger(
        harness,
        urn,
        {"broker_address": BROKER, "topics": [topic], "product_id": header["product_id"], "app_id": header["app_id"]},
    )
    await wait_subscribed(harness, urn, trigger["trigger_id"])
    # The device reports what the capture carries; the envelope is the platform's.
    await publish(topic, sample["notify_data"]["body"])
    undated = {"service_id": "Battery", "properties": {"battery_pct": 82}}
    await publish(topic, {"services": [undated]})
    # Invocations run concurrently: tell the two events apart by content, not file order.
    by_service = {
        line["event"]["notify_data"]["body"]["services"][0]["service_id"]: line["event"]
        for line in await wait_lines(out, 2)
    }
    captured, stamped = by_service["VehicleSafety"], by_service["Battery"]
    assert without_times(captured) == without_times(sample)
    (service,) = stamped["notify_data"]["body"]["services"]
    assert service == {**undated, "event_time": stamped["event_time"]}  # IoTDA dates undated reports


async def test_the_gcj02_best_practice_converts_a_reported_position(harness: Harness, tmp_path: Path) -> None:
    """seed-practices-faq §1.10: a device reports {"lat", "lng"}; the function converts WGS84 to GCJ02."""
    out = tmp_path / "gcj02.jsonl"
    urn = await harness.create_function(unique("iotdemo"), GCJ02_FUNCTION, user_data={"out": str(out)})
    device = unique("ABC123456789_")
    topic = f"$oc/devices/{device}/sys/messages/up"
    trigger = await create_trigger(harness, urn, {"broker_address": BROKER, "topics": [topic]})
    await wait_subscribed(harness, urn, trigger["trigger_id"])
    # The chapter's test event, as the device publishes it.
    sample = golden("iotda_seed_practices")["notify_data"]["body"]
    assert sample == {"lat": 92.64763932844794, "lng": 35.25202546134364}
    await publish(topic, sample)
    (result,) = await wait_lines(out, 1)
    assert result == {"gcj_lng": 35.185317139674076, "gcj_lat": 92.64923865064839}  # the doc's expected output
    expected_lng, expected_lat = wgs84_to_gcj02(sample["lng"], sample["lat"])
    assert result["gcj_lng"] == pytest.approx(expected_lng, rel=1e-12)
    assert result["gcj_lat"] == pytest.approx(expected_lat, rel=1e-12)


def wgs84_to_gcj02(lng: float, lat: float) -> tuple[float, float]:
    """The published GCJ-02 offset formula (Krasovsky 1940 ellipsoid), written out independently."""
    semi_major, eccentricity_sq = 6378245.0, 0.00669342162296594323
    x, y = lng - 105.0, lat - 35.0

    def waves(v: float, amplitudes: tuple[float, float, float, float], periods: tuple[float, float]) -> float:
        a1, a2, a3, a4 = amplitudes
        p1, p2 = periods
        fast = (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
        mid = (a1 * math.sin(v * math.pi) + a2 * math.sin(v / 3.0 * math.pi)) * 2.0 / 3.0
        slow = (a3 * math.sin(v / p1 * math.pi) + a4 * math.sin(v / p2 * math.pi)) * 2.0 / 3.0
        return fast + mid + slow

    d_lat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y**2 + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    d_lat += waves(y, (20.0, 40.0, 160.0, 320.0), (12.0, 30.0))
    d_lng = 300.0 + x + 2.0 * y + 0.1 * x**2 + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    d_lng += waves(x, (20.0, 40.0, 150.0, 300.0), (12.0, 30.0))
    phi = math.radians(lat)
    w = 1.0 - eccentricity_sq * math.sin(phi) ** 2
    meridian_radius = semi_major * (1.0 - eccentricity_sq) / (w * math.sqrt(w))
    parallel_radius = semi_major / math.sqrt(w) * math.cos(phi)
    return lng + math.degrees(d_lng / parallel_radius), lat + math.degrees(d_lat / meridian_radius)


# -- delivery guarantees ------------------------------------------------------------------------------


async def test_messages_published_while_disabled_arrive_after_enabling(harness: Harness, tmp_path: Path) -> None:
    urn, out = await recorder(harness, tmp_path)
    device = unique("dev")
    topic = f"$oc/devices/{device}/sys/messages/up"
    trigger = await create_trigger(harness, urn, {"broker_address": BROKER, "topics": [topic], "qos": 1})
    trigger_id = trigger["trigger_id"]
    await wait_subscribed(harness, urn, trigger_id)
    await publish(topic, {"n": 1})
    await wait_lines(out, 1)

    await harness.set_trigger_status(urn, CODE, trigger_id, "DISABLED")
    assert await harness.trigger_state(urn, CODE, trigger_id) == {}  # the connector left the broker
    for n in (2, 3):
        await publish(topic, {"n": n}, qos=1)
    await harness.set_trigger_status(urn, CODE, trigger_id, "ACTIVE")
    lines = await wait_lines(out, 3)
    contents = [line["event"]["notify_data"]["body"]["content"] for line in lines]
    assert sorted(contents, key=lambda c: c["n"]) == [{"n": 1}, {"n": 2}, {"n": 3}]  # (invocations run concurrently)
    state = await wait_subscribed(harness, urn, trigger_id)
    assert state["session_present"] is True  # the broker kept the session (and the messages)


async def test_messages_published_while_the_service_is_down_arrive_after_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    device = unique("dev")
    topic = f"$oc/devices/{device}/sys/messages/up"
    async with running(settings) as h:
        urn, out = await recorder(h, tmp_path)
        trigger = await create_trigger(h, urn, {"broker_address": BROKER, "topics": [topic], "mqtt_version": "3.1.1"})
        await wait_subscribed(h, urn, trigger["trigger_id"])
    await publish(topic, {"while": "down"}, qos=1)
    async with running(make_settings(tmp_path / "data")) as h:
        (line,) = await wait_lines(out, 1)
        assert line["event"]["notify_data"]["body"]["content"] == {"while": "down"}
        record = await h.wait_terminal(urn, line["request_id"])
        assert record["status"] == "SUCCESS"


async def test_an_unacked_message_is_sent_again_after_a_reconnect() -> None:
    """What a crash between receiving and enqueuing looks like to the broker: no PUBACK came, so
    the kept session gets the message again on the next connection (manual acks)."""
    topic = f"tb-test/{uuid.uuid4().hex}/up"
    config = LinkConfig(
        host="127.0.0.1",
        port=1883,
        topics=(topic,),
        qos=1,
        client_id=client_id_for(str(uuid.uuid4())),
        username=None,
        password=None,
        mqtt_version="5",
        session_expiry_s=60,
    )
    loop = asyncio.get_running_loop()

    async def next_message(link: MqttLink) -> MqttMessage:
        async with asyncio.timeout(WAIT):
            return await link.inbox.get()

    async def connected_link() -> MqttLink:
        link = MqttLink(config, loop)
        link.start()

        async def ready() -> bool:
            return link.subscribed

        await wait_for(ready, "the link to subscribe")
        return link

    link = await connected_link()
    await publish(topic, b"first")
    first = await next_message(link)
    assert first.payload == b"first"
    await link.stop()  # without acking it

    link = await connected_link()
    again = await next_message(link)
    assert (again.payload, again.qos) == (b"first", 1)
    link.ack(again)
    await publish(topic, b"marker")
    assert (await next_message(link)).payload == b"marker"
    await link.stop()

    link = await connected_link()
    await publish(topic, b"after")
    # "first" was acked: the next message is the unacked "marker", then "after".
    assert (await next_message(link)).payload == b"marker"
    assert (await next_message(link)).payload == b"after"
    await link.stop()


@dataclass
class GatedInvocations:
    """The bus side of a connector under test: ``enqueue`` waits until the gate opens."""

    store: SQLiteStore
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: list[str] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)

    async def invoke_sync(self, *args: Any, **kw: Any) -> Any:
        raise NotImplementedError

    async def enqueue(self, function_urn: str, payload: str, **kw: Any) -> str:
        self.started.append(payload)
        await self.gate.wait()
        self.accepted.append(json.loads(payload))
        return str(kw["request_id"])


def connector_with(store: SQLiteStore, invocations: GatedInvocations, node: str) -> IoTDAConnector:
    return IoTDAConnector(node_context(store, node, CompletionHub(), invocations=invocations, mqtt_lease_ttl_s=2.0))


async def test_a_message_is_acked_only_once_its_invocation_is_durable(store: SQLiteStore) -> None:
    """The process "dies" (the connector stops) while the enqueue has not returned: the broker
    still has the message, and the next run of the trigger delivers it."""
    topic = f"$oc/devices/{unique('dev')}/sys/messages/up"
    spec = TriggerSpec(
        trigger_id=str(uuid.uuid4()),
        function_urn="urn:fss:local:p:function:default:f:latest",
        trigger_type="IOTDA",
        event_data={"broker_address": BROKER, "topics": [topic], "qos": 1, "session_expiry_s": 60},
        created=time.time(),
    )
    stuck = GatedInvocations(store)
    first = connector_with(store, stuck, "node-a")
    await first.activate(spec)

    async def subscribed(connector: IoTDAConnector) -> bool:
        return bool(connector.status(spec.trigger_id).get("subscribed"))

    await wait_for(lambda: subscribed(first), "the first run to subscribe")
    await publish(topic, {"n": 1})

    async def enqueuing() -> bool:
        return bool(stuck.started)

    await wait_for(enqueuing, "the first run to start enqueuing")
    await first.close()  # never returned from enqueue: nothing was acked
    assert stuck.accepted == []

    working = GatedInvocations(store)
    working.gate.set()
    second = connector_with(store, working, "node-a")
    await second.activate(spec)

    async def redelivered() -> bool:
        return bool(working.accepted)

    await wait_for(redelivered, "the message to come again")
    assert working.accepted[0]["notify_data"]["body"]["content"] == {"n": 1}
    await second.close()


async def test_one_process_at_a_time_holds_a_triggers_session(store: SQLiteStore) -> None:
    """Two service processes run the same trigger: the lease gives its MQTT session to one; when
    that one stops, the other takes over the session."""
    topic = f"$oc/devices/{unique('dev')}/sys/messages/up"
    spec = TriggerSpec(
        trigger_id=str(uuid.uuid4()),
        function_urn="urn:fss:local:p:function:default:f:latest",
        trigger_type="IOTDA",
        event_data={"broker_address": BROKER, "topics": [topic], "session_expiry_s": 60},
        created=time.time(),
    )
    sinks = {node: GatedInvocations(store) for node in ("node-a", "node-b")}
    for sink in sinks.values():
        sink.gate.set()
    connectors = {node: connector_with(store, sink, node) for node, sink in sinks.items()}
    for connector in connectors.values():
        await connector.activate(spec)

    async def one_holder() -> str | None:
        holders = [n for n, c in connectors.items() if c.status(spec.trigger_id)["holds_session"]]
        subscribed = [n for n, c in connectors.items() if c.status(spec.trigger_id)["subscribed"]]
        return holders[0] if len(holders) == 1 and subscribed == holders else None

    holder = await wait_for(one_holder, "one process to hold the session")
    other = next(n for n in connectors if n != holder)
    await publish(topic, {"n": 1})

    async def delivered_to(node: str, count: int) -> bool:
        return len(sinks[node].accepted) >= count

    await wait_for(lambda: delivered_to(holder, 1), "the holder to get the message")
    await connectors[holder].close()

    async def took_over() -> bool:
        return bool(connectors[other].status(spec.trigger_id)["subscribed"])

    await wait_for(took_over, "the other process to take the session over")
    await publish(topic, {"n": 2})
    await wait_for(lambda: delivered_to(other, 1), "the other process to get the next message")
    assert [e["notify_data"]["body"]["content"] for e in sinks[holder].accepted] == [{"n": 1}]
    assert [e["notify_data"]["body"]["content"] for e in sinks[other].accepted] == [{"n": 2}]
    await connectors[other].close()


class PrivateBroker:
    """A Mosquitto of this test's own (the shared one must not be restarted), with persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "mosquitto.conf"
        # As root, Mosquitto switches to the "mosquitto" user, which cannot write in pytest's tmp dir.
        stay = "user root\n" if os.geteuid() == 0 else ""
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{stay}"
            f"persistence true\npersistence_location {workdir}/\n"
        )
        self.log = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: Mosquitto saves its persistence file
            self.process.wait(timeout=10)
            self.process = None


def publish_to(port: int, topic: str, payload: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("device-"), protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def test_a_broker_restart_is_survived(harness: Harness, tmp_path: Path) -> None:
    """The broker goes away and comes back: the trigger says so, reconnects with backoff, and a
    message queued in its session while it was reconnecting is delivered."""
    broker = PrivateBroker(tmp_path / "broker")
    urn, out = await recorder(harness, tmp_path)
    topic = f"$oc/devices/{unique('dev')}/sys/messages/up"
    trigger = await create_trigger(harness, urn, {"broker_address": broker.address, "topics": [topic]})
    trigger_id = trigger["trigger_id"]

    async def unreachable() -> bool:
        error = (await harness.trigger_state(urn, CODE, trigger_id)).get("last_error") or ""
        return error.startswith(f"cannot reach the MQTT broker at {broker.address}")

    await wait_for(unreachable, "the trigger to report the broker unreachable")
    try:
        broker.start()
        await wait_subscribed(harness, urn, trigger_id)
        await asyncio.to_thread(publish_to, broker.port, topic, '{"n": 1}')
        await wait_lines(out, 1)
        await asyncio.to_thread(broker.stop)

        async def disconnected() -> bool:
            return not (await harness.trigger_state(urn, CODE, trigger_id))["connected"]

        await wait_for(disconnected, "the trigger to notice the broker is gone")
        await asyncio.to_thread(broker.start)
        await asyncio.to_thread(publish_to, broker.port, topic, '{"n": 2}')  # before the trigger is back
        lines = await wait_lines(out, 2)
        assert [line["event"]["notify_data"]["body"]["content"] for line in lines] == [{"n": 1}, {"n": 2}]
        state = await wait_subscribed(harness, urn, trigger_id)
        assert state["session_present"] is True
    finally:
        await asyncio.to_thread(broker.stop)


async def test_a_malformed_property_report_is_recorded_and_skipped(harness: Harness, tmp_path: Path) -> None:
    urn, out = await recorder(harness, tmp_path)
    device = unique("dev")
    topic = f"$oc/devices/{device}/sys/properties/report"
    trigger = await create_trigger(harness, urn, {"broker_address": BROKER, "topics": [topic]})
    await wait_subscribed(harness, urn, trigger["trigger_id"])
    await publish(topic, {"services": [{"service_id": 7, "properties": {}}]})
    await publish(topic, {"services": [{"service_id": "ok", "properties": {"v": 1}}]})
    (line,) = await wait_lines(out, 1)
    assert line["event"]["notify_data"]["body"]["services"][0]["service_id"] == "ok"

    query = f"/functions/{urn}/async-invocations?status=DISCARD&trigger_id={trigger['trigger_id']}"
    async with harness.http.get(harness.fgs(query)) as resp:
        body = await resp.json()
    (record,) = body["invocations"]
    assert record["error_code"] == 4400
    assert "services.0.service_id" in record["error_message"]
    assert record["source"]["topic"] == topic
    state = await harness.trigger_state(urn, CODE, trigger["trigger_id"])
    assert (state["rejected"], state["delivered"]) == (1, 1)


# -- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_data", "message"),
    [
        (
            {"topics": ["$oc/devices/#/sys/messages/up"]},
            "event_data.topics[0]: '#' must be a whole level and the last one (level 3 is '#') "
            "(got '$oc/devices/#/sys/messages/up')",
        ),
        (
            {"topics": ["$oc/devices/dev+/sys/messages/up"]},
            "event_data.topics[0]: '+' must be a whole level (level 3 is 'dev+') "
            "(got '$oc/devices/dev+/sys/messages/up')",
        ),
        (
            {"topics": []},
            "event_data.topics: must list at least one topic filter, e.g. '$oc/devices/+/sys/messages/up'",
        ),
        ({"topics": ["a/b"], "qos": 2}, "event_data.qos: Input should be 0 or 1 (got 2)"),
        (
            {"topics": ["a/b"], "broker_address": "mqtt.local"},
            "event_data.broker_address: broker address 'mqtt.local' must be host:port with a port between 1 and "
            "65535 (got 'mqtt.local')",
        ),
        (
            {"topics": ["a/b"], "broker_address": None},
            "event_data.broker_address: is required (this service has no default MQTT broker; "
            "set TRIGGERBUS_MQTT_BROKER to give it one)",
        ),
    ],
    ids=["hash-not-last", "plus-in-level", "no-topics", "qos-2", "no-port", "no-broker"],
)
async def test_invalid_configs_get_a_precise_400(
    harness: Harness, tmp_path: Path, event_data: dict[str, Any], message: str
) -> None:
    urn, _ = await recorder(harness, tmp_path)
    data = {"broker_address": BROKER, **event_data}
    if data["broker_address"] is None:
        del data["broker_address"]
    result = await create_trigger(harness, urn, data, status=400)
    assert result == {"error_code": "FSS.0400", "error_msg": message}


async def test_the_service_default_broker_is_written_into_the_trigger(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path / "data", mqtt_broker=BROKER)) as h:
        urn, out = await recorder(h, tmp_path)
        topic = f"$oc/devices/{unique('dev')}/sys/messages/up"
        trigger = await create_trigger(h, urn, {"topics": [topic]})
        assert trigger["event_data"]["broker_address"] == BROKER
        await wait_subscribed(h, urn, trigger["trigger_id"])
        await publish(topic, {"via": "default broker"})
        (line,) = await wait_lines(out, 1)
        assert line["event"]["notify_data"]["body"]["content"] == {"via": "default broker"}


async def test_the_password_is_encrypted_at_rest_and_never_returned(harness: Harness, tmp_path: Path) -> None:
    urn, out = await recorder(harness, tmp_path)
    topic = f"$oc/devices/{unique('dev')}/sys/messages/up"
    secret = "s3cret-" + uuid.uuid4().hex
    trigger = await create_trigger(
        harness, urn, {"broker_address": BROKER, "topics": [topic], "username": "device-user", "password": secret}
    )
    assert trigger["event_data"]["password"] == "******"
    assert trigger["event_data"]["username"] == "device-user"
    async with harness.http.get(harness.trigger_path(urn, CODE, trigger["trigger_id"])) as resp:
        text = await resp.text()
    assert secret not in text
    assert json.loads(text)["event_data"]["password"] == "******"
    async with harness.http.get(harness.fgs(f"/triggers/{urn}")) as resp:
        assert secret not in await resp.text()
    stored = await harness.service.store.get_trigger(trigger["trigger_id"])
    assert secret not in json.dumps(stored.event_data)  # encrypted in the store
    # The connector has it in clear: it logged in (Mosquitto here accepts any credentials).
    await wait_subscribed(harness, urn, trigger["trigger_id"])
    await publish(topic, {"ok": True})
    (line,) = await wait_lines(out, 1)
    assert line["event"]["notify_data"]["body"]["content"] == {"ok": True}
