"""TIMER event (contract §1.1).

The same five string keys appear in the OTC sample and inline in Huawei's own API
model description, so there is only one form to accept and emit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from schemas.base import FGModel


class TimerEvent(FGModel):
    """``{"version","time","trigger_type":"TIMER","trigger_name","user_event"}``.

    ``time`` is ISO-8601 with the UTC offset (``2018-06-01T08:30:00+08:00``).
    ``user_event`` is the trigger's configured additional information; the key is always present
    (``""`` when the trigger has none) because handlers read ``event["user_event"]`` directly.
    """

    version: str = "v1.0"
    time: str
    trigger_type: Literal["TIMER"] = "TIMER"
    trigger_name: str
    user_event: str = ""

    @classmethod
    def build(cls, trigger_name: str, fire_time_iso: str | datetime, user_event: str | None = None) -> TimerEvent:
        """The event a timer trigger named ``trigger_name`` sends when it fires at ``fire_time_iso``.

        A ``datetime`` must be timezone-aware; it is rendered with second precision and its offset.
        """
        if isinstance(fire_time_iso, datetime):
            if fire_time_iso.tzinfo is None:
                raise ValueError("fire_time_iso must be timezone-aware (the event time carries an offset)")
            fire_time_iso = fire_time_iso.isoformat(timespec="seconds")
        return cls(time=fire_time_iso, trigger_name=trigger_name, user_event=user_event or "")
