"""EVENTGRID event: a CloudEvents 1.0 JSON envelope (contract §1.15, real sample §1.3b).

EventGrid adds one extension attribute, ``ttl`` (a *string*, e.g. ``"4000"``); it is emitted only
when present. The models drop other extension attributes (they are not part of the contract);
the ingress validator (:func:`validate_cloudevent`) keeps valid ones, as CloudEvents asks of
intermediaries, so what a producer sent reaches the function.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

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


# ---------------------------------------------------------------- CloudEvents ingress validation

SPECVERSION = "1.0"
REQUIRED_ATTRIBUTES = ("id", "source", "specversion", "type")
# Order of the context attributes in the structured form delivered to functions.
KNOWN_ATTRIBUTES = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema")
ATTRIBUTE_NAME_RE = re.compile(r"^[a-z0-9]+$")
_RFC3339_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-](\d{2}):(\d{2}))$")
Label = Callable[[str], str]


class CloudEventError(ValueError):
    """An invalid CloudEvent: ``message`` names the attribute (and batch index) at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_rfc3339(text: str) -> None:
    """RFC 3339 ``date-time`` (any number of fraction digits, ``Z`` or an offset) with real values."""
    found = _RFC3339_RE.match(text)
    if not found:
        raise ValueError("must be an RFC 3339 timestamp such as 2026-09-30T03:24:43.167931174Z")
    year, month, day, hour, minute, second = (int(found.group(i)) for i in range(1, 7))
    try:
        datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)  # 60: a leap second
    except ValueError as exc:
        raise ValueError(f"is not a valid date-time ({exc})") from None
    if second > 60 or (found.group(9) and (int(found.group(9)) > 23 or int(found.group(10)) > 59)):
        raise ValueError("is not a valid date-time (second or offset out of range)")


def _plain(name: str) -> str:
    return name


def _string_attribute(event: dict[str, Any], name: str, label: Label, *, allow_empty: bool = False) -> str | None:
    value = event.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CloudEventError(f"{label(name)}: must be a string (got {_json_type(value)})")
    if not value and not allow_empty:
        raise CloudEventError(f"{label(name)}: must not be empty")
    return value


def validate_cloudevent(event: object, label: Label = _plain, whole: str = "body") -> dict[str, Any]:
    """Check one CloudEvent in its JSON (structured) form; return it as delivered to functions.

    Context attributes come first in a fixed order, then extensions, then ``data`` or
    ``data_base64``. Values are kept as sent (``time`` is not reformatted); a ``null`` attribute
    counts as absent; EventGrid's ``ttl`` is emitted as a string. ``label`` turns an attribute name
    into how the caller names it in errors (``events[2].source``, ``ce-source header`` ...) and
    ``whole`` names the event itself.
    """
    if not isinstance(event, dict):
        raise CloudEventError(f"{whole}: must be a JSON object (got {_json_type(event)})")
    out: dict[str, Any] = {}
    for name in REQUIRED_ATTRIBUTES:
        if event.get(name) is None:
            raise CloudEventError(f"{label(name)}: is required")
    specversion = _string_attribute(event, "specversion", label)
    if specversion != SPECVERSION:
        raise CloudEventError(f"{label('specversion')}: must be {SPECVERSION!r} (got {specversion!r})")
    for name in KNOWN_ATTRIBUTES:
        value = _string_attribute(event, name, label, allow_empty=name == "dataschema")
        if value is not None:
            out[name] = value
    if "time" in out:
        try:
            check_rfc3339(out["time"])
        except ValueError as exc:
            raise CloudEventError(f"{label('time')}: {exc} (got {out['time'][:64]!r})") from None
    for name, value in event.items():
        if name in KNOWN_ATTRIBUTES or name in ("data", "data_base64") or value is None:
            continue
        if not ATTRIBUTE_NAME_RE.match(name):
            raise CloudEventError(f"{label(name)}: attribute names must be lower-case letters and digits only")
        if name == "ttl" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str | int | bool):
            raise CloudEventError(
                f"{label(name)}: an extension attribute must be a string, integer or boolean (got {_json_type(value)})"
            )
        out[name] = value
    if "data" in event and "data_base64" in event:
        raise CloudEventError(f"{label('data_base64')}: data and data_base64 cannot both be present")
    if "data_base64" in event:
        encoded = event["data_base64"]
        if not isinstance(encoded, str):
            raise CloudEventError(f"{label('data_base64')}: must be a base64 string (got {_json_type(encoded)})")
        try:
            base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise CloudEventError(f"{label('data_base64')}: is not valid base64") from None
        out["data_base64"] = encoded
    elif "data" in event:
        out["data"] = event["data"]
    return out


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` and any ``+json`` type (RFC 6839), parameters ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def binary_cloudevent(headers: list[tuple[str, str]], body: bytes, content_type: str | None) -> dict[str, Any]:
    """A binary-mode HTTP request (``ce-*`` headers, the body is ``data``) in its structured form.

    Header values are percent-decoded (CloudEvents HTTP binding §3.1.3.2). The Content-Type becomes
    ``datacontenttype``; a JSON body becomes JSON ``data``, a ``text/*`` body a string, anything
    else ``data_base64``.
    """
    attributes: dict[str, Any] = {}
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if not name.startswith("ce-"):
            continue
        attribute = name[3:]
        if attribute in attributes:
            raise CloudEventError(f"{name} header: given more than once")
        try:
            attributes[attribute] = unquote(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise CloudEventError(f"{name} header: percent-encoding is not valid UTF-8") from None
    for reserved in ("data", "data_base64", "datacontenttype"):
        if reserved in attributes:
            raise CloudEventError(f"ce-{reserved} header: not allowed in binary mode (use the body and Content-Type)")
    if content_type:
        attributes["datacontenttype"] = content_type
    if body:
        attributes.update(_binary_data(body, content_type or ""))
    return validate_cloudevent(attributes, lambda name: f"ce-{name} header")


def _binary_data(body: bytes, content_type: str) -> dict[str, Any]:
    media = content_type.split(";", 1)[0].strip().lower()
    if is_json_media_type(content_type):
        try:
            return {"data": json.loads(body.decode("utf-8"))}
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CloudEventError(f"body: is not valid JSON for Content-Type {media} ({exc})") from None
    if media.startswith("text/"):
        try:
            return {"data": body.decode("utf-8")}
        except UnicodeDecodeError:
            raise CloudEventError(f"body: is not valid UTF-8 text for Content-Type {media}") from None
    return {"data_base64": base64.b64encode(body).decode("ascii")}
