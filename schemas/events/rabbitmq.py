"""RABBITMQ event (contract §1.8).

Like the HW Kafka template, ``instance_id`` sits inside each record, next to ``exchange``. A
top-level ``instance_id`` (Kafka-OTC habit) is accepted on input and moved into the records.
``event_time`` is epoch seconds (int or numeric string on input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import model_validator

from schemas.base import FGModel
from schemas.events.kafka import EpochSeconds, now_seconds


class RabbitMQRecord(FGModel):
    messages: list[str]
    instance_id: str
    exchange: str


class RabbitMQEvent(FGModel):
    event_version: str = "v1.0"
    event_time: EpochSeconds
    trigger_type: Literal["RABBITMQ"] = "RABBITMQ"
    region: str = ""
    records: list[RabbitMQRecord]

    @model_validator(mode="before")
    @classmethod
    def _top_level_instance_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "instance_id" in data and isinstance(data.get("records"), list):
            top = data["instance_id"]
            records = [
                {**r, "instance_id": top} if isinstance(r, dict) and "instance_id" not in r else r
                for r in data["records"]
            ]
            return {k: v for k, v in data.items() if k != "instance_id"} | {"records": records}
        return data

    @classmethod
    def build(
        cls,
        region: str,
        instance_id: str,
        exchange: str,
        messages: Sequence[str],
        event_time: int | None = None,
    ) -> RabbitMQEvent:
        """One batch polled from the queue bound to ``exchange``; ``event_time`` defaults to now."""
        return cls(
            event_time=now_seconds() if event_time is None else event_time,
            region=region,
            records=[RabbitMQRecord(messages=list(messages), instance_id=instance_id, exchange=exchange)],
        )
