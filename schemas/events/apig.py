"""APIG / DEDICATEDGATEWAY / APIC event and the response the function must return (contract §1.2).

The three gateway trigger types deliver the same event (Huawei's ``apig-event-template``):
header keys lower-cased, the request body Base64-encoded with ``isBase64Encoded: true``.

Functions behind a gateway must return ``{"statusCode", "headers", "body", "isBase64Encoded"}``.
The OTC doc prints that contract with *string* placeholders (``"isBase64Encoded": "true|false"``,
``"statusCode": "httpStatusCode"``), and real handlers do return ``"200"`` / ``"true"``, so
:class:`APIGResponse` accepts numeric strings and ``"true"``/``"false"`` and normalises them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field, ValidationError, field_validator

from schemas.base import FGModel
from schemas.errors import describe_validation_error


def _absent(value: object) -> bool:
    return value is None


def _bool_or_bool_string(value: object) -> object:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise ValueError("must be a boolean or 'true'/'false'")
    return value


class ApigRequestContext(FGModel):
    api_id: str = Field("", alias="apiId")
    request_id: str = Field("", alias="requestId")
    stage: str = "RELEASE"
    # In the Go struct but not in the console template: emitted only when known.
    source_ip: str | None = Field(None, alias="sourceIp", exclude_if=_absent)


class ApigEvent(FGModel):
    """The gateway request as FunctionGraph hands it to the function."""

    body: str = ""
    request_context: ApigRequestContext = Field(default_factory=ApigRequestContext, alias="requestContext")
    query_string_parameters: dict[str, str] = Field(default_factory=dict, alias="queryStringParameters")
    http_method: str = Field(alias="httpMethod")
    path_parameters: dict[str, str] = Field(default_factory=dict, alias="pathParameters")
    headers: dict[str, str] = Field(default_factory=dict)
    path: str = ""
    is_base64_encoded: bool = Field(True, alias="isBase64Encoded")

    @field_validator("headers", mode="before")
    @classmethod
    def _lower_header_names(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return {str(k).lower(): v for k, v in value.items()}
        return value

    @field_validator("query_string_parameters", mode="before")
    @classmethod
    def _last_query_value(cls, value: object) -> object:
        # Multi-valued parameters (``?a=1&a=2``) collapse to the last value, as the map type demands.
        if isinstance(value, Mapping):
            return {k: (v[-1] if isinstance(v, list) and v else v) for k, v in value.items()}
        return value

    @field_validator("is_base64_encoded", mode="before")
    @classmethod
    def _bool_string(cls, value: object) -> object:
        return _bool_or_bool_string(value)

    def body_bytes(self) -> bytes:
        """The raw request body (Base64-decoded when ``isBase64Encoded`` is true)."""
        if self.is_base64_encoded:
            return base64.b64decode(self.body)
        return self.body.encode()

    @classmethod
    def build(
        cls,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        query: Mapping[str, str] | Iterable[tuple[str, str]],
        path_params: Mapping[str, str],
        body_bytes: bytes,
        api_id: str,
        request_id: str,
        stage: str = "RELEASE",
        source_ip: str | None = None,
    ) -> ApigEvent:
        """Build the event for one HTTP request.

        * header names are lower-cased; a header repeated in ``headers`` pairs is joined with ``,``
          (the HTTP list-combination rule), because the event's ``headers`` is a flat map;
        * a query parameter given several times keeps its **last** value (same reason);
        * the body is always Base64-encoded and ``isBase64Encoded`` is ``true``, as FunctionGraph does.
        """
        header_map: dict[str, str] = {}
        for name, value in headers.items() if isinstance(headers, Mapping) else headers:
            key = name.lower()
            header_map[key] = f"{header_map[key]},{value}" if key in header_map else value
        query_map: dict[str, str] = {}
        for name, value in query.items() if isinstance(query, Mapping) else query:
            query_map[name] = value
        return cls(
            body=base64.b64encode(body_bytes).decode("ascii"),
            request_context=ApigRequestContext(api_id=api_id, request_id=request_id, stage=stage, source_ip=source_ip),
            query_string_parameters=query_map,
            http_method=method.upper(),
            path_parameters=dict(path_params),
            headers=header_map,
            path=path,
            is_base64_encoded=True,
        )


class APIGResponse(FGModel):
    """What a function behind APIG must return: ``statusCode`` int, ``headers`` map, ``body`` str,
    ``isBase64Encoded`` bool. ``headers``, ``body`` and ``isBase64Encoded`` default to ``{}``, ``""``
    and ``false``; ``statusCode`` is mandatory.

    Attributes carry the JSON key names (``response.statusCode``) so gateway code reads like the
    contract it implements.
    """

    statusCode: int
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = ""
    isBase64Encoded: bool = False

    @field_validator("statusCode", mode="before")
    @classmethod
    def _status(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be an integer HTTP status code")
        if isinstance(value, str):
            if not value.strip().isdigit():
                raise ValueError("must be an integer HTTP status code")
            value = int(value.strip())
        if isinstance(value, int) and not 100 <= value <= 599:
            raise ValueError("must be an HTTP status code between 100 and 599")
        return value

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: object) -> object:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return {str(k): _scalar_to_str(v) for k, v in value.items()}
        return value

    @field_validator("body", mode="before")
    @classmethod
    def _body(cls, value: object) -> object:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {_json_kind(value)} (serialise objects with JSON)")
        return value

    @field_validator("isBase64Encoded", mode="before")
    @classmethod
    def _bool_string(cls, value: object) -> object:
        return _bool_or_bool_string(value)

    def body_bytes(self) -> bytes:
        """The HTTP body to send back (Base64-decoded when ``isBase64Encoded`` is true)."""
        if self.isBase64Encoded:
            return base64.b64decode(self.body)
        return self.body.encode()

    @classmethod
    def from_function_result(cls, obj: object) -> APIGResponse:
        """Validate a function's return value (already JSON-decoded) as an APIG response.

        Raises ``ValueError`` naming the problem, e.g. ``invalid APIG function result: statusCode:
        is required`` or ``invalid APIG function result: expected a JSON object with statusCode,
        headers, body and isBase64Encoded, got a string``.
        """
        prefix = "invalid APIG function result"
        if not isinstance(obj, Mapping):
            kind = _json_kind(obj)
            raise ValueError(
                f"{prefix}: expected a JSON object with statusCode, headers, body and isBase64Encoded, got {kind}"
            )
        try:
            response = cls.model_validate(dict(obj))
        except ValidationError as exc:
            raise ValueError(f"{prefix}: {describe_validation_error(exc)}") from None
        if response.isBase64Encoded:
            try:
                base64.b64decode(response.body, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{prefix}: body is not valid Base64 although isBase64Encoded is true") from None
        return response


def _scalar_to_str(value: object) -> object:
    """Header values like ``Content-Length: 12`` or ``true`` are stringified; lists/objects stay invalid."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _json_kind(obj: Any) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, str | bytes):
        return "a string"
    if isinstance(obj, int | float):
        return "a number"
    if isinstance(obj, list | tuple):
        return "an array"
    if isinstance(obj, Mapping):
        return "an object"
    return f"a {type(obj).__name__}"
