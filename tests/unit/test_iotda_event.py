"""IOTDA: MQTT topic + payload -> IoTDA forwarding events, and the trigger's event_data rules."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.iotda import (
    DeviceTopic,
    HeaderDefaults,
    LinkConfig,
    MqttLink,
    MqttMessage,
    PoisonMessage,
    client_id_for,
    device_events,
    header_for,
    message_content,
    parse_topic,
)
from schemas.errors import FSSError
from schemas.events.iotda import IoTDAEvent
from schemas.triggers import parse_event_data, redact_event_data
from tests.unit.test_event_schemas import assert_json_equal, golden

RECEIVED = datetime(2026, 7, 3, 18, 35, 19, 480000, tzinfo=UTC)


def events(topic: str, payload: Any, **defaults: str) -> list[dict[str, Any]]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return [e.event.dump() for e in device_events(topic, raw, RECEIVED, HeaderDefaults(**defaults))]


# ---------------------------------------------------------------------------- topics and content


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$oc/devices/p_n/sys/messages/up", DeviceTopic("p_n", "message", None)),
        ("$oc/devices/p_n/user/custom/topic", DeviceTopic("p_n", "message", None)),
        ("$oc/devices/p_n/sys/properties/report", DeviceTopic("p_n", "properties", None)),
        ("$oc/devices/gw/sys/gateway/sub_devices/properties/report", DeviceTopic("gw", "gateway_properties", None)),
        ("$oc/devices/d/sys/messages/up?request_id=r-9", DeviceTopic("d", "message", "r-9")),
        ("sensors/room-1/temp", DeviceTopic(None, "message", None)),
        ("$oc/devices//sys/messages/up", DeviceTopic(None, "message", None)),
    ],
)
def test_parse_topic(topic: str, expected: DeviceTopic) -> None:
    assert parse_topic(topic) == expected


def test_message_content_is_json_text_or_base64() -> None:
    assert message_content(b'{"lat": 1.5}') == {"lat": 1.5}
    assert message_content(b"[1, 2]") == [1, 2]
    assert message_content("héllo".encode()) == "héllo"
    assert message_content(b"NaN") == "NaN"  # not JSON: no NaN in the event
    assert message_content(b"\xff\x00\x01") == base64.b64encode(b"\xff\x00\x01").decode()


def test_header_comes_from_the_device_id() -> None:
    assert header_for("prod_node_1", HeaderDefaults()) == {
        "device_id": "prod_node_1",
        "product_id": "prod",
        "node_id": "node_1",
        "app_id": None,
        "gateway_id": "prod_node_1",
    }
    named = header_for("prod_node_1", HeaderDefaults(product_id="prod_node", app_id="a"))
    assert (named["product_id"], named["node_id"], named["app_id"]) == ("prod_node", "1", "a")
    assert header_for("plain", HeaderDefaults(product_id="other"))["node_id"] == "plain"
    assert header_for("sub", HeaderDefaults(), gateway_id="gw")["gateway_id"] == "gw"


def test_client_ids_are_stable_and_short() -> None:
    assert client_id_for("trigger-1") == client_id_for("trigger-1")
    assert client_id_for("trigger-1") != client_id_for("trigger-2")
    assert len(client_id_for("x" * 200)) == 23


# ---------------------------------------------------------------------------- events


def test_device_message_event_is_the_forwarding_shape() -> None:
    topic = "$oc/devices/ABC123456789_dev/sys/messages/up"
    (event,) = events(topic, {"lat": 92.64763932844794, "lng": 35.25202546134364}, app_id="app")
    request_id = event.pop("request_id")
    assert len(request_id) == 36
    assert event == {
        "resource": "device.message",
        "event": "report",
        "event_time": "20260703T183519Z",
        "event_time_ms": "2026-07-03T18:35:19.480Z",
        "notify_data": {
            "header": {
                "app_id": "app",
                "device_id": "ABC123456789_dev",
                "node_id": "dev",
                "product_id": "ABC123456789",
                "gateway_id": "ABC123456789_dev",
            },
            "body": {"topic": topic, "content": {"lat": 92.64763932844794, "lng": 35.25202546134364}},
        },
    }
    IoTDAEvent.model_validate(event)


def test_the_topic_request_id_is_the_events_request_id() -> None:
    (event,) = events("$oc/devices/d/sys/messages/up?request_id=abc", "x")
    assert event["request_id"] == "abc"


def test_a_message_on_a_plain_topic_has_no_device_header() -> None:
    (event,) = events("sensors/room-1", b"21.5", product_id="p")
    assert event["notify_data"]["header"] == {"product_id": "p"}
    assert event["notify_data"]["body"] == {"topic": "sensors/room-1", "content": 21.5}


def test_property_report_matches_the_forwarding_capture() -> None:
    sample = golden("iotda_forwarding_3p")
    header = sample["notify_data"]["header"]
    found = device_events(
        f"$oc/devices/{header['device_id']}/sys/properties/report",
        json.dumps(sample["notify_data"]["body"]).encode(),
        RECEIVED,
        HeaderDefaults(product_id=header["product_id"], app_id=header["app_id"]),
    )
    (event,) = found
    dumped = event.event.dump()
    assert dumped["request_id"] == event.request_id
    assert_json_equal({**dumped, "request_id": sample["request_id"]}, sample)


def test_undated_services_get_the_report_time_and_extra_keys_are_dropped() -> None:
    (event,) = events(
        "$oc/devices/d/sys/properties/report",
        {"services": [{"service_id": "s", "properties": {"a": 1}, "extra": True}], "other": 1},
    )
    assert event["notify_data"]["body"] == {
        "services": [{"service_id": "s", "properties": {"a": 1}, "event_time": "20260703T183519Z"}]
    }


def test_gateway_report_makes_one_event_per_sub_device() -> None:
    payload = {
        "devices": [
            {"device_id": "p_sub1", "services": [{"service_id": "s", "properties": {"v": 1}}]},
            {"device_id": "p_sub2", "services": [{"service_id": "s", "properties": {"v": 2}}]},
        ]
    }
    found = events("$oc/devices/p_gw/sys/gateway/sub_devices/properties/report", payload)
    assert [e["notify_data"]["header"]["device_id"] for e in found] == ["p_sub1", "p_sub2"]
    assert {e["notify_data"]["header"]["gateway_id"] for e in found} == {"p_gw"}
    assert [e["notify_data"]["body"]["services"][0]["properties"] for e in found] == [{"v": 1}, {"v": 2}]
    assert all(e["resource"] == "device.property" for e in found)


@pytest.mark.parametrize(
    ("topic", "payload", "message"),
    [
        ("$oc/devices/d/sys/properties/report", b"not json", "is not a JSON object"),
        ("$oc/devices/d/sys/properties/report", {"services": "x"}, "services: Input should be a valid list"),
        ("$oc/devices/d/sys/properties/report", {"services": [{"service_id": "s"}]}, "services.0.properties"),
        ("$oc/devices/g/sys/gateway/sub_devices/properties/report", {"devices": []}, "has no 'devices' list"),
        ("$oc/devices/g/sys/gateway/sub_devices/properties/report", {"devices": [{}]}, "devices[0] has no device_id"),
    ],
)
def test_malformed_reports_are_poison(topic: str, payload: Any, message: str) -> None:
    with pytest.raises(PoisonMessage) as info:
        events(topic, payload)
    assert message in info.value.reason
    assert info.value.code == 4400


# ---------------------------------------------------------------------------- event_data


def error(data: dict[str, Any]) -> str:
    with pytest.raises(FSSError) as info:
        parse_event_data("IOTDA", data)
    return info.value.message


def test_event_data_defaults_and_normalisation() -> None:
    parsed = parse_event_data(
        "IOTDA", {"topics": "$oc/devices/+/sys/messages/up", "broker_address": " 10.0.0.5:1883 ", "mqtt_version": 5}
    ).dump()
    assert parsed == {
        "broker_address": "10.0.0.5:1883",
        "topics": ["$oc/devices/+/sys/messages/up"],
        "qos": 1,
        "mqtt_version": "5",
        "session_expiry_s": 86400,
    }
    assert parse_event_data("IOTDA", {"topics": ["#", "#"], "mqtt_version": "3.1.1"}).dump()["topics"] == ["#"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"topics": ["a/#/b"]}, "event_data.topics[0]: '#' must be a whole level and the last one (level 2 is '#')"),
        ({"topics": ["a/b#"]}, "event_data.topics[0]: '#' must be a whole level and the last one (level 2 is 'b#')"),
        ({"topics": ["a/+b"]}, "event_data.topics[0]: '+' must be a whole level (level 2 is '+b')"),
        ({"topics": [""]}, "event_data.topics[0]: topic filter must not be empty"),
        ({"topics": ["a\x00b"]}, "event_data.topics[0]: topic filter must not contain the NUL character"),
        ({"topics": ["$share/g/a"]}, "event_data.topics[0]: shared subscriptions ($share/...) are not supported"),
        ({"topics": ["a"], "qos": True}, "event_data.qos: must be the integer 0 or 1 (got True)"),
        ({"topics": ["a"], "session_expiry_s": 5}, "event_data.session_expiry_s: Input should be greater than"),
        ({"topics": ["a"], "mqtt_version": "4.0"}, "event_data.mqtt_version: Input should be '3.1.1' or '5'"),
        ({}, "event_data.topics: is required"),
    ],
)
def test_event_data_errors_name_the_field(data: dict[str, Any], message: str) -> None:
    assert error(data).startswith(message)


def test_a_password_needs_a_user_on_mqtt_311_and_is_never_echoed() -> None:
    message = error({"topics": ["a"], "mqtt_version": "3.1.1", "password": "hunter2"})
    assert message == "event_data.username: is required with a password over MQTT 3.1.1"
    assert parse_event_data("IOTDA", {"topics": ["a"], "password": "hunter2"}).dump()["password"] == "hunter2"
    assert redact_event_data("IOTDA", {"topics": ["a"], "username": "u", "password": "hunter2"}) == {
        "topics": ["a"],
        "username": "u",
        "password": "******",
    }


async def test_a_resent_packet_still_unacked_is_not_handed_over_twice() -> None:
    """Mosquitto resends unacked QoS 1 packets (DUP) on the same connection under load; the copy
    must not become a second invocation, nor fill the inbox (which forces a reconnect)."""
    config = LinkConfig("127.0.0.1", 1, ("t/#",), 1, "dedupe-test", None, None, "5", 60)
    link = MqttLink(config, asyncio.get_running_loop())

    def publish(mid: int, dup: bool, generation: int = 0) -> MqttMessage:
        message = MqttMessage("t/x", b"{}", 1, mid, generation, 0.0, dup)
        link._offer(message)
        return message

    first = publish(7, dup=False)
    publish(7, dup=True)  # a resend of the unacked packet 7
    assert link.inbox.qsize() == 1 and link.redeliveries_dropped == 1
    link.ack(first)
    publish(7, dup=True)  # after our PUBACK the id is free again: this one is handed over
    publish(7, dup=True, generation=1)  # a new connection resends everything unacked: handed over
    assert link.inbox.qsize() == 3 and link.redeliveries_dropped == 1
