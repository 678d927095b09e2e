"""SMN: the event one subscriber receives (golden), deterministic ids, publish-body rules, bridge config."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from connectors.smn import build_delivery, delivery_request_id
from connectors.smn_bridge import BridgeConfig
from invoker.smn_sink import destination_message_id
from schemas.errors import FSSError
from triggerbus.api.smn import PublishRequest, resolve_attributes, resolve_message
from triggerbus.store.models import StoredTrigger

FUNCTION = "urn:fss:cn-north-4:0162c0f220284698b77a3d264376343a:function:default:read-smn-message:latest"
TOPIC = "urn:smn:cn-north-4:0162c0f220284698b77a3d264376343a:orders"
TRIGGER_ID = "9a14fae1-78cf-4185-ac7a-429eb6dc41fb"
MESSAGE_ID = "a51671f77d4a479cacb09e2cd591a983"

# What read-smn-message receives for one publish at 2018-01-09 15:11:40 (+08:00). Same keys,
# order and forms as the HW console template (contract §1.4); requestId is this subscriber's
# request id, event_subscription_urn its function URN.
GOLDEN = """{"record":[{"event_version":"1.0","smn":{\
"topic_urn":"urn:smn:cn-north-4:0162c0f220284698b77a3d264376343a:orders",\
"timestamp":"2018-01-09T07:11:40Z","message_attributes":null,"message":"this is smn message content",\
"type":"notification","message_id":"a51671f77d4a479cacb09e2cd591a983","subject":"this is smn message subject"},\
"event_subscription_urn":"urn:fss:cn-north-4:0162c0f220284698b77a3d264376343a:function:default:read-smn-message:latest",\
"event_source":"smn"}],"functionname":"read-smn-message","requestId":"8467ccf3-9b09-5d04-be71-e0e4d3ed5889",\
"timestamp":"Tue Jan 09 2018 15:11:40 GMT+0800 (CST)"}"""


def subscriber() -> StoredTrigger:
    return StoredTrigger(
        trigger_id=TRIGGER_ID,
        function_urn=FUNCTION,
        trigger_type="SMN",
        status="ACTIVE",
        event_data={"topic_urn": TOPIC, "subscription_status": "Confirmed"},
    )


def deliver(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "topic_urn": TOPIC,
        "message_id": MESSAGE_ID,
        "message": "this is smn message content",
        "subject": "this is smn message subject",
        "attributes": None,
        "published_at": datetime(2018, 1, 9, 15, 11, 40, tzinfo=ZoneInfo("Asia/Shanghai")),
    }
    args.update(overrides)
    envelope = build_delivery(subscriber(), **args)  # type: ignore[arg-type]
    return envelope.model_dump()


def test_subscriber_event_matches_the_golden_json() -> None:
    envelope = deliver()
    assert envelope["payload"] == GOLDEN
    assert envelope["request_id"] == "8467ccf3-9b09-5d04-be71-e0e4d3ed5889"
    assert envelope["function_urn"] == FUNCTION
    assert (envelope["trigger_id"], envelope["trigger_type"]) == (TRIGGER_ID, "SMN")
    assert envelope["source"] == {"topic_urn": TOPIC, "message_id": MESSAGE_ID}
    assert envelope["enqueued_at"] == datetime(2018, 1, 9, 7, 11, 40, tzinfo=ZoneInfo("UTC")).timestamp()


@pytest.mark.parametrize(("attributes", "emitted"), [({}, None), ({"k": "v", "l": ["a"]}, {"k": "v", "l": ["a"]})])
def test_attributes_are_an_object_or_null(attributes: dict[str, object], emitted: object) -> None:
    event = json.loads(str(deliver(attributes=attributes)["payload"]))
    assert event["record"][0]["smn"]["message_attributes"] == emitted


def test_ids_are_stable_per_message_and_subscriber() -> None:
    assert delivery_request_id(MESSAGE_ID, TRIGGER_ID) == "8467ccf3-9b09-5d04-be71-e0e4d3ed5889"
    assert delivery_request_id(MESSAGE_ID, "other") != delivery_request_id(MESSAGE_ID, TRIGGER_ID)
    assert delivery_request_id("other", TRIGGER_ID) != delivery_request_id(MESSAGE_ID, TRIGGER_ID)
    # an SMN destination published twice for one invocation is the same message
    assert destination_message_id("1167bf8c-87b0-43ab-8f5f-26b16c64f252") == "ff5d85f5ba57502e84cc79cc9d66d8c6"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"message": "plain"}, "plain"),
        ({"message": "plain", "message_structure": '{"default": "d"}'}, "d"),
        ({"message_structure": '{"default": "d", "functionstage": "fs"}'}, "fs"),
        ({"message_structure": '{"default": "d", "functionstage": "fs", "functiongraph": "fg"}'}, "fg"),
        ({"message_structure": '{"default": "d"}', "message_template_name": "ignored: structure wins"}, "d"),
    ],
)
def test_message_priority_is_structure_then_template_then_message(body: dict[str, str], text: str) -> None:
    assert resolve_message(PublishRequest.model_validate(body)) == text


def test_templates_and_empty_messages_are_refused() -> None:
    with pytest.raises(FSSError, match="message templates are not supported"):
        resolve_message(PublishRequest(message="m", message_template_name="t"))
    with pytest.raises(FSSError, match="message: the message must not be empty"):
        resolve_message(PublishRequest(message=""))
    with pytest.raises(FSSError) as too_big:
        resolve_message(PublishRequest(message="€" * 90_000))  # 270,000 bytes in UTF-8
    assert too_big.value.status == 413


def test_attribute_forms() -> None:
    listed = PublishRequest.model_validate(
        {
            "message_attributes": [
                {"name": "a", "type": "STRING", "value": "1"},
                {"name": "b", "type": "PROTOCOL", "values": ["email", "sms"]},
            ]
        }
    )
    assert resolve_attributes(listed) == {"a": "1", "b": ["email", "sms"]}
    assert resolve_attributes(PublishRequest.model_validate({"message_attributes": {"a": "1"}})) == {"a": "1"}
    assert resolve_attributes(PublishRequest()) is None
    with pytest.raises(FSSError, match=r"message_attributes\[0\]: attribute 'x' of type STRING_ARRAY needs"):
        resolve_attributes(
            PublishRequest.model_validate({"message_attributes": [{"name": "x", "type": "STRING_ARRAY"}]})
        )


def test_bridge_settings_are_checked_and_route_by_filter() -> None:
    with pytest.raises(ValueError, match="broker must be 'host:port'"):
        BridgeConfig.parse({"broker": "nohost", "topics": {"urn:smn:r:p:t": "a"}})
    with pytest.raises(ValueError, match="topics must map"):
        BridgeConfig.parse({"broker": "h:1883", "topics": {}})
    with pytest.raises(ValueError, match=r"topics\['t'\] must map an SMN topic URN"):
        BridgeConfig.parse({"broker": "h:1883", "topics": {"t": "a"}})
    config = BridgeConfig.parse({"broker": "h:1883", "topics": {"urn:smn:r:p:t": "smn/+/x", "urn:smn:r:p:u": "#"}})
    assert (config.host, config.port, config.client_id) == ("h", 1883, "triggerbus-smn-bridge")
    assert config.route("smn/a/x") == "urn:smn:r:p:t"  # the first matching filter wins
    assert config.route("other/topic") == "urn:smn:r:p:u"
    assert "password" not in repr(BridgeConfig.parse({"broker": "h:1", "topics": {"urn:smn:r:p:t": "a"},
                                                     "password": "pw"}))  # fmt: skip
