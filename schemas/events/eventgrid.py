"""EVENTGRID event: a CloudEvents 1.0 JSON envelope (contract §1.15, real sample §1.3b).

EventGrid adds one extension attribute, ``ttl`` (a *string*, e.g. ``"4000"``); it is emitted only
when present. Other extension attributes are not part of the contract and are dropped.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, field_validator

from schemas.base import FGModel


def _absent(value: object) -> bool:
    return value is None


def rfc3339(moment: datetime) -> str:
    """``2026-09-30T03:24:43.167931Z``: UTC with ``Z`` as EventGrid writes ``time``."""
    if moment.tzinfo is None:
        raise ValueError("CloudEvent time must be timezone-aware")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class CloudEvent(FGModel):
    """The CloudEvents 1.0 attributes EventGrid delivers, ``data`` left open."""

    specversion: str = "1.0"
    id: str
    source: str
    type: str
    subject: str | None = Field(None, exclude_if=_absent)
    time: str | None = Field(None, exclude_if=_absent)
    datacontenttype: str | None = Field(None, exclude_if=_absent)
    dataschema: str | None = Field(None, exclude_if=_absent)
    data: Any = None
    ttl: str | None = Field(None, exclude_if=_absent)

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl_string(cls, value: object) -> object:
        # EventGrid sends ttl as a string; accept a number and emit the string form.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class EventGridEvent(CloudEvent):
    """Any EventGrid event (custom sources such as RocketMQ/RabbitMQ put the message in ``data``)."""

    @classmethod
    def build(
        cls,
        source: str,
        type: str,
        data: Any,
        subject: str | None = None,
        id: str | None = None,
        time: datetime | None = None,
        ttl: str | None = None,
        datacontenttype: str = "application/json",
        dataschema: str = "",
    ) -> EventGridEvent:
        """A CloudEvent with a fresh UUID ``id`` and the current time unless given."""
        return cls(
            id=id or str(uuid.uuid4()),
            source=source,
            type=type,
            subject=subject,
            time=rfc3339(time or datetime.now(UTC)),
            datacontenttype=datacontenttype,
            dataschema=dataschema,
            data=data,
            ttl=ttl,
        )
