"""Async invoke configuration (``PUT/GET/DELETE .../async-invoke-config``)."""

from __future__ import annotations

import enum
import json
import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from schemas.base import FGModel, json_compact

DEFAULT_MAX_RETRIES = 1
DEFAULT_MAX_EVENT_AGE_S = 3600
SMN_TOPIC_RE = re.compile(r"^urn:smn:[A-Za-z0-9_-]+:[A-Za-z0-9_-]+:[A-Za-z0-9_-]{1,255}$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class DestinationKind(enum.StrEnum):
    FUNCTIONGRAPH = "FunctionGraph"
    OBS = "OBS"
    SMN = "SMN"
    DIS = "DIS"


class OBSParam(FGModel):
    bucket: str
    prefix: str = ""
    expires: int = Field(0, ge=0, le=365)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not BUCKET_RE.match(v):
            raise ValueError("must be a valid bucket name (3-63 lowercase letters, digits, '.' or '-')")
        return v


class SMNParam(FGModel):
    topic_urn: str

    @field_validator("topic_urn")
    @classmethod
    def _urn(cls, v: str) -> str:
        if not SMN_TOPIC_RE.match(v):
            raise ValueError("must look like urn:smn:<region>:<project_id>:<topic>")
        return v


class DISParam(FGModel):
    stream_name: str = Field(min_length=1, max_length=64)


class FunctionParam(FGModel):
    func_urn: str


PARAM_MODELS: dict[DestinationKind, type[FGModel]] = {
    DestinationKind.OBS: OBSParam,
    DestinationKind.SMN: SMNParam,
    DestinationKind.DIS: DISParam,
    DestinationKind.FUNCTIONGRAPH: FunctionParam,
}


class DestinationConfig(FGModel):
    destination: DestinationKind
    param: str  # a JSON *string*, as FunctionGraph documents it

    @field_validator("destination", mode="before")
    @classmethod
    def _kind(cls, v: Any) -> Any:
        if isinstance(v, str):
            for kind in DestinationKind:
                if v.lower() == kind.value.lower():
                    return kind
            raise ValueError(f"must be one of {', '.join(k.value for k in DestinationKind)}")
        return v

    @field_validator("param", mode="before")
    @classmethod
    def _param_text(cls, v: Any) -> Any:
        return json_compact(v) if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _param(self) -> DestinationConfig:
        self.parsed_param()
        return self

    def parsed_param(self) -> Any:
        try:
            data = json.loads(self.param)
        except json.JSONDecodeError as exc:
            raise ValueError(f"param must be a JSON string ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ValueError("param must be a JSON object string")
        return PARAM_MODELS[self.destination].model_validate(data)


class FuncAsyncDestinationConfig(FGModel):
    on_success: DestinationConfig | None = None
    on_failure: DestinationConfig | None = None


class AsyncInvokeConfigRequest(FGModel):
    max_async_event_age_in_seconds: int = Field(DEFAULT_MAX_EVENT_AGE_S, ge=1, le=86400)
    max_async_retry_attempts: int = Field(DEFAULT_MAX_RETRIES, ge=0, le=3)
    destination_config: FuncAsyncDestinationConfig | None = None
    enable_async_status_log: bool = True


class AsyncInvokeConfig(FGModel):
    func_urn: str
    max_async_event_age_in_seconds: int = DEFAULT_MAX_EVENT_AGE_S
    max_async_retry_attempts: int = DEFAULT_MAX_RETRIES
    destination_config: FuncAsyncDestinationConfig = Field(default_factory=FuncAsyncDestinationConfig)
    enable_async_status_log: bool = True
    created_time: str = ""
    last_modified: str = ""
