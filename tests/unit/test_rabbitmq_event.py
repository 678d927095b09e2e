"""The RABBITMQ event a batch becomes (golden JSON), and the connector's pure pieces.

The event must match the documented sample (contract §1.8, ``tests/fixtures/golden/rabbitmq_otc.json``)
byte for byte once serialized like the batcher does; binary bodies add only the ``base64_messages``
extension. Config resolution, item ids and the ack plan are checked without a broker here; the
integration tests run them against RabbitMQ.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.base import TriggerSpec
from connectors.rabbitmq import (
    _INEQUIVALENT,
    assemble_event,
    decode_message,
    item_id,
    parse_item_id,
    plan_acks,
    queue_name,
    resolve_config,
)
from invoker.envelope import StreamItem
from schemas.errors import FSSError
from schemas.triggers import parse_event_data

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
INSTANCE = "81335d56-b9fe-4679-ba95-7030949cc76b"
EVENT_TIME = 1576737962

# What a batch with one binary body becomes: the documented record plus the extension key.
GOLDEN_BINARY = (
    '{"event_version":"v1.0","event_time":1576737962,"trigger_type":"RABBITMQ","region":"eu-de",'
    '"records":[{"messages":["first","//4AAWJpbmFyeQ==","héllo ✓"],'
    '"instance_id":"81335d56-b9fe-4679-ba95-7030949cc76b","exchange":"orders","base64_messages":[1]}]}'
)


def items(bodies: list[bytes], exchange: str = "topic", trigger_id: str = "t1") -> list[StreamItem]:
    """Stream items as the connector builds them from deliveries 1..n of one channel."""
    out = []
    for tag, body in enumerate(bodies, start=1):
        text, is_b64 = decode_message(body)
        out.append(
            StreamItem(
                item_id=item_id(trigger_id, "c0ffee", tag),
                trigger_id=trigger_id,
                trigger_type="RABBITMQ",
                function_urn="urn:fss:local:p:function:default:f:latest",
                data={"message": text, "base64": is_b64, "exchange": exchange, "instance_id": INSTANCE},
                size=len(text),
            )
        )
    return out


def as_sent(event: dict[str, Any]) -> str:
    """Serialized as the batcher does before it reaches the function."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: EVENT_TIME + 0.75)


def test_a_batch_is_the_documented_event(frozen_time: None) -> None:
    golden = json.loads((GOLDEN / "rabbitmq_otc.json").read_text(encoding="utf-8"))
    event = assemble_event("region", items([f"rabbitmq message{i}".encode() for i in range(1, 6)]))
    assert as_sent(event) == as_sent(golden)  # same keys, same order, same values


def test_binary_bodies_are_base64_and_flagged(frozen_time: None) -> None:
    binary = b"\xff\xfe\x00\x01binary"
    event = assemble_event("eu-de", items([b"first", binary, "héllo ✓".encode()], exchange="orders"))
    assert as_sent(event) == GOLDEN_BINARY
    record = event["records"][0]
    assert base64.b64decode(record["messages"][1]) == binary


def test_decode_message() -> None:
    assert decode_message(b"") == ("", False)
    assert decode_message("世界".encode()) == ("世界", False)
    assert decode_message(b"\x80") == ("gA==", True)


def test_item_ids_carry_the_channel_and_the_delivery_tag() -> None:
    assert parse_item_id("t1", item_id("t1", "abc123", 42)) == ("abc123", 42)
    assert parse_item_id("t1", item_id("t2", "abc123", 42)) is None  # another trigger's
    assert parse_item_id("t1", "t1:abc123:notanumber") is None
    assert parse_item_id("t1", "t1:42") is None
    assert queue_name("0b1d") == "triggerbus-0b1d"


