"""KAFKA and OPENSOURCEKAFKA events (contract §1.6, §1.7), plus the same-shaped ROCKETMQ event (§1.9).

Where is ``instance_id``? The two official sources disagree:

* Huawei's 2021 console template (``kafka-event-template``) puts it **inside** each record;
* OTC's docs, samples and Go struct put it **top-level**.

Handlers written against either source exist, so :class:`KafkaEvent` accepts both on input and
**emits both**: ``instance_id`` top-level *and* inside every record. Each handler finds the key it
looks for; the extra key is harmless to the other.

Other quirks: ``event_time`` is epoch **seconds** as an int in every sample (the doc table says
String), so numeric strings and ISO-8601 timestamps are accepted and converted; open-source Kafka
events carry ``"trigger_type": "KAFKA"``, so ``OPENSOURCEKAFKA`` is accepted and emitted as ``KAFKA``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, field_validator, model_validator

from schemas.base import FGModel


def epoch_seconds(value: object) -> object:
    """Coerce an ``event_time`` to int epoch seconds: int, numeric string or ISO-8601 string."""
    if isinstance(value, bool):
        raise ValueError("event_time must be epoch seconds (int or numeric string)")
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("event_time must be epoch seconds (int or numeric string)") from None
        if moment.tzinfo is None:
            raise ValueError("event_time ISO timestamps need a UTC offset")
        return int(moment.timestamp())
    return value


EpochSeconds = Annotated[int, BeforeValidator(epoch_seconds)]
"""``event_time``: epoch seconds on output; int, numeric string or ISO time with offset on input."""


def now_seconds() -> int:
    return int(time.time())


class KafkaRecord(FGModel):
    messages: list[str]
    topic_id: str
    instance_id: str


class KafkaEvent(FGModel):
    """Messages polled from one Kafka instance, grouped by topic (one record per topic)."""

    event_version: str = "v1.0"
    event_time: EpochSeconds
    trigger_type: Literal["KAFKA"] = "KAFKA"
    region: str = ""
    instance_id: str
    records: list[KafkaRecord]

    @field_validator("trigger_type", mode="before")
    @classmethod
    def _opensource_is_kafka(cls, value: object) -> object:
        return "KAFKA" if value == "OPENSOURCEKAFKA" else value

    @model_validator(mode="before")
    @classmethod
    def _instance_id_both_places(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            return data
        records = data["records"]
        top = data.get("instance_id")
        if top is None:
            top = next((r["instance_id"] for r in records if isinstance(r, dict) and "instance_id" in r), None)
        if top is None:
            raise ValueError("instance_id is required, top-level or inside the records")
        filled = [{**r, "instance_id": top} if isinstance(r, dict) and "instance_id" not in r else r for r in records]
        return {**data, "instance_id": top, "records": filled}

    @classmethod
    def build(
        cls,
        region: str,
        instance_id: str,
        records: Sequence[tuple[str, Sequence[str]]],
        event_time: int | None = None,
    ) -> KafkaEvent:
        """``records`` are ``(topic_id, messages)``; ``event_time`` defaults to now (epoch seconds).

        Used for both KAFKA and OPENSOURCEKAFKA triggers (the event says ``KAFKA`` for both).
        """
        return cls(
            event_time=now_seconds() if event_time is None else event_time,
            region=region,
            instance_id=instance_id,
            records=[
                KafkaRecord(messages=list(messages), topic_id=topic, instance_id=instance_id)
                for topic, messages in records
            ],
        )


class RocketMQRecord(FGModel):
    messages: list[str]
    topic_id: str


class RocketMQEvent(FGModel):
    """ROCKETMQ (OTC) event: Kafka's shape, ``instance_id`` top-level only (the one known sample)."""

    event_version: str = "v1.0"
    event_time: EpochSeconds
    trigger_type: Literal["ROCKETMQ"] = "ROCKETMQ"
    region: str = ""
    instance_id: str
    records: list[RocketMQRecord]

    @model_validator(mode="before")
    @classmethod
    def _instance_id_from_records(cls, data: Any) -> Any:
        if isinstance(data, dict) and "instance_id" not in data and isinstance(data.get("records"), list):
            found = next(
                (r["instance_id"] for r in data["records"] if isinstance(r, dict) and "instance_id" in r),
                None,
            )
            if found is not None:
                return {**data, "instance_id": found}
        return data

    @classmethod
    def build(
        cls,
        region: str,
        instance_id: str,
        records: Sequence[tuple[str, Sequence[str]]],
        event_time: int | None = None,
    ) -> RocketMQEvent:
        """``records`` are ``(topic, messages)``; ``event_time`` defaults to now (epoch seconds)."""
        return cls(
            event_time=now_seconds() if event_time is None else event_time,
            region=region,
            instance_id=instance_id,
            records=[RocketMQRecord(messages=list(messages), topic_id=topic) for topic, messages in records],
        )
