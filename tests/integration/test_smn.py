"""SMN: the topic API, SMN triggers (subscriptions), durable fan-out, SMN destinations, MQTT bridge."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.smn import delivery_request_id
from invoker.smn_sink import destination_message_id
from tests.integration.conftest import PROJECT, Harness, make_settings, running
from tests.support.recording import read_jsonl
from tests.support.service import ServiceProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SINK = "def handler(event, context):\n    return event\n"
OK = "def handler(event, context):\n    return 'all good'\n"
FAIL = "def handler(event, context):\n    raise KeyError('missing')\n"
TOPICS = f"/v2/{PROJECT}/notifications/topics"
SMN_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
JS_DATE = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} \d\d \d{4} \d\d:\d\d:\d\d GMT[+-]\d{4} \(.+\)$")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_topic(h: Harness, name: str, **extra: Any) -> str:
    async with h.http.post(TOPICS, json={"name": name, "display_name": "Orders", **extra}) as resp:
        body = await resp.json()
        assert resp.status in (200, 201), body
    return str(body["topic_urn"])


async def subscribe(h: Harness, function_urn: str, topic_urn: str) -> dict[str, Any]:
    async with h.http.post(
        h.fgs(f"/triggers/{function_urn}"),
        json={"trigger_type_code": "SMN", "event_type_code": "MessageCreated", "event_data": {"topic_urn": topic_urn}},
    ) as resp:
        body = await resp.json()
        assert resp.status == 201, body
    return dict(body)


async def publish(h: Harness, topic_urn: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with h.http.post(f"{TOPICS}/{topic_urn}/publish", json=body) as resp:
        return resp.status, dict(await resp.json())


async def event_of(h: Harness, function_urn: str, request_id: str) -> dict[str, Any]:
    record = await h.wait_terminal(function_urn, request_id)
    assert record["status"] == "SUCCESS", record
    return dict(json.loads(record["response"]))


# -- the topic API ----------------------------------------------------------------------------------


async def test_topic_api_create_is_idempotent_list_pages_show_and_delete(harness: Harness) -> None:
    names = [unique("t") for _ in range(3)]
    async with harness.http.post(TOPICS, json={"name": names[0], "display_name": "First"}) as resp:
        assert resp.status == 201
        created = await resp.json()
    urn = created["topic_urn"]
    assert urn == f"urn:smn:local:{PROJECT}:{names[0]}"
    assert re.fullmatch(r"[0-9a-f]{32}", created["request_id"])
    async with harness.http.post(TOPICS, json={"name": names[0], "display_name": "First"}) as resp:
        assert resp.status == 200  # SMN: the existing topic, 200 instead of 201
        assert (await resp.json())["topic_urn"] == urn
    for name in names[1:]:
        await create_topic(harness, name)
    async with harness.http.get(TOPICS, params={"offset": "1", "limit": "1"}) as resp:
        page = await resp.json()
    assert page["topic_count"] == 3
    assert [t["name"] for t in page["topics"]] == [names[1]]
    assert set(page["topics"][0]) >= {"topic_urn", "name", "display_name", "push_policy", "topic_id"}
    async with harness.http.get(f"{TOPICS}/{urn}") as resp:
        shown = await resp.json()
    assert (shown["name"], shown["display_name"], shown["subscriptions"]) == (names[0], "First", [])
    async with harness.http.delete(f"{TOPICS}/{urn}") as resp:
        assert resp.status == 200 and "request_id" in await resp.json()
    for method in ("get", "delete"):
        async with harness.http.request(method, f"{TOPICS}/{urn}") as resp:
            assert resp.status == 404
            assert (await resp.json())["error_code"] == "FSS.0404"
    status, error = await publish(harness, urn, {"message": "x"})
    assert (status, error["error_code"]) == (404, "FSS.0404")
    assert urn in error["error_msg"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"display_name": "x"}, 400, "name: is required"),
        ({"name": "-starts-with-dash"}, 400, "name: must be 1-255 letters"),
        ({"name": "has space"}, 400, "name: must be 1-255 letters"),
        ({"name": "x" * 256}, 400, "name: must be 1-255 letters"),
        ({"name": "ok", "display_name": "é" * 97}, 400, "display_name: must be at most 192 bytes (got 194)"),
        ({"name": 5}, 400, "name: Input should be a valid string"),
    ],
)
async def test_invalid_topic_bodies_are_refused_precisely(
    harness: Harness, body: dict[str, Any], status: int, message: str
) -> None:
    async with harness.http.post(TOPICS, json=body) as resp:
        error = await resp.json()
        assert resp.status == status, error
    assert error["error_code"] == f"FSS.0{status}"
    assert message in error["error_msg"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "one of message, message_structure or message_template_name is required"),
        ({"message": ""}, 400, "message: the message must not be empty"),
        ({"message": 42}, 400, "message: Input should be a valid string"),
        ({"message": "x" * (256 * 1024 + 1)}, 413, "message: the message is 262145 bytes, over SMN's 262144-byte"),
        ({"message": "x", "subject": "s" * 513}, 400, "subject: must be at most 512 bytes (got 513)"),
        ({"message_structure": "{nope"}, 400, "message_structure: must be a JSON string"),
        ({"message_structure": '{"email": "x"}'}, 400, 'message_structure: must be a JSON object with a string "def'),
        ({"message_structure": '{"default": "d", "sms": 3}'}, 400, "message_structure.sms: must be a string"),
        ({"message_template_name": "welcome"}, 400, "message_template_name: message templates are not supported"),
        ({"message": "x", "time_to_live": "0"}, 400, "time_to_live: must be a whole number of seconds between 1"),
        ({"message": "x", "message_attributes": [{"name": "a b", "type": "STRING", "value": "v"}]}, 400,
         "message_attributes"),
        ({"message": "x", "message_attributes": [{"name": "a", "type": "STRING"}]}, 400,
         "message_attributes[0]: attribute 'a' of type STRING needs a 'value'"),
        ({"message": "x", "message_attributes": [{"name": "a", "type": "NUMBER", "value": "1"}]}, 400,
         "message_attributes"),
        ({"message": "x", "message_attributes": {f"k{i}": "v" for i in range(11)}}, 400,
         "message_attributes: at most 10 attributes (got 11)"),
    ],
)  # fmt: skip
async def test_invalid_publish_bodies_are_refused_precisely(
    harness: Harness, body: dict[str, Any], status: int, message: str
) -> None:
    urn = await create_topic(harness, unique("pub"))
    code, error = await publish(harness, urn, body)
    assert code == status, error
    assert error["error_code"] == f"FSS.0{status}"
    assert message in error["error_msg"]


async def test_publish_paths_and_raw_bodies_are_checked(harness: Harness) -> None:
    urn = await create_topic(harness, unique("raw"))
    async with harness.http.post(f"{TOPICS}/{urn}/publish", data=b"{not json") as resp:
        assert resp.status == 400
        assert "request body is not valid JSON" in (await resp.json())["error_msg"]
    async with harness.http.post(f"{TOPICS}/{urn}/publish", json=["a"]) as resp:
        assert resp.status == 400
        assert (await resp.json())["error_msg"] == "request body must be a JSON object"
    code, error = await publish(harness, "urn:smn:local:other-project:t", {"message": "x"})
    assert code == 400 and "belongs to project other-project, not proj1" in error["error_msg"]
    code, error = await publish(harness, "not-an-urn", {"message": "x"})
    assert (
        code == 400
        and "topic_urn: 'not-an-urn' must be 'urn:smn:<region>:<project_id>:<topic_name>'" in (error["error_msg"])
    )
    async with (
        aiohttp.ClientSession(base_url=harness.base_url) as anonymous,
        anonymous.post(f"{TOPICS}/{urn}/publish", json={"message": "x"}) as resp,
    ):
        assert resp.status == 401  # the management token, as the rest of the API


# -- subscriptions and fan-out ---------------------------------------------------------------------------


async def test_publish_invokes_every_subscriber_with_the_smn_event(harness: Harness) -> None:
    topic = await create_topic(harness, unique("orders"))
    first = await harness.create_function("first", SINK)
    second = await harness.create_function("second", SINK)
    triggers = {first: await subscribe(harness, first, topic), second: await subscribe(harness, second, topic)}
    for trigger in triggers.values():
        assert trigger["event_data"] == {"topic_urn": topic, "subscription_status": "Confirmed"}
        assert trigger["trigger_status"] == "ACTIVE"
    status, published = await publish(harness, topic, {"subject": "new order", "message": '{"id": 7}'})
    assert status == 200, published
    message_id = published["message_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", message_id) and published["request_id"] != message_id

    for function_urn, trigger in triggers.items():
        request_id = delivery_request_id(message_id, trigger["trigger_id"])
        event = await event_of(harness, function_urn, request_id)
        smn = event["record"][0]["smn"]
        assert event == {
            "record": [
                {
                    "event_version": "1.0",
                    "smn": {
                        "topic_urn": topic,
                        "timestamp": smn["timestamp"],
                        "message_attributes": None,
                        "message": '{"id": 7}',
                        "type": "notification",
                        "message_id": message_id,
                        "subject": "new order",
                    },
                    "event_subscription_urn": function_urn,
                    "event_source": "smn",
                }
            ],
            "functionname": function_urn.split(":")[6],
            "requestId": request_id,
            "timestamp": event["timestamp"],
        }
        assert SMN_TIMESTAMP.match(smn["timestamp"]) and JS_DATE.match(event["timestamp"])
        js = datetime.strptime(event["timestamp"].split(" (")[0], "%a %b %d %Y %H:%M:%S GMT%z")
        assert js.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") == smn["timestamp"]
        record = await harness.record(function_urn, request_id)
        assert (record["trigger_id"], record["trigger_type"]) == (trigger["trigger_id"], "SMN")
        assert record["source"] == {"topic_urn": topic, "message_id": message_id}
    async with harness.http.get(f"{TOPICS}/{topic}") as resp:
        subscribed = {s["function_urn"] for s in (await resp.json())["subscriptions"]}
    assert subscribed == set(triggers)


async def test_message_structure_and_attributes_reach_functions(harness: Harness) -> None:
    topic = await create_topic(harness, unique("structured"))
    fn = await harness.create_function("structured", SINK)
    trigger = await subscribe(harness, fn, topic)
    structure = json.dumps({"default": "for everyone", "email": "for mail", "functiongraph": "for functions"})
    attributes = [
        {"name": "region", "type": "STRING", "value": "eu"},
        {"name": "tags", "type": "STRING_ARRAY", "values": ["a", "b"]},
    ]
    status, published = await publish(
        harness, topic, {"message": "ignored", "message_structure": structure, "message_attributes": attributes}
    )
    assert status == 200, published
    event = await event_of(harness, fn, delivery_request_id(published["message_id"], trigger["trigger_id"]))
    smn = event["record"][0]["smn"]
    assert smn["message"] == "for functions"  # message_structure wins over message, its functiongraph key over default
    assert smn["message_attributes"] == {"region": "eu", "tags": ["a", "b"]}
    assert smn["subject"] == ""


async def test_smn_triggers_need_a_topic_are_unique_and_cannot_be_disabled(harness: Harness) -> None:
    fn = await harness.create_function("subscriber", SINK)
    missing = f"urn:smn:local:{PROJECT}:{unique('missing')}"
    async with harness.http.post(
        harness.fgs(f"/triggers/{fn}"), json={"trigger_type_code": "SMN", "event_data": {"topic_urn": missing}}
    ) as resp:
        error = await resp.json()
        assert resp.status == 400, error
    assert f"event_data.topic_urn: topic {missing} does not exist" in error["error_msg"]
    async with harness.http.post(
        harness.fgs(f"/triggers/{fn}"), json={"trigger_type_code": "SMN", "event_data": {"topic_urn": "urn:x"}}
    ) as resp:
        assert resp.status == 400
        assert (
            "event_data.topic_urn: must be 'urn:smn:<region>:<project_id>:<topic_name>'"
            in (await resp.json())["error_msg"]
        )
    topic = await create_topic(harness, unique("subs"))
    trigger = await subscribe(harness, fn, topic)
    async with harness.http.post(
        harness.fgs(f"/triggers/{fn}"), json={"trigger_type_code": "SMN", "event_data": {"topic_urn": topic}}
    ) as resp:
        assert resp.status == 409
        assert "already subscribed" in (await resp.json())["error_msg"]
    one = harness.fgs(f"/triggers/{fn}/SMN/{trigger['trigger_id']}")
    async with harness.http.put(one, json={"trigger_status": "DISABLED"}) as resp:
        assert resp.status == 400
        assert "SMN triggers cannot be disabled, only deleted" in (await resp.json())["error_msg"]
    async with harness.http.get(one) as resp:
        assert (await resp.json())["state"] == {
            "topic_urn": topic,
            "subscription_status": "Confirmed",
            "lag": {"records": None, "seconds": None, "oldest_age_s": None},  # push-based: not measurable
        }
    async with harness.http.delete(one) as resp:
        assert resp.status == 204
    deliveries_before = harness.service.smn.deliveries
    status, published = await publish(harness, topic, {"message": "nobody listens"})
    assert status == 200 and published["message_id"]
    assert harness.service.smn.deliveries == deliveries_before  # unsubscribed: no invocation


# -- SMN as an async destination ----------------------------------------------------------------------------


async def test_smn_destination_delivers_outcomes_to_subscribers(harness: Harness) -> None:
    topic = await create_topic(harness, unique("outcomes"))
    listener = await harness.create_function("listener", SINK)
    trigger = await subscribe(harness, listener, topic)
    failing = await harness.create_function("failing", FAIL)
    fine = await harness.create_function("fine", OK)
    smn_dest = {"destination": "SMN", "param": json.dumps({"topic_urn": topic})}
    for urn, condition in ((failing, "on_failure"), (fine, "on_success")):
        body = {"max_async_retry_attempts": 0, "destination_config": {condition: smn_dest}}
        await harness.set_async_config(urn, body)

    for urn, expected in ((failing, ("UnhandledInvocationError", 500)), (fine, ("", 200))):
        request_id = await harness.invoke_async(urn, {"order": 1})
        await harness.wait_terminal(urn, request_id)
        delivered = delivery_request_id(destination_message_id(request_id), trigger["trigger_id"])
        event = await event_of(harness, listener, delivered)
        smn = event["record"][0]["smn"]
        assert smn["topic_urn"] == topic and smn["message_id"] == destination_message_id(request_id)
        outcome = json.loads(smn["message"])
        assert outcome["request_context"]["request_id"] == request_id
        assert outcome["request_context"]["function_urn"] == urn
        assert (outcome["request_context"]["condition"], outcome["response_context"]["status_code"]) == expected
        assert json.loads(outcome["request_payload"]) == {"order": 1}
        deadline = time.monotonic() + 20
        while (summary := (await harness.record(urn, request_id))["destination"])["status"] != "delivered":
            assert time.monotonic() < deadline, summary
            await asyncio.sleep(0.05)
        assert summary["kind"] == "SMN" and topic in summary["location"]


# -- durability ------------------------------------------------------------------------------------------------

BLOCKED_SUBSCRIBER = """
import os, time
def handler(event, context):
    smn = event["record"][0]["smn"]
    while os.path.exists(smn["subject"]):  # the test's block file
        time.sleep(0.05)
    fd = os.open(smn["message"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (event["functionname"] + " " + smn["message_id"] + "\\n").encode())
    os.close(fd)
    return "done"
"""


async def test_published_messages_survive_a_crash_before_they_run(tmp_path: Path) -> None:
    ledger, block = tmp_path / "ledger.txt", tmp_path / "block"
    block.write_text("hold")
    with ServiceProcess(tmp_path / "data", tmp_path / "service.log", TRIGGERBUS_RETRY_BASE_S="0.1") as service:
        await service.wait_healthy(timeout=20)
        async with service.harness() as h:
            async with h.http.post(TOPICS, json={"name": "durable"}) as resp:
                topic = (await resp.json())["topic_urn"]
            for name in ("left", "right"):
                urn = await h.create_function(name, BLOCKED_SUBSCRIBER, timeout=60)
                await h.add_trigger(urn, "SMN", {"topic_urn": topic})
            async with h.http.post(
                f"{TOPICS}/{topic}/publish", json={"subject": str(block), "message": str(ledger)}
            ) as resp:
                assert resp.status == 200, await resp.text()
                message_id = (await resp.json())["message_id"]
        service.kill()  # the subscribers are blocked: neither copy has run to the end
        assert not ledger.exists()
        block.unlink()

        await service.start_healthy(timeout=20)
        both = {f"left {message_id}", f"right {message_id}"}
        await wait_until(
            lambda: ledger.exists() and set(ledger.read_text().splitlines()) >= both,
            f"both subscribers to run (service log: {service.log})",
            timeout=60,
        )
        assert set(ledger.read_text().splitlines()) == both


# -- the MQTT bridge (real Mosquitto) ------------------------------------------------------------------------

BROKER = ("127.0.0.1", 1883)
LEDGER_SUBSCRIBER = """
import json, os
def handler(event, context):
    fd = os.open(context.getUserData("ledger"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps(event["record"][0]["smn"]) + "\\n").encode())
    os.close(fd)
    return "ok"
"""


def mqtt_publish(topic: str, payloads: list[bytes]) -> None:
    """Publish with QoS 1 from a plain paho client and wait for every PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("tb-test-pub"))
    client.connect(*BROKER)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def forget_session(client_id: str) -> None:
    """Drop the bridge's persistent session at the broker (clean up after the test)."""
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.on_connect = lambda *args: done.set()
    client.connect(*BROKER)
    client.loop_start()
    done.wait(10)
    client.disconnect()
    client.loop_stop()


