"""A small SMN-compatible API: topics and publishing (``/v2/{project_id}/notifications/topics``).

Enough of SMN for functions to subscribe (SMN triggers) and for anyone holding the
management token to publish: create (idempotent: 201 new, 200 existing), list
(``offset``/``limit``), show, delete a topic; publish ``subject`` + ``message`` (or
``message_structure``, a JSON string whose ``functiongraph``/``functionstage`` key — else
``default`` — is what functions receive) with optional ``message_attributes``. Message
templates are refused with a clear error. Bodies are bounded; a message is at most 256 KB,
a subject 512 bytes, as SMN documents.

Every answer carries SMN's ``request_id``; errors are FunctionGraph bodies
(``{"error_code": "FSS.xxxx", "error_msg": ...}``) like the rest of the API.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import StringConstraints, field_validator

from connectors.smn import MAX_MESSAGE_BYTES, MAX_SUBJECT_BYTES, SMNConnector
from schemas.base import FGModel
from schemas.errors import bad_request, not_found, too_large
from schemas.triggers import SMN_TOPIC_URN_RE
from triggerbus.api.common import json_response, project_id, query_int, read_model, service
from triggerbus.store.models import StoredTopic

BASE = "/v2/{project_id}/notifications/topics"
ONE = BASE + "/{topic_urn}"
MAX_TOPIC_BODY = 64 * 1024
MAX_PUBLISH_BODY = 1024 * 1024  # a message_structure may carry several 256 KB texts
TOPIC_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")
ATTRIBUTE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MAX_ATTRIBUTES = 10
STRUCTURE_KEYS_FOR_FUNCTIONS = ("functiongraph", "functionstage", "default")


def _request_id() -> str:
    return uuid.uuid4().hex


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- request bodies ----------------------------------------------------------------------------------


class CreateTopicRequest(FGModel):
    name: str
    display_name: str = ""
    enterprise_project_id: str | None = None  # accepted, not used

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TOPIC_NAME_RE.match(value):
            raise ValueError("must be 1-255 letters, digits, '-' or '_', starting with a letter or digit")
        return value

    @field_validator("display_name")
    @classmethod
    def _display(cls, value: str) -> str:
        if len(value.encode()) > 192:
            raise ValueError(f"must be at most 192 bytes (got {len(value.encode())})")
        return value


AttributeName = Annotated[str, StringConstraints(pattern=ATTRIBUTE_NAME_RE.pattern)]


class MessageAttribute(FGModel):
    """SMN's list form: ``{"name", "type": STRING|STRING_ARRAY|PROTOCOL, "value" | "values"}``."""

    name: AttributeName
    type: Literal["STRING", "STRING_ARRAY", "PROTOCOL"]
    value: str | None = None
    values: list[str] | None = None

    def flat(self) -> str | list[str]:
        if self.type == "STRING":
            if self.value is None:
                raise ValueError(f"attribute {self.name!r} of type STRING needs a 'value'")
            return self.value
        if not self.values:
            raise ValueError(f"attribute {self.name!r} of type {self.type} needs a non-empty 'values' list")
        return list(self.values)


class PublishRequest(FGModel):
    subject: str = ""
    message: str | None = None
    message_structure: str | None = None
    message_template_name: str | None = None
    tags: dict[str, str] | None = None  # template parameters; templates are not supported
    time_to_live: str | int | None = None
    message_attributes: list[MessageAttribute] | dict[AttributeName, str | list[str]] | None = None

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if len(value.encode()) > MAX_SUBJECT_BYTES:
            raise ValueError(f"must be at most {MAX_SUBJECT_BYTES} bytes (got {len(value.encode())})")
        return value

    @field_validator("time_to_live")
    @classmethod
    def _ttl(cls, value: str | int | None) -> str | int | None:
        if value is None:
            return value
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 86400:
            raise ValueError("must be a whole number of seconds between 1 and 86400")
        return value

    @field_validator("message_attributes")
    @classmethod
    def _attribute_count(cls, value: Any) -> Any:
        if value is not None and len(value) > MAX_ATTRIBUTES:
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes (got {len(value)})")
        return value


