"""GAUSSMONGO (GeminiDB Mongo) event (contract §1.11).

The HW template differs from DDS on purpose-looking details we keep:

* ``token``, ``full_document`` and ``ns`` are JSON-encoded **strings** (objects are accepted and
  serialised like the template: ``{"_data": "825F..."}``);
* ``event_name`` is double-quoted: ``"\\"insert\\""`` (bare names are accepted and quoted);
* a top-level ``vernier`` string carries the batch's resume token. When an input lacks it, the last
  record's token is used (in the template both are equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import field_validator, model_validator

from schemas.base import FGModel
from schemas.events.dds import MongoChange, json_string, quote_event_name, size_string


class GaussMongoBody(FGModel):
    full_document: str | None = None
    ns: str
    size_bytes: str
    token: str

    @field_validator("full_document", "ns", "token", mode="before")
    @classmethod
    def _string_or_object(cls, value: object) -> object:
        return json_string(value)

    @field_validator("size_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        return size_string(value)


class GaussMongoRecord(FGModel):
    event_name: str
    event_version: str = "1.0"
    event_source: str = "gauss_mongo"
    region: str = ""
    gauss_mongo: GaussMongoBody
    event_source_id: str = ""

    @field_validator("event_name", mode="before")
    @classmethod
    def _quoted_name(cls, value: object) -> object:
        return quote_event_name(value)

    @property
    def operation(self) -> str:
        """The bare operation type (``insert``)."""
        return self.event_name[1:-1] if self.event_name.startswith('"') else self.event_name


class GaussMongoEvent(FGModel):
    records: list[GaussMongoRecord]
    vernier: str

    @field_validator("vernier", mode="before")
    @classmethod
    def _vernier_string(cls, value: object) -> object:
        return json_string(value)

    @model_validator(mode="before")
    @classmethod
    def _default_vernier(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("vernier") is None:
            records = data.get("records")
            if isinstance(records, list) and records and isinstance(records[-1], dict):
                body = records[-1].get("gauss_mongo")
                if isinstance(body, dict) and body.get("token") is not None:
                    return {**data, "vernier": body["token"]}
        return data

    @classmethod
    def build(cls, region: str, event_source_id: str, changes: Sequence[MongoChange]) -> GaussMongoEvent:
        """One record per change; ``vernier`` is the last change's resume token."""
        if not changes:
            raise ValueError("a GAUSSMONGO event needs at least one change")
        return cls.model_validate(
            {
                "records": [
                    {
                        "event_name": change.event_name,
                        "region": region,
                        "gauss_mongo": {
                            "full_document": change.full_document,
                            "ns": change.ns,
                            "size_bytes": change.size_bytes,
                            "token": change.token,
                        },
                        "event_source_id": event_source_id,
                    }
                    for change in changes
                ],
                "vernier": changes[-1].token,
            }
        )
