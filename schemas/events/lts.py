"""LTS event (contract §1.12).

``{"lts": {"data": "<base64>"}}`` where ``data`` is plain Base64 of UTF-8 JSON (not gzip)
``{"logs": [...], "owner", "log_group_id", "log_topic_id"}``.

``logs`` is an **array** in Huawei's template and a JSON-encoded **string** in OTC's samples. Input
may use either (and, defensively, gzip-compressed data); the emitted ``data`` always decodes to the
HW array form. Input that is already in HW form is passed through byte for byte; anything that needs
normalising is re-encoded as compact JSON.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import field_validator

from schemas.base import FGModel, json_compact


class LTSPayload(FGModel):
    """The decoded ``lts.data``."""

    logs: list[dict[str, Any]]
    owner: str = ""
    log_group_id: str = ""
    log_topic_id: str = ""

    @field_validator("logs", mode="before")
    @classmethod
    def _logs_array(cls, value: object) -> object:
        return _logs_as_list(value)


def _logs_as_list(value: object) -> object:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError("logs must be an array or a JSON-encoded array string") from None
    return value


def _decode(data: str) -> tuple[dict[str, Any], bool]:
    """(payload, already_hw_form)."""
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("lts.data must be Base64") from None
    plain = True
    if raw[:2] == b"\x1f\x8b":
        raw, plain = gzip.decompress(raw), False
    try:
        payload = json.loads(raw)
    except ValueError:
        raise ValueError("lts.data must be Base64 of a JSON object") from None
    if not isinstance(payload, dict) or "logs" not in payload:
        raise ValueError("lts.data must decode to a JSON object with 'logs'")
    logs = _logs_as_list(payload["logs"])
    if not isinstance(logs, list):
        raise ValueError("lts.data 'logs' must be an array")
    hw_form = plain and isinstance(payload["logs"], list)
    return {**payload, "logs": logs}, hw_form


class LTSData(FGModel):
    data: str

    @field_validator("data")
    @classmethod
    def _hw_form(cls, value: str) -> str:
        payload, hw_form = _decode(value)
        return value if hw_form else _encode(payload)


def _encode(payload: Mapping[str, Any]) -> str:
    return base64.b64encode(json_compact(dict(payload)).encode()).decode("ascii")


class LTSEvent(FGModel):
    lts: LTSData

    def decoded(self) -> LTSPayload:
        """The log batch inside ``lts.data`` (``logs`` as an array)."""
        return LTSPayload.model_validate(_decode(self.lts.data)[0])

    @staticmethod
    def encode(payload: Mapping[str, Any]) -> str:
        """Base64 of compact JSON, ``logs`` normalised to an array (the value of ``lts.data``)."""
        normalised = dict(payload)
        if "logs" in normalised:
            normalised["logs"] = _logs_as_list(normalised["logs"])
        return _encode(normalised)

    @classmethod
    def build(cls, log_group_id: str, log_topic_id: str, owner: str, logs: Sequence[Mapping[str, Any]]) -> LTSEvent:
        """``logs`` are records like ``{"message", "time" (epoch ms), "host_name", "ip", "path",
        "log_uid", "line_no"}``; the payload is encoded in the template's key order."""
        payload = {
            "logs": [dict(log) for log in logs],
            "owner": owner,
            "log_group_id": log_group_id,
            "log_topic_id": log_topic_id,
        }
        return cls(lts=LTSData(data=cls.encode(payload)))
