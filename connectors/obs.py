"""OBS triggers: S3 bucket notifications, pushed to a webhook, become classic OBS events.

An OBS trigger watches one bucket. The S3 server pushes its bucket notifications over HTTP, the way
each server can (docs/obs.md has the setup per server):

* ``POST /obs/notifications/{trigger_id}/{token}`` — one trigger's URL. ``token`` is generated when
  the trigger is created and shown once (``state.webhook_token`` of the create response); only its
  SHA-256 is stored. Ceph RGW topics (``push-endpoint``), MinIO webhook targets and SNS HTTP
  subscriptions all take such a URL; none of them can send our ``X-Auth-Token`` header, so these
  paths are public (:attr:`OBSConnector.public_prefixes`) and the token in the path is the auth.
* ``POST /obs/events/{token}`` — one URL for the whole service (``TRIGGERBUS_OBS_WEBHOOK_TOKEN``;
  off when unset), fanned out to every OBS trigger whose bucket and filters match. MinIO's webhook
  targets are server-wide, so this is the natural MinIO setup.

Bodies are S3 event JSON (``{"Records": [...]}``, from AWS, MinIO, Ceph RGW or OBS itself) or an SNS
HTTP message: a ``Notification`` whose ``Message`` is that JSON, or a ``SubscriptionConfirmation``,
confirmed by fetching its ``SubscribeURL`` only when that URL is on the trigger's S3 endpoint or the
configured SNS endpoint (never an arbitrary URL: the service must not be a request proxy).

Each record is normalized to the classic OBS record (contract §1.3a): ``eventVersion "2.0"``,
``eventSource "aws:s3"``, the event name without ``s3:``, the key URL-encoded as OBS encodes it
(RGW sends keys raw and ``eventSource "ceph:s3"``; everybody else encodes), ``eventTime`` in
milliseconds, ``versionId "null"`` on unversioned buckets. Records outside the six documented event
names (MinIO's ``ObjectAccessed:*``, ``s3:TestEvent`` ...) are ignored. A record then goes to every
trigger whose ``events``, ``prefix`` and ``suffix`` it matches, as one async invocation
``{"Records": [record]}``; the webhook answers 200 only once all of them are durable on the bus, and
5xx otherwise, so the S3 server sends it again. The request id is derived from the trigger and the
object (see :meth:`ObjectEvent.identity`): a notification sent twice runs once. The same records are
handed to EVENTGRID triggers (``source_name`` ``HC.OBS.DWR``) as CloudEvents.

A lost notification is not a lost upload when the trigger reconciles: a periodic scan lists the
bucket (under the trigger's prefix) for objects modified after a persisted watermark and emits an
event marked ``"triggerbus": {"synthetic": true}`` for each one no invocation exists for. Synthetic
and real events of one object share the request id, so an object seen both ways runs once.

A function that writes into the bucket it is triggered by would trigger itself forever (the docs
insist on two buckets). Creating such a trigger is refused when the function's async destination or
its user data names the same bucket and overlapping keys; ambiguous user data gives a warning; and
at run time a notification for an object the trigger's own function wrote through an OBS
destination (metadata ``x-triggerbus-function``, reported by RGW and MinIO) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import unquote_plus, urlsplit

import aiohttp
from aiohttp import web
from minio import Minio

from bus.aio import stop_tasks
from connectors.base import Connector, ConnectorContext, TriggerSpec
from connectors.eventgrid import PUBLISH_OPTION, obs_record_to_cloudevent
from schemas.async_config import AsyncInvokeConfig, DestinationConfig, DestinationKind, OBSParam
from schemas.errors import FSSError, bad_request, forbidden, not_found, unauthorized, unavailable
from schemas.events.obs import (
    OBSS3,
    OBSBucket,
    OBSObject,
    OBSOwnerIdentity,
    OBSRecord,
    OBSRequestParameters,
    OBSResponseElements,
    OBSUserIdentity,
    encode_object_key,
    obs_event_time,
)
from schemas.triggers import OBS_EVENTS
from schemas.urn import FunctionUrn
from triggerbus.api.common import json_response, parse_json, read_body

log = logging.getLogger(__name__)

TRIGGER_TYPE = "OBS"
TRIGGER_WEBHOOK = "/obs/notifications/{trigger_id}/{token}"
TRIGGER_WEBHOOK_NO_TOKEN = "/obs/notifications/{trigger_id}"
SERVICE_WEBHOOK = "/obs/events/{token}"
MAX_NOTIFICATION_BODY = 4 * 1024 * 1024  # S3 servers send one record per request; SNS caps at 256 KB
ENQUEUE_CONCURRENCY = 32
CONFIRM_TIMEOUT_S = 10.0
CONFIRM_MAX_BODY = 64 * 1024
MAX_SCAN_CANDIDATES = 10_000  # objects one reconciliation scan emits at most; the rest wait for the next
RECONCILE_CHECKPOINT = "obs-reconcile"
MAX_RECONCILE_INTERVAL_S = 86400
FRESH_TOKENS_KEPT = 1000
WRITER_METADATA = "x-triggerbus-function"  # set by invoker.obs_sink on the objects it writes
EVENTGRID_CHANNEL = "default"  # where cloud services' events arrive on EventGrid

# The event names OBS documents (contract §1.3a), without the ``s3:`` of the trigger configuration.
DOCUMENTED_EVENTS: dict[str, str] = {
    name.removeprefix("s3:").lower(): name.removeprefix("s3:") for name in OBS_EVENTS if not name.endswith("*")
}
_REQUEST_NAMESPACE = uuid.UUID("3b0f6c1e-5d84-4a57-9c2e-81f4d6a0b7c9")
_EVENT_NAMESPACE = uuid.UUID("9e2d7a40-1c6b-4f35-8a1d-52c3e7b9f014")
_TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?$")
_MULTIPART_ETAG_RE = re.compile(r"-\d+$")
_INPUT_WORDS = ("input", "source", "src")
_OUTPUT_WORDS = ("output", "out", "dest", "destination", "target", "dst", "result", "thumbnail")
_SNS_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")


class NotificationError(ValueError):
    """A notification body or record that cannot be understood; the message names the field."""


# ------------------------------------------------------------------------------ normalization


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """One object event, normalized: the classic OBS record plus what routing needs."""

    record: dict[str, Any]  # the documented record, exactly as functions get it
    bucket: str
    key: str  # decoded
    event_name: str  # "ObjectCreated:Put"
    etag: str
    version_id: str  # "" on unversioned buckets
    sequencer: str
    request_id: str = ""  # the S3 server's request id, when it gave one
    written_by: str = ""  # metadata x-triggerbus-function of the object, when the server reports it

    @property
    def category(self) -> str:
        return self.event_name.split(":", 1)[0]

    @property
    def synthetic(self) -> bool:
        return bool((self.record.get("triggerbus") or {}).get("synthetic"))

    def identity(self) -> str:
        """What makes two events the same event, for deduplication.

        A created object is (bucket, key, ETag, version): that is all a bucket listing shows, so the
        reconciliation scan derives the same identity as the notification it stands in for, whatever
        the creating method (Put, Post, Copy, multipart) and the server's sequencer. The price: the
        same bytes uploaded again under the same key on an unversioned bucket are the same event
        (the function's output would not change either). Removals carry the sequencer, which orders
        events per key, so every removal is its own event.
        """
        if self.category == "ObjectCreated" and self.etag:
            return f"ObjectCreated\n{self.bucket}\n{self.key}\n{self.etag}\n{self.version_id}"
        return f"{self.event_name}\n{self.bucket}\n{self.key}\n{self.version_id}\n{self.sequencer}"

    def payload(self) -> str:
        return json.dumps({"Records": [self.record]}, ensure_ascii=False, separators=(",", ":"))

    def eventgrid_id(self) -> str:
        """The CloudEvent id: the S3 request id as OBS uses it, else derived from the identity."""
        return self.request_id or str(uuid.uuid5(_EVENT_NAMESPACE, self.identity()))


def reconcile_start(created: float) -> float:
    """The first watermark of a trigger: the whole second it was created in.

    S3 ``LastModified`` has whole seconds, so an object uploaded 0.4 s after the trigger was
    created can look older than the trigger; starting at the second keeps it in the scan.
    """
    return float(math.floor(created))


def request_id_for(trigger_id: str, event: ObjectEvent) -> str:
    """The same object event for the same trigger is always the same request (see ``identity``)."""
    return str(uuid.uuid5(_REQUEST_NAMESPACE, f"{trigger_id}\n{event.identity()}"))


def parse_event_time(text: object, where: str) -> datetime:
    """S3 event times: RFC 3339 with 0-9 fractional digits (RGW sends microseconds, Go nanoseconds)."""
    match = _TIME_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise NotificationError(f"{where}.eventTime: expected an RFC 3339 time such as 2024-12-02T09:49:37.939Z")
    day, clock, fraction, zone = match.groups()
    micro = (fraction or "")[:6].ljust(6, "0")
    offset = "+00:00" if zone in (None, "Z", "z") else zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    try:
        return datetime.fromisoformat(f"{day}T{clock}.{micro}{offset}")
    except ValueError:
        raise NotificationError(f"{where}.eventTime: {text!r} is not a valid time") from None


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise NotificationError(f"{where}: must be a JSON object")
    return value


def _size(value: object, where: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise NotificationError(f"{where}.s3.object.size: must be a non-negative integer")
    return int(value)


def _writer(obj: Mapping[str, Any]) -> str:
    """The ``x-triggerbus-function`` metadata of the object: RGW lists metadata as key/val pairs,
    MinIO has a ``userMetadata`` map; AWS reports none."""
    wanted = ("x-amz-meta-" + WRITER_METADATA, WRITER_METADATA)
    metadata = obj.get("metadata")
    if isinstance(metadata, list):
        for item in metadata:
            if isinstance(item, Mapping) and _text(item.get("key")).lower() in wanted:
                return _text(item.get("val"))
    user = obj.get("userMetadata")
    if isinstance(user, Mapping):
        for name, value in user.items():
            if str(name).lower() in wanted:
                return _text(value)
    return ""


def normalize_record(raw: object, *, region: str, where: str = "Records[0]") -> ObjectEvent | None:
    """The classic OBS event record for one S3-style notification record; None when its event is
    not one OBS documents. Raises :class:`NotificationError` naming the field that is wrong."""
    record = dict(_mapping(raw, where))
    if "s3" not in record and isinstance(record.get("obs"), Mapping):  # an OBS v3.0 (EventGrid) record
        record = OBSRecord.model_validate(record).model_dump(mode="json", by_alias=True)
        record["eventSource"] = "OBS"
    name_value = record.get("eventName")
    if not isinstance(name_value, str) or not name_value:
        raise NotificationError(f"{where}.eventName: is required")
    event_name = DOCUMENTED_EVENTS.get(name_value.removeprefix("s3:").lower())
    if event_name is None:
        return None
    s3 = _mapping(record.get("s3"), f"{where}.s3")
    bucket_info = _mapping(s3.get("bucket"), f"{where}.s3.bucket")
    obj = _mapping(s3.get("object"), f"{where}.s3.object")
    bucket = bucket_info.get("name")
    if not isinstance(bucket, str) or not bucket:
        raise NotificationError(f"{where}.s3.bucket.name: is required")
    carried_key = obj.get("key")
    if not isinstance(carried_key, str) or not carried_key:
        raise NotificationError(f"{where}.s3.object.key: is required")
    # Ceph RGW sends the key as it is; AWS, MinIO and OBS send it URL-encoded (not all alike).
    key = carried_key if record.get("eventSource") == "ceph:s3" else unquote_plus(carried_key)
    moment = parse_event_time(record.get("eventTime"), where)
    etag = _text(obj.get("eTag") or obj.get("etag")).strip('"')
    version_id = _text(obj.get("versionId"))
    version_id = "" if version_id == "null" else version_id
    sequencer = _text(obj.get("sequencer")) or f"{int(moment.timestamp() * 1000):032X}"
    owner = bucket_info.get("ownerIdentity") or {}
    user = record.get("userIdentity") or {}
    params = record.get("requestParameters") or {}
    response = record.get("responseElements") or {}
    if not all(isinstance(part, Mapping) for part in (owner, user, params, response)):
        raise NotificationError(
            f"{where}: userIdentity, requestParameters, responseElements and s3.bucket.ownerIdentity "
            "must be JSON objects"
        )
    request_id = _text(response.get("x-amz-request-id") or response.get("x-obs-request-id"))
    documented = OBSRecord(
        aws_region=_text(record.get("awsRegion") or record.get("eventRegion")) or region,
        event_time=obs_event_time(moment),
        event_name=event_name,
        user_identity=OBSUserIdentity(principal_id=_text(user.get("principalId") or user.get("ID"))),
        request_parameters=OBSRequestParameters(source_ip_address=_text(params.get("sourceIPAddress"))),
        response_elements=OBSResponseElements(
            request_id=request_id, id_2=_text(response.get("x-amz-id-2") or response.get("x-obs-id-2"))
        ),
        s3=OBSS3(
            s3_schema_version=_text(s3.get("s3SchemaVersion")) or "1.0",
            configuration_id=_text(s3.get("configurationId")),
            bucket=OBSBucket(
                name=bucket,
                owner_identity=OBSOwnerIdentity(
                    principal_id=_text(owner.get("PrincipalId") or owner.get("principalId") or owner.get("ID"))
                ),
                arn=_text(bucket_info.get("arn")) or f"arn:aws:s3:::{bucket}",
            ),
            object_=OBSObject(
                key=encode_object_key(key),
                e_tag=etag or None,
                size=_size(obj.get("size"), where),
                version_id=version_id or "null",
                sequencer=sequencer,
            ),
        ),
    ).dump()
    return ObjectEvent(
        record=documented,
        bucket=bucket,
        key=key,
        event_name=event_name,
        etag=etag,
        version_id=version_id,
        sequencer=sequencer,
        request_id=request_id,
        written_by=_writer(obj),
    )


def synthetic_event(
    *,
    bucket: str,
    key: str,
    etag: str,
    size: int | None,
    last_modified: datetime,
    version_id: str,
    region: str,
    configuration_id: str,
) -> ObjectEvent:
    """The event reconciliation emits for an object no notification was seen for.

    The documented shape with what a listing knows; the creating method is unknown, so the name is
    ``ObjectCreated:CompleteMultipartUpload`` for a multipart ETag (``…-N``) and ``ObjectCreated:Put``
    otherwise. The extra ``"triggerbus": {"synthetic": true, "reason": "reconciliation"}`` tells
    the function (and an operator reading the record) that no notification carried it.
    """
    etag = etag.strip('"')
    name = "ObjectCreated:CompleteMultipartUpload" if _MULTIPART_ETAG_RE.search(etag) else "ObjectCreated:Put"
    record = OBSRecord(
        aws_region=region,
        event_time=obs_event_time(last_modified),
        event_name=name,
        s3=OBSS3(
            configuration_id=configuration_id,
            bucket=OBSBucket(name=bucket, arn=f"arn:aws:s3:::{bucket}"),
            object_=OBSObject(
                key=encode_object_key(key),
                e_tag=etag or None,
                size=size,
                version_id=version_id or "null",
                sequencer=f"{int(last_modified.timestamp() * 1000):032X}",
            ),
        ),
    ).dump()
    record["triggerbus"] = {"synthetic": True, "reason": "reconciliation"}
    return ObjectEvent(record, bucket, key, name, etag, version_id, record["s3"]["object"]["sequencer"])


# ------------------------------------------------------------------------------ notification bodies


@dataclass(frozen=True, slots=True)
class SubscriptionConfirmation:
    topic_arn: str
    subscribe_url: str


@dataclass(frozen=True, slots=True)
class Notification:
    """What one webhook request carried: object events, or an SNS subscription handshake."""

    events: list[ObjectEvent] = field(default_factory=list)
    ignored: int = 0  # records of events OBS does not document, test events, unsubscribe notes
    confirmation: SubscriptionConfirmation | None = None


def _records(document: Mapping[str, Any], where: str, region: str) -> Notification:
    records = document.get("Records")
    if records is None:
        if document.get("Event") == "s3:TestEvent":  # AWS sends one when a configuration is saved
            return Notification(ignored=1)
        raise NotificationError(f'{where}: expected an S3 event notification {{"Records": [...]}}')
    if not isinstance(records, list):
        raise NotificationError(f"{where}.Records: must be a JSON array")
    events: list[ObjectEvent] = []
    ignored = 0
    for index, raw in enumerate(records):
        event = normalize_record(raw, region=region, where=f"{where}.Records[{index}]".lstrip("."))
        if event is None:
            ignored += 1
        else:
            events.append(event)
    return Notification(events, ignored)


def parse_notification(document: object, *, region: str) -> Notification:
    """Understand a webhook body: S3 event JSON, or an SNS HTTP message wrapping it."""
    if not isinstance(document, Mapping):
        raise NotificationError("body: must be a JSON object (an S3 event notification or an SNS message)")
    kind = document.get("Type")
    if kind in _SNS_TYPES and "TopicArn" in document:
        if kind == "SubscriptionConfirmation":
            url = document.get("SubscribeURL")
            if not isinstance(url, str) or not url:
                raise NotificationError("SubscribeURL: is required in an SNS SubscriptionConfirmation")
            return Notification(confirmation=SubscriptionConfirmation(_text(document.get("TopicArn")), url))
        if kind == "UnsubscribeConfirmation":
            return Notification(ignored=1)
        message = document.get("Message")
        if not isinstance(message, str):
            raise NotificationError("Message: an SNS Notification carries the S3 event as a JSON string")
        try:
            inner = json.loads(message)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge numbers, deep nesting
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not parseable"
            raise NotificationError(f"Message: is not JSON ({reason}); expected an S3 event notification") from None
        return _records(_mapping(inner, "Message"), "Message", region)
    return _records(document, "", region)


# ------------------------------------------------------------------------------ trigger configuration


@dataclass(frozen=True, slots=True)
class S3Endpoint:
    """Where a trigger's bucket lives and how to sign in (the reconciliation scan lists it)."""

    url: str  # scheme://host:port
    access_key: str
    secret_key: str

    @classmethod
    def parse(cls, text: str, access_key: str, secret_key: str, where: str) -> S3Endpoint:
        url = text.strip() if "://" in text else f"http://{text.strip()}"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise bad_request(f"{where}: {text!r} is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request(f"{where}: {text!r} must be http(s)://host[:port]")
        if parts.username or parts.password or parts.path not in ("", "/") or parts.query:
            raise bad_request(f"{where}: {text!r} must be just scheme://host[:port], without credentials or path")
        netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
        return cls(f"{parts.scheme}://{netloc}", access_key, secret_key)

    @property
    def origin(self) -> tuple[str, str, int]:
        return _origin(self.url)

    def client(self) -> Minio:
        parts = urlsplit(self.url)
        return Minio(
            parts.netloc,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=parts.scheme == "https",
        )


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True, slots=True)
class ObjectFilter:
    """Which object events one trigger takes: its bucket, ``events``, ``prefix`` and ``suffix``."""

    bucket: str
    events: frozenset[str]
    prefix: str
    suffix: str

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> ObjectFilter:
        return cls(
            bucket=str(data["bucket"]),
            events=frozenset(str(e) for e in data.get("events") or ()),
            prefix=str(data.get("prefix") or ""),
            suffix=str(data.get("suffix") or ""),
        )

    def matches_event_name(self, event_name: str) -> bool:
        category = event_name.split(":", 1)[0]
        return f"s3:{category}:*" in self.events or f"s3:{event_name}" in self.events

    def matches(self, event: ObjectEvent) -> bool:
        return (
            event.bucket == self.bucket
            and event.key.startswith(self.prefix)
            and event.key.endswith(self.suffix)
            and self.matches_event_name(event.event_name)
        )


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_matches(token: str, expected_hash: str) -> bool:
    return bool(expected_hash) and hmac.compare_digest(_token_hash(token), expected_hash)


def _interval(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"{where}: must be a number of seconds (0 turns reconciliation off)")
    if value < 0 or value > MAX_RECONCILE_INTERVAL_S:
        raise bad_request(f"{where}: must be between 0 and {MAX_RECONCILE_INTERVAL_S} seconds (got {value})")
    return float(value)


# ------------------------------------------------------------------------------ recursion guard


@runtime_checkable
class FunctionCatalog(Protocol):
    """The part of the store the recursion guard reads (the service's store is one)."""

    async def get_function(self, urn: str) -> Any: ...

    async def get_async_config(self, unqualified_urn: str) -> AsyncInvokeConfig | None: ...


@runtime_checkable
class RecordLookup(Protocol):
    """The part of the store deduplication reads."""

    async def record_state(self, request_id: str) -> Any: ...


def _could_overlap(a_prefix: str, b_prefix: str) -> bool:
    """Can one key start with both prefixes?"""
    return a_prefix.startswith(b_prefix) or b_prefix.startswith(a_prefix)


def _suffixes_compatible(a_suffix: str, b_suffix: str) -> bool:
    return a_suffix.endswith(b_suffix) or b_suffix.endswith(a_suffix)


def _user_data_outputs(user_data: Mapping[str, str]) -> list[tuple[str, str, str | None]]:
    """(key, bucket, output prefix or None) for user-data entries that name a bucket.

    ``output_bucket``, ``obs_output_bucket``, ``dest_bucket`` ... are outputs; a key with ``input``,
    ``source`` or ``src`` is an input; a plain ``bucket`` is ambiguous (role ``?``). The prefix is
    the entry of the same name with ``bucket`` replaced by ``prefix`` (``output_prefix``).
    """
    found: list[tuple[str, str, str | None]] = []
    for name, value in user_data.items():
        lowered = name.lower()
        if "bucket" not in lowered or not isinstance(value, str) or not value.strip():
            continue
        words = set(re.split(r"[^a-z0-9]+", lowered.replace("bucket", " bucket ")))
        if words & set(_INPUT_WORDS):
            continue
        prefix_key = next((k for k in user_data if k.lower() == lowered.replace("bucket", "prefix")), None)
        role = name if words & set(_OUTPUT_WORDS) else f"?{name}"
        found.append((role, value.strip(), user_data[prefix_key] if prefix_key else None))
    return found


def recursion_findings(
    trigger: ObjectFilter,
    function_name: str,
    user_data: Mapping[str, str],
    destinations: list[tuple[str, DestinationConfig]],
) -> tuple[str | None, list[str]]:
    """(why the trigger must be refused or None, warnings) for a function and the bucket it listens to.

    Refused: an OBS async destination or an output entry of the user data names the trigger's bucket
    and its keys can match the trigger's prefix/suffix. Warned: a user-data entry whose role is
    unclear (``bucket``) names the trigger's bucket.
    """
    warnings: list[str] = []
    advice = (
        "every object it writes would trigger it again, endlessly. Use two buckets, as the OBS "
        "trigger docs require, or write under a prefix (or with a suffix) the trigger does not match"
    )
    for condition, destination in destinations:
        if destination.destination is not DestinationKind.OBS:
            continue
        param = destination.parsed_param()
        assert isinstance(param, OBSParam)
        if param.bucket != trigger.bucket:
            continue
        written_prefix = f"{param.prefix.strip('/')}/" if param.prefix.strip("/") else ""
        if _could_overlap(written_prefix, trigger.prefix) and _suffixes_compatible(".json", trigger.suffix):
            return (
                f"event_data.bucket: function {function_name} sends its {condition} results to bucket "
                f"{param.bucket!r} (async invoke config, OBS destination, prefix {param.prefix!r}), the bucket "
                f"this trigger listens to: {advice}",
                warnings,
            )
    for role, bucket, prefix in _user_data_outputs(user_data):
        if bucket != trigger.bucket:
            continue
        if role.startswith("?"):
            warnings.append(
                f"user_data {role[1:]} names bucket {bucket!r}, the bucket this trigger listens to: if "
                f"function {function_name} writes there, each write triggers it again"
            )
            continue
        if prefix is not None and not _could_overlap(prefix, trigger.prefix):
            continue  # writes under a prefix the trigger does not match
        return (
            f"event_data.bucket: function {function_name} writes its output to bucket {bucket!r} (user_data "
            f"{role}{'' if prefix is None else f', prefix {prefix!r}'}), the bucket this trigger listens to: "
            f"{advice}",
            warnings,
        )
    return None, warnings


# ------------------------------------------------------------------------------ the connector


@dataclass(slots=True)
class _Stats:
    received: int = 0
    invocations: int = 0
    duplicates: int = 0
    ignored: int = 0
    loops_stopped: int = 0
    subscriptions_confirmed: int = 0
    last_notification_at: float | None = None
    scans: int = 0
    synthetic: int = 0
    last_scan_at: float | None = None
    reconcile_since: float | None = None
    last_error: str | None = None


@dataclass(slots=True)
class _Trigger:
    spec: TriggerSpec
    filter: ObjectFilter
    token_hash: str
    endpoint: S3Endpoint | None
    confirm_origins: frozenset[tuple[str, str, int]]
    reconcile_interval_s: float
    next_scan: float = 0.0
    stats: _Stats = field(default_factory=_Stats)


@dataclass(slots=True)
class Delivery:
    """What one webhook request became."""

    records: int = 0
    invocations: int = 0
    duplicates: int = 0
    ignored: int = 0
    eventgrid_invocations: int = 0
    request_ids: list[str] = field(default_factory=list)

    def dump(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "invocations": self.invocations,
            "duplicates": self.duplicates,
            "ignored": self.ignored,
            "eventgrid_invocations": self.eventgrid_invocations,
            "request_ids": self.request_ids,
        }


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class OBSConnector(Connector):
    trigger_types: ClassVar[tuple[str, ...]] = (TRIGGER_TYPE,)
    public_prefixes: ClassVar[tuple[str, ...]] = ("/obs/notifications", "/obs/events")

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        options = ctx.options
        self.default_endpoint: S3Endpoint | None = None
        if options.get("obs_endpoint"):
            self.default_endpoint = S3Endpoint.parse(
                str(options["obs_endpoint"]),
                str(options.get("obs_access_key", "")),
                str(options.get("obs_secret_key", "")),
                "obs_endpoint",
            )
        sns = str(options.get("obs_sns_endpoint") or "")
        self.default_sns_origin = S3Endpoint.parse(sns, "", "", "obs_sns_endpoint").origin if sns else None
        shared = str(options.get("obs_webhook_token") or "")
        self.shared_token_hash = _token_hash(shared) if shared else ""
        self.reconcile_interval_s = float(options.get("obs_reconcile_interval_s", 0.0) or 0.0)
        self.reconcile_settle_s = float(options.get("obs_reconcile_settle_s", 60.0))
        self.reconcile_lookback_s = float(options.get("obs_reconcile_lookback_s", 600.0))
        self._triggers: dict[str, _Trigger] = {}
        self._fresh_tokens: OrderedDict[str, str] = OrderedDict()  # shown once, in the create response
        self._inflight: set[str] = set()
        self._clients: dict[S3Endpoint, Minio] = {}
        self._http: aiohttp.ClientSession | None = None
        self._scanner: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self.received = 0
        self.invocations = 0

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._scanner = asyncio.create_task(self._reconcile_loop(), name="obs-reconcile")

    async def close(self) -> None:
        await stop_tasks(self._scanner)
        self._scanner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(TRIGGER_WEBHOOK, self.handle_trigger_webhook)
        router.add_post(TRIGGER_WEBHOOK_NO_TOKEN, self.handle_missing_token)
        router.add_post(SERVICE_WEBHOOK, self.handle_service_webhook)

    # -- configuration -------------------------------------------------------------------------------

    def _endpoint_of(self, data: Mapping[str, Any]) -> S3Endpoint | None:
        text = data.get("endpoint")
        if text in (None, ""):
            return self.default_endpoint
        if not isinstance(text, str):
            raise bad_request("event_data.endpoint: must be a URL such as http://s3.example.com:9000")
        endpoint = S3Endpoint.parse(text, "", "", "event_data.endpoint")
        access_key, secret_key = data.get("access_key"), data.get("secret_key")
        if access_key in (None, "") and secret_key in (None, ""):
            if self.default_endpoint is not None and endpoint.url == self.default_endpoint.url:
                return self.default_endpoint
            # The service's credentials go to the service's endpoint only, never to another host.
            raise bad_request(
                "event_data.access_key: an endpoint other than the service's OBS endpoint needs its own "
                "access_key and secret_key"
            )
        if not isinstance(access_key, str) or not access_key or not isinstance(secret_key, str) or not secret_key:
            raise bad_request("event_data.access_key, event_data.secret_key: give both, as non-empty strings")
        return S3Endpoint(endpoint.url, access_key, secret_key)

    def _confirm_origins(self, data: Mapping[str, Any], endpoint: S3Endpoint | None) -> frozenset[tuple[str, str, int]]:
        origins: set[tuple[str, str, int]] = set()
        if endpoint is not None:
            origins.add(endpoint.origin)
        sns = data.get("sns_endpoint")
        if sns not in (None, ""):
            if not isinstance(sns, str):
                raise bad_request("event_data.sns_endpoint: must be a URL such as https://sns.eu-de.example.com")
            origins.add(S3Endpoint.parse(sns, "", "", "event_data.sns_endpoint").origin)
        elif self.default_sns_origin is not None:
            origins.add(self.default_sns_origin)
        return frozenset(origins)

    def _reconcile_interval(self, data: Mapping[str, Any], endpoint: S3Endpoint | None) -> float:
        """The trigger's own ``reconcile_interval_s``, else the service's (which needs an endpoint to
        apply: without one there is nothing to list)."""
        value = data.get("reconcile_interval_s")
        if value is None:
            return self.reconcile_interval_s if endpoint is not None else 0.0
        interval = _interval(value, "event_data.reconcile_interval_s")
        if interval > 0 and endpoint is None:
            raise bad_request(
                "event_data.reconcile_interval_s: reconciliation lists the bucket, so it needs an endpoint "
                "(event_data.endpoint/access_key/secret_key, or the service's TRIGGERBUS_OBS_ENDPOINT)"
            )
        return interval

    def _configure(self, trigger: TriggerSpec) -> _Trigger:
        data = trigger.event_data
        endpoint = self._endpoint_of(data)
        interval = self._reconcile_interval(data, endpoint)
        return _Trigger(
            spec=trigger,
            filter=ObjectFilter.of(data),
            token_hash=str(data.get("webhook_token_sha256") or ""),
            endpoint=endpoint,
            confirm_origins=self._confirm_origins(data, endpoint),
            reconcile_interval_s=interval,
        )

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        self._configure(trigger)  # endpoint, credentials and interval are well-formed
        extra: dict[str, Any] = {}
        warnings = await self._check_recursion(trigger)
        if warnings:
            extra["recursion_warning"] = "; ".join(warnings)
        token = secrets.token_urlsafe(32)
        self._fresh_tokens[trigger.trigger_id] = token
        while len(self._fresh_tokens) > FRESH_TOKENS_KEPT:
            self._fresh_tokens.popitem(last=False)
        base = self.ctx.public_url.rstrip("/")
        extra["webhook_url"] = f"{base}/obs/notifications/{trigger.trigger_id}/{{webhook_token}}"
        extra["webhook_token_sha256"] = _token_hash(token)
        return extra

    async def _check_recursion(self, trigger: TriggerSpec) -> list[str]:
        catalog = self.ctx.state
        if not isinstance(catalog, FunctionCatalog):
            return ["the recursion guard could not read the function's configuration"]
        unqualified = FunctionUrn.parse(trigger.function_urn).unqualified
        fn = await catalog.get_function(unqualified)
        if fn is None:
            return []
        config = await catalog.get_async_config(unqualified)
        destinations: list[tuple[str, DestinationConfig]] = []
        if config is not None:
            for condition, destination in (
                ("on_success", config.destination_config.on_success),
                ("on_failure", config.destination_config.on_failure),
            ):
                if destination is not None:
                    destinations.append((condition, destination))
        refusal, warnings = recursion_findings(
            ObjectFilter.of(trigger.event_data), str(fn.name), dict(fn.user_data or {}), destinations
        )
        if refusal is not None:
            raise bad_request(refusal)
        return warnings

    async def activate(self, trigger: TriggerSpec) -> None:
        problem: str | None = None
        try:
            configured = self._configure(trigger)
        except FSSError as exc:
            # Valid when created, but the service changed under it (its S3 endpoint was removed):
            # keep taking notifications, without reconciliation, and say why.
            log.warning("OBS trigger %s: %s; reconciliation is off", trigger.trigger_id, exc.message)
            configured = _Trigger(
                spec=trigger,
                filter=ObjectFilter.of(trigger.event_data),
                token_hash=str(trigger.event_data.get("webhook_token_sha256") or ""),
                endpoint=None,
                confirm_origins=frozenset(),
                reconcile_interval_s=0.0,
            )
            problem = exc.message
        old = self._triggers.get(trigger.trigger_id)
        if old is not None:
            configured.stats = old.stats
        if problem is not None:
            configured.stats.last_error = problem
        self._triggers[trigger.trigger_id] = configured
        if configured.reconcile_interval_s > 0:
            checkpoint = await self.ctx.state.get_checkpoint(trigger.trigger_id, RECONCILE_CHECKPOINT)
            if not isinstance(checkpoint, dict) or "since" not in checkpoint:
                await self.ctx.state.put_checkpoint(
                    trigger.trigger_id, RECONCILE_CHECKPOINT, {"since": reconcile_start(trigger.created)}
                )
            configured.next_scan = time.time() + configured.reconcile_interval_s
            self._wakeup.set()

    async def deactivate(self, trigger_id: str) -> None:
        self._triggers.pop(trigger_id, None)

    async def deleted(self, trigger: TriggerSpec) -> None:
        self._fresh_tokens.pop(trigger.trigger_id, None)
        with contextlib.suppress(Exception):
            await self.ctx.state.release_lease(self._lease_name(trigger.trigger_id), self.ctx.node_id)

    def status(self, trigger_id: str) -> dict[str, Any]:
        trigger = self._triggers.get(trigger_id)
        if trigger is None:
            return {}
        stats = trigger.stats
        state: dict[str, Any] = {
            "webhook_path": f"/obs/notifications/{trigger_id}/{{webhook_token}}",
            "notifications": stats.received,
            "invocations": stats.invocations,
            "duplicates": stats.duplicates,
            "ignored": stats.ignored,
            "loops_stopped": stats.loops_stopped,
            "subscriptions_confirmed": stats.subscriptions_confirmed,
            "last_notification_time": _iso(stats.last_notification_at),
            "reconcile": {
                "interval_s": trigger.reconcile_interval_s,
                "scans": stats.scans,
                "synthetic_invocations": stats.synthetic,
                "last_scan_time": _iso(stats.last_scan_at),
                "since": _iso(stats.reconcile_since),
                "last_error": stats.last_error,
            },
        }
        token = self._fresh_tokens.pop(trigger_id, None)
        if token is not None:
            # Once: the create response. Only the hash is stored; CTS traces mask this field.
            state["webhook_token"] = token
        return state

    async def get_checkpoint(self, trigger: TriggerSpec) -> dict[str, Any]:
        checkpoint = await self.ctx.state.get_checkpoint(trigger.trigger_id, RECONCILE_CHECKPOINT)
        since = checkpoint.get("since") if isinstance(checkpoint, dict) else None
        configured = self._triggers.get(trigger.trigger_id)
        return {
            "reconcile_interval_s": configured.reconcile_interval_s if configured else None,
            "reconcile_since": _iso(float(since)) if since is not None else None,
        }

    # -- webhooks -------------------------------------------------------------------------------------

    async def handle_missing_token(self, request: web.Request) -> web.Response:
        raise unauthorized(
            "the OBS notification URL needs the trigger's webhook token: POST /obs/notifications/"
            "<trigger_id>/<webhook_token>, as given when the trigger was created"
        )

    async def handle_trigger_webhook(self, request: web.Request) -> web.Response:
        trigger = self._triggers.get(request.match_info["trigger_id"])
        if trigger is None:
            raise not_found(f"no active OBS trigger {request.match_info['trigger_id'][:64]!r}")
        if not _token_matches(request.match_info["token"], trigger.token_hash):
            raise forbidden("invalid webhook token for this OBS trigger")
        notification = await self._read(request)
        trigger.stats.received += 1
        trigger.stats.last_notification_at = time.time()
        if notification.confirmation is not None:
            return await self._confirm(notification.confirmation, trigger.confirm_origins, [trigger])
        delivery = await self.deliver(notification, [trigger])
        return json_response(delivery.dump())

    async def handle_service_webhook(self, request: web.Request) -> web.Response:
        if not self.shared_token_hash:
            raise not_found("the shared OBS notification URL is off: set TRIGGERBUS_OBS_WEBHOOK_TOKEN to use it")
        if not _token_matches(request.match_info["token"], self.shared_token_hash):
            raise forbidden("invalid token for the shared OBS notification URL")
        notification = await self._read(request)
        if notification.confirmation is not None:
            origins = {self.default_endpoint.origin} if self.default_endpoint is not None else set()
            if self.default_sns_origin is not None:
                origins.add(self.default_sns_origin)
            return await self._confirm(notification.confirmation, frozenset(origins), [])
        buckets = {event.bucket for event in notification.events}
        triggers = [t for t in self._triggers.values() if t.filter.bucket in buckets]
        for trigger in triggers:
            trigger.stats.received += 1
            trigger.stats.last_notification_at = time.time()
        delivery = await self.deliver(notification, triggers)
        return json_response(delivery.dump())

    async def _read(self, request: web.Request) -> Notification:
        body = await read_body(request, MAX_NOTIFICATION_BODY)
        document = parse_json(body)  # SNS posts JSON as text/plain, so the content type is not checked
        try:
            return parse_notification(document, region=self.ctx.region)
        except NotificationError as exc:
            raise bad_request(str(exc)) from None

    # -- SNS subscription handshake -------------------------------------------------------------------

    async def _confirm(
        self,
        confirmation: SubscriptionConfirmation,
        allowed: frozenset[tuple[str, str, int]],
        triggers: list[_Trigger],
    ) -> web.Response:
        """Fetch ``SubscribeURL``, but only on an endpoint this trigger is configured with."""
        url = confirmation.subscribe_url
        try:
            parts = urlsplit(url)
            origin = _origin(url)
        except ValueError:
            raise bad_request("SubscribeURL: is not a valid URL") from None
        if parts.scheme not in ("http", "https") or parts.username or parts.password:
            raise bad_request("SubscribeURL: must be a plain http(s) URL")
        if origin not in allowed:
            configured = ", ".join(sorted(f"{s}://{h}:{p}" for s, h, p in allowed)) or "none"
            raise bad_request(
                f"SubscribeURL: {origin[0]}://{origin[1]}:{origin[2]} is not this trigger's S3 or SNS endpoint "
                f"(configured: {configured}); the subscription was not confirmed"
            )
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CONFIRM_TIMEOUT_S))
        try:
            async with self._http.get(url, allow_redirects=False) as response:
                await response.content.read(CONFIRM_MAX_BODY)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unavailable(f"confirming the SNS subscription failed: {type(exc).__name__}: {exc}") from None
        if status != 200:
            raise unavailable(f"confirming the SNS subscription failed: the endpoint answered HTTP {status}")
        for trigger in triggers:
            trigger.stats.subscriptions_confirmed += 1
        log.info("confirmed SNS subscription to %s", confirmation.topic_arn)
        return json_response({"confirmed": True, "topic_arn": confirmation.topic_arn})

    # -- delivery -------------------------------------------------------------------------------------

    def _dropped(self, trigger: _Trigger, reason: str) -> None:
        self.ctx.observer.trigger_dropped(trigger.spec.trigger_id, TRIGGER_TYPE, trigger.spec.function_urn, reason)

    async def deliver(self, notification: Notification, triggers: list[_Trigger]) -> Delivery:
        """Invoke every trigger each event matches, and hand the events to EventGrid; returns once
        all of it is durable. Any failure is a 503, so the S3 server sends the notification again."""
        delivery = Delivery(records=len(notification.events) + notification.ignored, ignored=notification.ignored)
        jobs: list[tuple[_Trigger, ObjectEvent]] = []
        for trigger in triggers:
            trigger.stats.ignored += notification.ignored
        for event in notification.events:
            for trigger in triggers:
                if not trigger.filter.matches(event):
                    trigger.stats.ignored += 1
                    self._dropped(trigger, "filtered")
                    continue
                if event.written_by and event.written_by == trigger.spec.function_urn:
                    trigger.stats.loops_stopped += 1
                    self._dropped(trigger, "recursion")
                    log.warning(
                        "OBS trigger %s: %s/%s was written by the trigger's own function; not invoking it again",
                        trigger.spec.trigger_id,
                        event.bucket,
                        event.key,
                    )
                    continue
                jobs.append((trigger, event))
        self.received += len(notification.events)
        try:
            outcomes = await self._enqueue_all(jobs)
            if notification.events:
                delivery.eventgrid_invocations = await self._to_eventgrid(notification.events)
        except FSSError:
            raise
        except Exception as exc:
            log.warning("OBS notification not accepted: %s: %s", type(exc).__name__, exc)
            raise unavailable(f"the notification could not be stored ({type(exc).__name__}); send it again") from None
        for request_id, fresh in outcomes:
            delivery.request_ids.append(request_id)
            if fresh:
                delivery.invocations += 1
            else:
                delivery.duplicates += 1
        return delivery

    async def _enqueue_all(self, jobs: list[tuple[_Trigger, ObjectEvent]]) -> list[tuple[str, bool]]:
        limit = asyncio.Semaphore(ENQUEUE_CONCURRENCY)

        async def one(trigger: _Trigger, event: ObjectEvent) -> tuple[str, bool]:
            async with limit:
                request_id = request_id_for(trigger.spec.trigger_id, event)
                return request_id, await self._enqueue(trigger, event, request_id)

        return list(await asyncio.gather(*(one(t, e) for t, e in jobs)))

    async def _seen(self, request_id: str) -> bool:
        records = self.ctx.state
        return isinstance(records, RecordLookup) and await records.record_state(request_id) is not None

    async def _enqueue(self, trigger: _Trigger, event: ObjectEvent, request_id: str) -> bool:
        """Enqueue one invocation unless its request id exists already; True when enqueued."""
        if request_id in self._inflight or await self._seen(request_id):
            trigger.stats.duplicates += 1
            return False
        self._inflight.add(request_id)
        try:
            await self.ctx.invocations.enqueue(
                trigger.spec.function_urn,
                event.payload(),
                trigger_id=trigger.spec.trigger_id,
                trigger_type=TRIGGER_TYPE,
                source={
                    "bucket": event.bucket,
                    "key": event.key,
                    "event_name": event.event_name,
                    "etag": event.etag,
                    "sequencer": event.sequencer,
                    "synthetic": "true" if event.synthetic else "false",
                },
                request_id=request_id,
                enqueued_at=time.time(),
            )
        finally:
            self._inflight.discard(request_id)
        trigger.stats.invocations += 1
        self.invocations += 1
        return True

    async def _to_eventgrid(self, events: list[ObjectEvent]) -> int:
        """The same events as ``HC.OBS.DWR`` CloudEvents, to the EVENTGRID triggers they match."""
        publish: Callable[[str, list[dict[str, Any]]], Awaitable[list[Any]]] | None = self.ctx.options.get(
            PUBLISH_OPTION
        )
        if publish is None:
            return 0
        cloudevents = [obs_record_to_cloudevent(e.record, event_id=e.eventgrid_id()) for e in events]
        deliveries = await publish(EVENTGRID_CHANNEL, cloudevents)
        return sum(len(d.request_ids) for d in deliveries)

    # -- reconciliation --------------------------------------------------------------------------------

    @staticmethod
    def _lease_name(trigger_id: str) -> str:
        return f"obs-reconcile:{trigger_id}"

    async def _reconcile_loop(self) -> None:
        while True:
            now = time.time()
            for trigger in list(self._triggers.values()):
                if trigger.reconcile_interval_s <= 0 or trigger.next_scan > now:
                    continue
                try:
                    await self.reconcile(trigger.spec.trigger_id)
                    trigger.stats.last_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    trigger.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    log.warning("OBS trigger %s: reconciliation scan failed: %s", trigger.spec.trigger_id, exc)
                trigger.next_scan = time.time() + trigger.reconcile_interval_s
            waits = [t.next_scan - time.time() for t in self._triggers.values() if t.reconcile_interval_s > 0]
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, min(waits, default=60.0))):
                    await self._wakeup.wait()

    def _client(self, endpoint: S3Endpoint) -> Minio:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = endpoint.client()
        return client

    async def reconcile(self, trigger_id: str) -> int:
        """One scan: invoke the trigger for objects modified since the watermark that no invocation
        exists for. Returns how many synthetic invocations it enqueued."""
        trigger = self._triggers.get(trigger_id)
        if trigger is None or trigger.endpoint is None:
            return 0
        ttl = max(30.0, 3 * trigger.reconcile_interval_s)
        if not await self.ctx.state.acquire_lease(self._lease_name(trigger_id), self.ctx.node_id, ttl):
            return 0  # another process scans this trigger
        checkpoint = await self.ctx.state.get_checkpoint(trigger_id, RECONCILE_CHECKPOINT)
        since = float(checkpoint["since"]) if isinstance(checkpoint, dict) and "since" in checkpoint else None
        since = reconcile_start(trigger.spec.created) if since is None else since
        cutoff = time.time() - self.reconcile_settle_s
        if cutoff <= since:
            return 0
        client = self._client(trigger.endpoint)
        listed, cutoff = await asyncio.to_thread(_list_modified, client, trigger.filter, since, cutoff)
        emitted = 0
        for item in listed:
            event = synthetic_event(
                bucket=trigger.filter.bucket,
                key=item.key,
                etag=item.etag,
                size=item.size,
                last_modified=item.last_modified,
                version_id=item.version_id,
                region=self.ctx.region,
                configuration_id=str(trigger.spec.event_data.get("name") or ""),
            )
            if not trigger.filter.matches(event):
                continue  # e.g. a trigger for Post or Copy only: a listing cannot tell how it was made
            if await self._enqueue(trigger, event, request_id_for(trigger_id, event)):
                emitted += 1
                trigger.stats.synthetic += 1
                log.info(
                    "OBS trigger %s: no notification for %s/%s; invoked from the scan",
                    trigger_id,
                    event.bucket,
                    event.key,
                )
        # Look back again next time: LastModified of a multipart upload is its start, and clocks drift.
        new_since = max(since, cutoff - self.reconcile_lookback_s, reconcile_start(trigger.spec.created))
        await self.ctx.state.put_checkpoint(trigger_id, RECONCILE_CHECKPOINT, {"since": new_since})
        trigger.stats.scans += 1
        trigger.stats.last_scan_at = time.time()
        trigger.stats.reconcile_since = new_since
        return emitted