def resolve_message(req: PublishRequest) -> str:
    """The text functions receive: message_structure > message_template_name > message (SMN's order)."""
    if req.message_structure is not None:
        try:
            structure = json.loads(req.message_structure)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge numbers, deep nesting
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not parseable JSON"
            raise bad_request(f"message_structure: must be a JSON string ({reason})") from None
        if not isinstance(structure, dict) or not isinstance(structure.get("default"), str):
            raise bad_request('message_structure: must be a JSON object with a string "default" message')
        for key, text in structure.items():
            if not isinstance(text, str):
                raise bad_request(f"message_structure.{key}: must be a string")
        text = next(structure[k] for k in STRUCTURE_KEYS_FOR_FUNCTIONS if k in structure)
        where = "message_structure"
    elif req.message_template_name is not None:
        raise bad_request(
            "message_template_name: message templates are not supported by Triggerbus; "
            "publish with message or message_structure"
        )
    elif req.message is not None:
        text, where = req.message, "message"
    else:
        raise bad_request("one of message, message_structure or message_template_name is required")
    if not text:
        raise bad_request(f"{where}: the message must not be empty")
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # an unpaired surrogate (\ud800) escaped in the JSON string
        raise bad_request(f"{where}: holds an unpaired UTF-16 surrogate, which is not text") from None
    if size > MAX_MESSAGE_BYTES:
        raise too_large(f"{where}: the message is {size} bytes, over SMN's {MAX_MESSAGE_BYTES}-byte limit")
    return text


def resolve_attributes(req: PublishRequest) -> dict[str, Any] | None:
    """``message_attributes`` as the object the event carries (``null`` when none)."""
    raw = req.message_attributes
    if not raw:
        return None
    if isinstance(raw, dict):
        return dict(raw)
    out: dict[str, Any] = {}
    for index, attribute in enumerate(raw):
        try:
            out[attribute.name] = attribute.flat()
        except ValueError as exc:
            raise bad_request(f"message_attributes[{index}]: {exc}") from None
    return out


# -- helpers --------------------------------------------------------------------------------------------


def _smn(request: web.Request) -> SMNConnector:
    return next(c for c in service(request).connectors if isinstance(c, SMNConnector))


def _topic_urn(request: web.Request) -> str:
    urn = request.match_info["topic_urn"]
    project = project_id(request)
    if not SMN_TOPIC_URN_RE.match(urn):
        raise bad_request(f"topic_urn: {urn[:300]!r} must be 'urn:smn:<region>:<project_id>:<topic_name>'")
    if urn.split(":")[3] != project:
        raise bad_request(f"topic_urn: {urn} belongs to project {urn.split(':')[3]}, not {project}")
    return urn


def _topic_view(topic: StoredTopic) -> dict[str, Any]:
    return {
        "topic_urn": topic.topic_urn,
        "name": topic.name,
        "display_name": topic.display_name,
        "push_policy": 0,
        "topic_id": topic.topic_id,
        "enterprise_project_id": "0",
    }


# -- handlers -------------------------------------------------------------------------------------------


async def create_topic(request: web.Request) -> web.Response:
    svc = service(request)
    project = project_id(request)
    req = await read_model(request, CreateTopicRequest, MAX_TOPIC_BODY)
    topic = StoredTopic(
        topic_urn=f"urn:smn:{svc.settings.region}:{project}:{req.name}",
        project_id=project,
        name=req.name,
        display_name=req.display_name,
        topic_id=uuid.uuid4().hex,
        created=time.time(),
    )
    created = await svc.store.put_topic(topic)
    return json_response({"request_id": _request_id(), "topic_urn": topic.topic_urn}, status=201 if created else 200)


async def list_topics(request: web.Request) -> web.Response:
    svc = service(request)
    offset = query_int(request, "offset", 0, low=0, high=10**9)
    limit = query_int(request, "limit", 100, low=1, high=100)
    topics, count = await svc.store.list_topics(project_id(request), offset, limit)
    return json_response(
        {"request_id": _request_id(), "topic_count": count, "topics": [_topic_view(t) for t in topics]}
    )


async def get_topic(request: web.Request) -> web.Response:
    svc = service(request)
    urn = _topic_urn(request)
    topic = await svc.store.get_topic(urn)
    if topic is None:
        raise not_found(f"topic {urn} does not exist")
    subscribers = await _smn(request).subscribers(urn)
    body = {
        "request_id": _request_id(),
        **_topic_view(topic),
        "create_time": _iso(topic.created),
        "update_time": _iso(topic.created),
        "subscriptions": [{"trigger_id": t.trigger_id, "function_urn": t.function_urn} for t in subscribers],
    }
    return json_response(body)


async def delete_topic(request: web.Request) -> web.Response:
    svc = service(request)
    urn = _topic_urn(request)
    if not await svc.store.delete_topic(urn):
        raise not_found(f"topic {urn} does not exist")
    return json_response({"request_id": _request_id()})


async def publish(request: web.Request) -> web.Response:
    urn = _topic_urn(request)
    req = await read_model(request, PublishRequest, MAX_PUBLISH_BODY)
    message = resolve_message(req)
    attributes = resolve_attributes(req)
    message_id = await _smn(request).publish(urn, message=message, subject=req.subject, attributes=attributes)
    return json_response({"request_id": _request_id(), "message_id": message_id})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post(BASE, create_topic)
    router.add_get(BASE, list_topics)
    router.add_get(ONE, get_topic)
    router.add_delete(ONE, delete_topic)
    router.add_post(ONE + "/publish", publish)
