"""IoTDA event (contract §1.14): the IoTDA data-forwarding envelope.

No FunctionGraph-specific IoTDA sample is public; the shape is IoTDA's forwarding format, confirmed
by the seed practices document (a FunctionGraph handler reading ``notify_data.body``) and a
third-party AMQP capture:

``{"resource", "event", "event_time", "notify_data": {"header": {...}, "body": {...}}}``,
optionally ``event_time_ms`` and ``request_id`` (newer envelopes). ``event_time`` is
``yyyyMMdd'T'HHmmss'Z'`` (UTC); it is not validated on input because documentation samples use
placeholders such as ``"string"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from schemas.base import FGModel


def _absent(value: object) -> bool:
    return value is None


def iotda_time(moment: datetime) -> str:
    """``20260703T183519Z``."""
    if moment.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def iotda_time_ms(moment: datetime) -> str:
    """``2026-07-03T18:35:19.480Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class IoTDATag(FGModel):
    tag_key: str
    tag_value: str


class IoTDAHeader(FGModel):
    """Device identity. Product-level events lack device keys, so every key is emitted only when known."""

    app_id: str | None = Field(None, exclude_if=_absent)
    device_id: str | None = Field(None, exclude_if=_absent)
    node_id: str | None = Field(None, exclude_if=_absent)
    product_id: str | None = Field(None, exclude_if=_absent)
    gateway_id: str | None = Field(None, exclude_if=_absent)
    tags: list[IoTDATag] | None = Field(None, exclude_if=_absent)


class IoTDAMessageBody(FGModel):
    """``device.message``/``report`` body (IoTDA DeviceMessageReport): the topic and what was sent.

    ``content`` is the message itself: parsed JSON when the payload is JSON, else the text, else
    (binary payloads) its base64 form.
    """

    topic: str | None = Field(None, exclude_if=_absent)
    content: Any = None


class IoTDAServiceProperties(FGModel):
    """One service of a property report: ``{"service_id", "properties", "event_time"}``."""

    service_id: str
    properties: dict[str, Any]
    event_time: str | None = Field(None, exclude_if=_absent)


class IoTDAPropertiesBody(FGModel):
    """``device.property``/``report`` body (IoTDA DevicePropertiesReport): ``{"services": [...]}``."""

    services: list[IoTDAServiceProperties]


class IoTDANotifyData(FGModel):
    header: IoTDAHeader = Field(default_factory=IoTDAHeader)
    body: dict[str, Any] = Field(default_factory=dict)


class IoTDAEvent(FGModel):
    resource: str
    event: str
    event_time: str
    event_time_ms: str | None = Field(None, exclude_if=_absent)
    request_id: str | None = Field(None, exclude_if=_absent)
    notify_data: IoTDANotifyData

    @classmethod
    def build(
        cls,
        *,
        resource: str,
        event: str,
        body: Mapping[str, Any],
        event_time: datetime,
        device_id: str | None = None,
        product_id: str | None = None,
        node_id: str | None = None,
        app_id: str | None = None,
        gateway_id: str | None = None,
        tags: Sequence[tuple[str, str]] | None = None,
        request_id: str | None = None,
        with_ms: bool = True,
    ) -> IoTDAEvent:
        """E.g. ``resource="device.property", event="report"``; ``event_time`` must be timezone-aware.

        ``with_ms`` adds the newer ``event_time_ms`` key.
        """
        return cls(
            resource=resource,
            event=event,
            event_time=iotda_time(event_time),
            event_time_ms=iotda_time_ms(event_time) if with_ms else None,
            request_id=request_id,
            notify_data=IoTDANotifyData(
                header=IoTDAHeader(
                    app_id=app_id,
                    device_id=device_id,
                    node_id=node_id,
                    product_id=product_id,
                    gateway_id=gateway_id,
                    tags=None if tags is None else [IoTDATag(tag_key=k, tag_value=v) for k, v in tags],
                ),
                body=dict(body),
            ),
        )
