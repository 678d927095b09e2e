"""Function configuration: the FunctionGraph CreateFunction request and the config response."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas.base import FGModel
from schemas.urn import NAME_RE, PACKAGE_RE

# FunctionGraph Python runtimes; all run on the service's own interpreter (see docs/architecture.md).
PYTHON_RUNTIMES = ("Python2.7", "Python3.6", "Python3.9", "Python3.10", "Python3.11", "Python3.12")
HTTP_RUNTIME = "http"
RUNTIMES = (*PYTHON_RUNTIMES, HTTP_RUNTIME)
MEMORY_SIZES = (128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 8192, 10240)
HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
USER_DATA_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
MAX_CODE_ZIP_BYTES = 40 * 1024 * 1024  # direct upload limit of FunctionGraph


class FuncCode(FGModel):
    file: str | None = None  # base64 of the zip (code_type zip) or of the source file (inline)
    link: str | None = None


class FunctionCredentials(FGModel):
    """Triggerbus extension: what ``context.getAccessKey()`` & co. return (FunctionGraph derives
    them from an agency). Stored encrypted; never returned."""

    access_key: str = ""
    secret_key: str = ""
    security_access_key: str = ""
    security_secret_key: str = ""
    security_token: str = ""
    token: str = ""


def parse_user_data(value: Any) -> dict[str, str]:
    """``user_data`` is a JSON *string* of key/value pairs in FunctionGraph; accept an object too."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON object string of key/value pairs ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object of key/value pairs")
    out: dict[str, str] = {}
    total = 0
    for key, item in value.items():
        if not isinstance(key, str) or not USER_DATA_KEY_RE.match(key):
            raise ValueError(f"key {key!r} must start with a letter and contain only letters, digits and '_'")
        text = item if isinstance(item, str) else json.dumps(item)
        total += len(key) + len(text)
        out[key] = text
    if total > 4096:
        raise ValueError(f"keys and values together must not exceed 4096 characters (got {total})")
    return out


class CreateFunctionRequest(FGModel):
    func_name: str
    package: str = "default"
    runtime: str
    handler: str = "index.handler"
    timeout: int = Field(3, ge=3, le=259200)
    memory_size: int = 128
    code_type: Literal["zip", "inline"] | None = None
    code_filename: str | None = None
    code_url: str | None = None  # http runtime: base URL that serves POST /invoke
    func_code: FuncCode | None = None
    user_data: dict[str, str] = Field(default_factory=dict)
    description: str = Field("", max_length=512)
    max_instance_num: int = Field(400, ge=1, le=1000)
    credentials: FunctionCredentials | None = None

    @field_validator("func_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                "must be 1-60 characters: letters, digits, '_' or '-', starting with a letter "
                "and ending with a letter or digit"
            )
        return v

    @field_validator("package")
    @classmethod
    def _package(cls, v: str) -> str:
        if not PACKAGE_RE.match(v):
            raise ValueError("must be 1-64 characters: letters, digits, '_' or '-'")
        return v

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        for known in RUNTIMES:
            if v.lower() == known.lower():
                return known
        raise ValueError(f"unsupported runtime; supported: {', '.join(RUNTIMES)}")

    @field_validator("memory_size")
    @classmethod
    def _memory(cls, v: int) -> int:
        if v not in MEMORY_SIZES:
            raise ValueError(f"must be one of {', '.join(map(str, MEMORY_SIZES))} (MB)")
        return v

    @field_validator("user_data", mode="before")
    @classmethod
    def _user_data(cls, v: Any) -> dict[str, str]:
        return parse_user_data(v)

    @model_validator(mode="after")
    def _code(self) -> CreateFunctionRequest:
        if self.runtime == HTTP_RUNTIME:
            if not self.code_url or not re.match(r"^https?://[^\s/]+", self.code_url):
                raise ValueError("code_url: an http runtime needs code_url, an http(s) base URL serving POST /invoke")
            self.code_type = None
            return self
        if not HANDLER_RE.match(self.handler):
            raise ValueError(f"handler: {self.handler!r} must look like 'index.handler' (module.function)")
        if self.code_type is None:
            self.code_type = "zip"
        if self.func_code is None or not self.func_code.file:
            raise ValueError(f"func_code.file: base64 code is required for code_type {self.code_type}")
        if len(self.func_code.file) > MAX_CODE_ZIP_BYTES * 4 // 3 + 4:
            raise ValueError("func_code.file: code package exceeds 40 MB")
        return self


class UpdateFunctionConfigRequest(FGModel):
    """``PUT .../functions/{urn}/config``: every field optional."""

    handler: str | None = None
    timeout: int | None = Field(None, ge=3, le=259200)
    memory_size: int | None = None
    user_data: dict[str, str] | None = None
    description: str | None = Field(None, max_length=512)
    max_instance_num: int | None = Field(None, ge=1, le=1000)
    code_url: str | None = None
    credentials: FunctionCredentials | None = None

    @field_validator("memory_size")
    @classmethod
    def _memory(cls, v: int | None) -> int | None:
        if v is not None and v not in MEMORY_SIZES:
            raise ValueError(f"must be one of {', '.join(map(str, MEMORY_SIZES))} (MB)")
        return v

    @field_validator("handler")
    @classmethod
    def _handler(cls, v: str | None) -> str | None:
        if v is not None and not HANDLER_RE.match(v):
            raise ValueError("must look like 'index.handler' (module.function)")
        return v

    @field_validator("user_data", mode="before")
    @classmethod
    def _user_data(cls, v: Any) -> dict[str, str] | None:
        return None if v is None else parse_user_data(v)


class FunctionConfig(FGModel):
    """What the API returns for a function (a subset of FunctionGraph's function model)."""

    func_urn: str
    func_name: str
    namespace: str  # project id
    project_name: str
    package: str
    runtime: str
    timeout: int
    handler: str
    memory_size: int
    cpu: int
    code_type: str
    code_url: str = ""
    code_filename: str = ""
    code_size: int = 0
    digest: str = ""
    version: str = "latest"
    user_data: str = ""
    description: str = ""
    max_instance_num: int = 400
    strategy_config: dict[str, int] = Field(default_factory=dict)
    credentials_configured: bool = False
    last_modified: str
    created_time: str = ""


def cpu_for_memory(memory_mb: int) -> int:
    """FunctionGraph scales CPU (in millicores) with memory: 128 MB -> 300, roughly linear."""
    return max(300, memory_mb * 300 // 128) if memory_mb <= 512 else memory_mb * 1000 // 1024
