"""CTS event (contract §1.13): ``{"cts": {...one audit trace...}}``.

``time`` and ``record_time`` are epoch **milliseconds** (ints) in the OTC sample, its Go struct and
a real capture. Huawei's 2021 template (inside a code docstring) shows them as ``""``; those
placeholders are accepted and emitted as ``0`` so the emitted type is always int.

Real events carry more keys than the template (``api_version``, ``domain_id``, ``message``,
``operation_id``, ``project_id``, ``read_only``, ``resource_account_id``, ``source_ip``,
``trace_rating``, ...). They are typed when known, and any other key is kept as is (``extra=allow``),
so a real trace round-trips unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, Field, field_validator

from schemas.base import FGModel


def _absent(value: object) -> bool:
    return value is None


class CTSDomain(FGModel):
    model_config = ConfigDict(extra="allow")

    name: str = ""
    id: str = ""


class CTSUser(FGModel):
    model_config = ConfigDict(extra="allow")

    name: str = ""
    id: str = ""
    domain: CTSDomain = Field(default_factory=CTSDomain)


class CTSTrace(FGModel):
    model_config = ConfigDict(extra="allow")

    time: int = 0
    user: CTSUser = Field(default_factory=CTSUser)
    request: Any = Field(default_factory=dict)
    response: Any = Field(default_factory=dict)
    code: int = 0
    service_type: str = ""
    resource_type: str = ""
    resource_name: str = ""
    # A string in real events; the HW template has ``{}``. Kept as given.
    resource_id: str | dict[str, Any] = ""
    trace_name: str = ""
    trace_type: str = ""
    record_time: int = 0
    trace_id: str = ""
    trace_status: str = ""
    # Keys of real (CTS v3) traces, emitted only when present.
    api_version: str | None = Field(None, exclude_if=_absent)
    domain_id: str | None = Field(None, exclude_if=_absent)
    message: str | None = Field(None, exclude_if=_absent)
    operation_id: str | None = Field(None, exclude_if=_absent)
    project_id: str | None = Field(None, exclude_if=_absent)
    read_only: bool | None = Field(None, exclude_if=_absent)
    resource_account_id: str | None = Field(None, exclude_if=_absent)
    source_ip: str | None = Field(None, exclude_if=_absent)
    trace_rating: str | None = Field(None, exclude_if=_absent)

    @field_validator("time", "record_time", mode="before")
    @classmethod
    def _epoch_ms(cls, value: object) -> object:
        if value is None or value == "":
            return 0
        if isinstance(value, bool):
            raise ValueError("must be epoch milliseconds (int)")
        if isinstance(value, str):
            if not value.strip().isdigit():
                raise ValueError("must be epoch milliseconds (int or numeric string)")
            return int(value)
        return value

    @field_validator("code", mode="before")
    @classmethod
    def _code(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value


class CTSEvent(FGModel):
    cts: CTSTrace

    @classmethod
    def build(
        cls,
        *,
        time_ms: int,
        user: Mapping[str, Any],
        service_type: str,
        resource_type: str,
        resource_name: str,
        resource_id: str,
        trace_name: str,
        trace_type: str,
        trace_id: str,
        code: int,
        trace_status: str = "normal",
        record_time_ms: int | None = None,
        request: Any = None,
        response: Any = None,
        extra: Mapping[str, Any] | None = None,
    ) -> CTSEvent:
        """One audit trace. ``user`` is ``{"name", "id", "domain": {"name", "id"}}``; ``extra`` adds
        real-trace keys (``source_ip``, ``operation_id``, ...). ``record_time_ms`` defaults to ``time_ms``."""
        trace: dict[str, Any] = {
            "time": time_ms,
            "user": dict(user),
            "request": {} if request is None else request,
            "response": {} if response is None else response,
            "code": code,
            "service_type": service_type,
            "resource_type": resource_type,
            "resource_name": resource_name,
            "resource_id": resource_id,
            "trace_name": trace_name,
            "trace_type": trace_type,
            "record_time": time_ms if record_time_ms is None else record_time_ms,
            "trace_id": trace_id,
            "trace_status": trace_status,
        }
        return cls.model_validate({"cts": {**trace, **(extra or {})}})