async def test_mqtt_bridge_publishes_to_smn_at_least_once(tmp_path: Path) -> None:
    mqtt_topic = f"smn/{uuid.uuid4().hex}/orders"
    client_id = unique("tb-test-bridge")
    topic_urn = f"urn:smn:local:{PROJECT}:bridged"
    ledger = tmp_path / "ledger.jsonl"
    bridge = {"broker": "127.0.0.1:1883", "topics": {topic_urn: mqtt_topic}, "client_id": client_id}
    settings = make_settings(tmp_path / "data", smn_mqtt_bridge=bridge)
    try:
        async with running(settings) as h:
            assert await create_topic(h, "bridged") == topic_urn
            fn = await h.create_function("bridged", LEDGER_SUBSCRIBER, user_data={"ledger": str(ledger)})
            await subscribe(h, fn, topic_urn)
            bridge_state = h.service.smn.bridge
            await wait_until(lambda: bridge_state.subscribed, "the bridge's subscription")
            # a poison message (not UTF-8) between two good ones: dropped, audited, not blocking
            await asyncio.to_thread(mqtt_publish, mqtt_topic, ["héllo".encode(), b"\xff\xfe", b'{"order": 2}'])
            await wait_until(lambda: len(read_jsonl(ledger)) >= 2, "two bridged messages")
            # (the two invocations run concurrently: the ledger order is theirs)
            received = {line["message"]: line for line in read_jsonl(ledger)}
            assert set(received) == {"héllo", '{"order": 2}'}
            assert received["héllo"]["topic_urn"] == topic_urn and received["héllo"]["type"] == "notification"
            assert received["héllo"]["message_attributes"] == {"mqtt_topic": mqtt_topic}
            dropped = [a for a in await h.service.store.audit_log() if a["action"] == "smnMqttMessageDropped"]
            assert len(dropped) == 1
            assert dropped[0]["resource"] == topic_urn
            assert dropped[0]["detail"]["reason"] == "payload is not UTF-8 text (byte 0)"
            assert bridge_state.forwarded == 2 and bridge_state.dropped == 1

        # Triggerbus is down: the broker keeps QoS 1 messages for the persistent session.
        await asyncio.to_thread(mqtt_publish, mqtt_topic, [b"while you were away"])
        async with running(settings):
            await wait_until(lambda: len(read_jsonl(ledger)) >= 3, "the message queued while down")
            assert read_jsonl(ledger)[2]["message"] == "while you were away"
    finally:
        await asyncio.to_thread(forget_session, client_id)
    assert len(read_jsonl(ledger)) == 3