@pytest.mark.parametrize(
    ("unacked", "finished", "expected"),
    [
        ([1, 2, 3], {1, 2, 3}, (3, [])),  # in order: one multiple ack
        ([1, 2, 3, 4], {1, 2, 4}, (2, [4])),  # 3 still running: 4 alone, never covered by a multiple ack
        ([5, 6, 7], {6, 7}, (None, [6, 7])),
        ([5, 6, 7], set(), (None, [])),
        ([9], {9}, (9, [])),
    ],
)
def test_ack_plan_never_covers_an_unfinished_delivery(
    unacked: list[int], finished: set[int], expected: tuple[int | None, list[int]]
) -> None:
    upto, singles = plan_acks(unacked, finished)
    assert (upto, singles) == expected
    covered = {t for t in unacked if upto is not None and t <= upto}
    assert covered <= finished and set(singles) <= finished
    assert covered | set(singles) == finished and not covered & set(singles)


def test_the_broker_refusal_text_names_the_exchange_type() -> None:
    """The 406 texts RabbitMQ 3.x sends on an inequivalent exchange.declare."""
    refused = (
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'orders' in vhost '/': "
        "received 'fanout' but current is 'direct'"
    )
    match = _INEQUIVALENT.search(refused)
    assert match is not None and match.groups() == ("type", "direct")
    durable = (
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'x' in vhost '/': "
        "received 'true' but current is 'false'"
    )
    match = _INEQUIVALENT.search(durable)
    assert match is not None and match.groups() == ("durable", "false")


def spec(**data: Any) -> TriggerSpec:
    event_data = parse_event_data("RABBITMQ", data).model_dump(mode="json", by_alias=True, exclude_none=True)
    return TriggerSpec("trig-1", "urn:fss:local:p:function:default:f:latest", "RABBITMQ", event_data, 0.0)


BASE = {"instance_id": "inst", "exchange_name": "orders", "access_password": "pw-secret-1"}


def test_config_defaults_and_prefetch() -> None:
    cfg = resolve_config(spec(**BASE, connect_address="mq1:5672, mq2:5673", access_user="app"), {})
    assert cfg.addresses == [("mq1", 5672), ("mq2", 5673)]
    assert (cfg.vhost, cfg.user, cfg.ssl, cfg.batch_size, cfg.window_ms) == ("/", "app", False, 100, 500)
    assert cfg.queue == "triggerbus-trig-1"
    assert cfg.prefetch == 500  # five batches of 100 in flight
    assert "pw-secret-1" not in repr(cfg)
    assert cfg.scrub("login pw-secret-1 refused") == "login ****** refused"
    small = resolve_config(spec(**BASE, connect_address="mq:5672", access_user="a", batch_size=1), {})
    assert small.prefetch == 100
    large = resolve_config(spec(**BASE, connect_address="mq:5672", access_user="a", batch_size=1000), {})
    assert large.prefetch == 5000


def test_config_from_the_instance_map() -> None:
    instances: dict[str, Any] = {"inst": {"address": "mq:5671", "user": "svc"}, "plain": "mq:5672"}
    cfg = resolve_config(spec(**BASE, ssl_enable=True, vhost="prod"), instances)
    assert (cfg.addresses, cfg.user, cfg.ssl, cfg.vhost) == ([("mq", 5671)], "svc", True, "prod")
    cfg = resolve_config(spec(**{**BASE, "instance_id": "plain"}, access_user="me"), instances)
    assert (cfg.addresses, cfg.user) == ([("mq", 5672)], "me")


@pytest.mark.parametrize(
    ("data", "instances", "message"),
    [
        ({}, {}, "event_data.instance_id: unknown RabbitMQ instance 'inst'"),
        ({}, {"inst": "mq:5672"}, "event_data.access_user: is required"),
        ({}, {"inst": {"user": "u"}}, "is configured wrongly in TRIGGERBUS_RABBITMQ_INSTANCES"),
        ({}, {"inst": "mq"}, "address"),
        ({"connect_address": "mq:5672", "access_user": "u", "batch_window_ms": -1}, {}, "batch_window_ms"),
        ({"connect_address": "mq:5672", "access_user": "u", "exchange_name": "x" * 256}, {}, "at most 255 bytes"),
    ],
)
def test_config_errors_name_the_field(data: dict[str, Any], instances: dict[str, Any], message: str) -> None:
    with pytest.raises(FSSError) as caught:
        resolve_config(spec(**{**BASE, **data}), instances)
    assert caught.value.status == 400 and message in caught.value.message
    assert "pw-secret-1" not in caught.value.message