@dataclass(frozen=True, slots=True)
class ListedObject:
    key: str
    etag: str
    size: int | None
    last_modified: datetime
    version_id: str


def _list_modified(
    client: Minio, object_filter: ObjectFilter, since: float, cutoff: float
) -> tuple[list[ListedObject], float]:
    """(objects under the trigger's prefix modified in [since, cutoff], oldest first; the cutoff).

    Runs in a worker thread: the minio client is blocking. A bucket listing is in key order, not
    time order, so all of the prefix is listed; at most :data:`MAX_SCAN_CANDIDATES` are returned, the
    oldest, with the cutoff moved back to the newest of them so the rest come with the next scan.
    On a versioned bucket every version is an upload of its own, so versions are listed.
    """
    bucket = object_filter.bucket
    versioned = False
    with contextlib.suppress(Exception):  # servers without versioning support: plain listing
        versioned = client.get_bucket_versioning(bucket).status == "Enabled"
    found: list[ListedObject] = []
    for obj in client.list_objects(
        bucket, prefix=object_filter.prefix or None, recursive=True, include_version=versioned
    ):
        name = obj.object_name
        if obj.is_dir or name is None or obj.last_modified is None or obj.is_delete_marker:
            continue
        if not name.endswith(object_filter.suffix):
            continue
        modified = obj.last_modified.timestamp()
        if not since <= modified <= cutoff:
            continue
        version = obj.version_id if versioned and obj.version_id not in (None, "null") else ""
        found.append(ListedObject(name, (obj.etag or "").strip('"'), obj.size, obj.last_modified, version or ""))
        if len(found) > 2 * MAX_SCAN_CANDIDATES:
            found.sort(key=lambda o: o.last_modified)
            del found[MAX_SCAN_CANDIDATES:]
            cutoff = found[-1].last_modified.timestamp()
    found.sort(key=lambda o: o.last_modified)
    if len(found) > MAX_SCAN_CANDIDATES:
        del found[MAX_SCAN_CANDIDATES:]
        cutoff = found[-1].last_modified.timestamp()
    return found, cutoff
