"""SMN event (contract §1.4).

Quirks kept on purpose:

* the array key is ``record`` (singular), unlike OBS's ``Records``;
* ``message_attributes`` arrives as ``null``, ``"None"``, ``""`` or an object; the empty forms are
  emitted as ``null`` (the HW template's value);
* the HW console template adds top-level ``functionname``, ``requestId`` and ``timestamp`` (a
  JavaScript ``Date.toString()`` string such as ``Tue Jan 09 2018 15:11:40 GMT+0800 (CST)``).
  The SMN-side document omits them; parsed events without them are re-emitted without them
  (nothing is invented), while :meth:`SMNEvent.build` always sets them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, field_validator

from schemas.base import FGModel


def _absent(value: object) -> bool:
    return value is None


def js_date_string(moment: datetime) -> str:
    """``Tue Jan 09 2018 15:11:40 GMT+0800 (CST)``: JavaScript ``Date.toString()`` in ``moment``'s zone."""
    if moment.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    return moment.strftime("%a %b %d %Y %H:%M:%S GMT%z") + f" ({moment.tzname() or 'UTC'})"


class SMNMessage(FGModel):
    topic_urn: str
    timestamp: str
    message_attributes: dict[str, Any] | None = None
    message: str
    type: str = "notification"
    message_id: str
    subject: str = ""

    @field_validator("message_attributes", mode="before")
    @classmethod
    def _empty_attributes(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
            return None
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("message_attributes must be null, an object or a JSON object string") from None
        return value


class SMNRecord(FGModel):
    event_version: str = "1.0"
    smn: SMNMessage
    event_subscription_urn: str = ""
    event_source: str = "smn"


class SMNEvent(FGModel):
    record: list[SMNRecord]
    functionname: str | None = Field(None, exclude_if=_absent)
    request_id: str | None = Field(None, alias="requestId", exclude_if=_absent)
    timestamp: str | None = Field(None, exclude_if=_absent)

    @classmethod
    def build(
        cls,
        *,
        topic_urn: str,
        message: str,
        message_id: str,
        subscription_urn: str,
        function_name: str,
        request_id: str,
        published_at: datetime,
        subject: str = "",
        message_attributes: dict[str, Any] | None = None,
    ) -> SMNEvent:
        """One published message as delivered to the subscribed function.

        ``published_at`` must be timezone-aware: ``smn.timestamp`` is its UTC ``...Z`` form, the
        top-level ``timestamp`` its ``Date.toString()`` form in its own zone.
        """
        return cls(
            record=[
                SMNRecord(
                    smn=SMNMessage(
                        topic_urn=topic_urn,
                        timestamp=published_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        message_attributes=message_attributes,
                        message=message,
                        message_id=message_id,
                        subject=subject,
                    ),
                    event_subscription_urn=subscription_urn,
                )
            ],
            functionname=function_name,
            request_id=request_id,
            timestamp=js_date_string(published_at),
        )
