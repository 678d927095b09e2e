"""Helpers every route uses: bounded JSON bodies, FSS error responses, query parsing."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from invoker.runtime.streams import read_bounded
from schemas.errors import FSSError, bad_request, too_large, validation_failed
from schemas.urn import PROJECT_RE

M = TypeVar("M", bound=BaseModel)

SERVICE_KEY: web.AppKey[Any] = web.AppKey("service", object)


def service(request: web.Request) -> Any:
    return request.app[SERVICE_KEY]


def fss_response(exc: FSSError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=headers)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading them all."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(f"request body of {request.content_length} bytes exceeds the {limit}-byte limit")
    body, complete = await read_bounded(request.content, limit)
    if not complete:
        raise too_large(f"request body exceeds the {limit}-byte limit")
    return body


MAX_JSON_DEPTH = 256  # a function's runtime decodes the event again, with less stack to spare


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects in ``value`` nest deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json(body: bytes, *, empty: Any = None) -> Any:
    if not body.strip():
        if empty is not None:
            return empty
        raise bad_request("request body is empty; a JSON document is required")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
        if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _nested_deeper_than(value, MAX_JSON_DEPTH):
            raise bad_request(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
        if _SURROGATE_ESCAPE.search(text):  # rare: only then look for an unpaired one
            json.dumps(value, ensure_ascii=False).encode()
        return value
    except UnicodeEncodeError:
        raise bad_request("request body holds an unpaired UTF-16 surrogate escape (such as \\ud800)") from None
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise bad_request("request body is nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity; an integer over Python's 4300-digit conversion limit
        raise bad_request(f"request body is not valid JSON: {exc}") from None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


async def read_json(request: web.Request, limit: int, *, empty: Any = None) -> Any:
    return parse_json(await read_body(request, limit), empty=empty)


async def read_model(request: web.Request, model: type[M], limit: int) -> M:
    data = await read_json(request, limit)
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name}: must be an integer between {low} and {high} (got {raw!r})") from None
    if not low <= value <= high:
        raise bad_request(f"{name}: must be between {low} and {high} (got {value})")
    return value


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def project_id(request: web.Request) -> str:
    value = request.match_info["project_id"]
    if not PROJECT_RE.match(value):
        raise bad_request(f"project_id: {value[:80]!r} must be 1-64 letters, digits, '_' or '-'")
    return value
