"""DDS (document database change stream) event (contract §1.10).

``token``, ``full_document`` and ``ns`` are JSON **objects** in Huawei's 2021 template and
JSON-encoded **strings** in OTC's samples (the OTC Go struct even mixes the two). Both are accepted;
the HW object form is emitted. GAUSSMONGO (``gaussmongo.py``) is the mirror image: it emits strings.

:class:`MongoChange` is the connector-facing description of one change-stream document, shared by
the DDS and GAUSSMONGO builders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationInfo, field_validator

from schemas.base import FGModel


def mongo_json(value: Any) -> str:
    """Serialise like the templates' embedded strings: ``{"_data": "825D..."}`` (``", "``/``": "``)."""
    return json.dumps(value, ensure_ascii=False)


def json_object(value: object, field: str) -> object:
    """Accept an object or a JSON-encoded object string; anything else is left for type validation."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            raise ValueError(f"{field} must be a JSON object or a JSON-encoded object string") from None
        if decoded is not None and not isinstance(decoded, dict):
            raise ValueError(f"{field} must encode a JSON object")
        return decoded
    return value


def json_string(value: object) -> object:
    """Accept a JSON-encoded string as is, or serialise an object/array to one."""
    if isinstance(value, Mapping):
        return mongo_json(dict(value))
    if isinstance(value, list):
        return mongo_json(value)
    return value


def unquote_event_name(value: object) -> object:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def quote_event_name(value: object) -> object:
    """GAUSSMONGO's double-quoted ``"\\"insert\\""`` form; already-quoted names are kept."""
    if isinstance(value, str) and not (len(value) >= 2 and value[0] == value[-1] == '"'):
        return json.dumps(value, ensure_ascii=False)
    return value


def size_string(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


@dataclass(frozen=True, slots=True)
class MongoChange:
    """One change-stream document, in (relaxed or canonical) Extended JSON.

    ``token``, ``full_document`` and ``ns`` may be objects or already-serialised JSON strings.
    """

    event_name: str
    token: Mapping[str, Any] | str
    full_document: Mapping[str, Any] | str | None
    ns: Mapping[str, Any] | str
    size_bytes: int

    @classmethod
    def from_change_stream(cls, change: Mapping[str, Any], size_bytes: int | None = None) -> MongoChange:
        """From a change-stream document (``operationType``, ``_id``, ``fullDocument``, ``ns``).

        ``size_bytes`` defaults to the UTF-8 length of the document's JSON encoding. Raises
        ``ValueError`` (pydantic's ``ValidationError`` for wrong field types) naming what is wrong.
        """
        missing = [key for key in ("operationType", "_id") if key not in change]
        if missing:
            raise ValueError(f"change-stream document without {', '.join(missing)}")
        if size_bytes is None:
            size_bytes = len(mongo_json(dict(change)).encode())
        return cls(
            event_name=str(change["operationType"]),
            token=change["_id"],
            full_document=change.get("fullDocument"),
            ns=change.get("ns", {}),
            size_bytes=size_bytes,
        )


class MongoNamespace(FGModel):
    db: str
    coll: str


class DDSBody(FGModel):
    size_bytes: str
    token: dict[str, Any]
    full_document: dict[str, Any] | None = None
    ns: MongoNamespace

    @field_validator("size_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        return size_string(value)

    @field_validator("token", "full_document", "ns", mode="before")
    @classmethod
    def _object_or_json_string(cls, value: object, info: ValidationInfo) -> object:
        return json_object(value, info.field_name or "value")


class DDSRecord(FGModel):
    event_source: str = "dds"
    event_name: str
    region: str = ""
    event_version: str = "1.0"
    dds: DDSBody
    event_source_id: str = ""

    @field_validator("event_name", mode="before")
    @classmethod
    def _bare_name(cls, value: object) -> object:
        return unquote_event_name(value)


class DDSEvent(FGModel):
    records: list[DDSRecord]

    @classmethod
    def build(cls, region: str, event_source_id: str, changes: Sequence[MongoChange]) -> DDSEvent:
        """One record per change; ``event_source_id`` is the trigger id."""
        return cls.model_validate(
            {
                "records": [
                    {
                        "event_name": change.event_name,
                        "region": region,
                        "dds": {
                            "size_bytes": change.size_bytes,
                            "token": _plain(change.token),
                            "full_document": _plain(change.full_document),
                            "ns": _plain(change.ns),
                        },
                        "event_source_id": event_source_id,
                    }
                    for change in changes
                ]
            }
        )


def _plain(value: Mapping[str, Any] | str | None) -> dict[str, Any] | str | None:
    return dict(value) if isinstance(value, Mapping) else value
