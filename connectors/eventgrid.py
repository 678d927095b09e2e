"""EVENTGRID triggers: a CloudEvents 1.0 HTTP ingress that invokes the matching functions.

``POST /eventgrid/channels/{channel}/events`` with the management token (``X-Auth-Token``) takes
CloudEvents in the three modes of the CloudEvents HTTP binding:

* structured: ``Content-Type: application/cloudevents+json``, the body is one event;
* batched: ``Content-Type: application/cloudevents-batch+json``, the body is a JSON array of events;
* binary: ``ce-id``, ``ce-source``, ``ce-specversion``, ``ce-type`` (and ``ce-subject``,
  ``ce-time``, other ``ce-*`` extensions) headers, the body is ``data`` and its Content-Type
  becomes ``datacontenttype``.

Every event is validated first (an invalid one refuses the whole request with a 400 naming the
attribute and, in a batch, the index). Then each event goes to every EVENTGRID trigger it matches:
the channel, ``source_name`` (the event ``source``), ``event_types`` (its ``type``) and, for OBS
events, ``bucket``/``prefix``/``suffix`` on the object. The function gets the event in structured
form, asynchronously; the response (200) comes only once all those invocations are durable on
the bus. An invocation's request id is derived from (trigger, event source, event id): a producer
that resends an event after a lost response does not run the function twice (CloudEvents lets
consumers treat equal ``source`` + ``id`` as duplicates).

:func:`obs_record_to_cloudevent` turns an S3/OBS notification record into the ``HC.OBS.DWR``
CloudEvent EventGrid delivers for OBS (contract §1.3b); :meth:`EventGridConnector.publish` routes
events from other connectors (OBS) without HTTP.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import unquote_plus

from aiohttp import web

from connectors.base import Connector, ConnectorContext, TriggerSpec
from invoker import tracing
from schemas.errors import bad_request, too_large, unsupported_media
from schemas.events.eventgrid import (
    CloudEventError,
    Label,
    binary_cloudevent,
    check_rfc3339,
    rfc3339,
    validate_cloudevent,
)
from schemas.events.obs import OBSv3Record
from schemas.triggers import CHANNEL_NAME_RE
from triggerbus.api.common import json_response, parse_json, read_body

TRIGGER_TYPE = "EVENTGRID"
INGRESS_PATH = "/eventgrid/channels/{channel}/events"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
DEFAULT_CHANNEL = "default"
OBS_SOURCE = "HC.OBS.DWR"
DEFAULT_EVENT_LIMIT = 256 * 1024  # one event as delivered: the async request body limit
DEFAULT_BODY_LIMIT = 6 * 1024 * 1024  # one request (a batch)
ENQUEUE_CONCURRENCY = 32
# Other connectors of the same service (OBS) find :meth:`EventGridConnector.publish` under this key
# of the shared ``ctx.options``; connectors have no other handle on each other.
PUBLISH_OPTION = "eventgrid_publish"
_REQUEST_NAMESPACE = uuid.UUID("0c5e7d8a-2f3b-4c61-9d0e-7a1b2c3d4e5f")


def request_id_for(trigger_id: str, event: Mapping[str, Any]) -> str:
    """The same event (``source`` + ``id``) for the same trigger is always the same request."""
    return str(uuid.uuid5(_REQUEST_NAMESPACE, f"{trigger_id}\n{event['source']}\n{event['id']}"))


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------ OBS events


def obs_object(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """(bucket, object key as carried: URL-encoded) of an OBS event, either record shape; else None."""
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    info = data.get("obs") if isinstance(data.get("obs"), dict) else data.get("s3")
    if not isinstance(info, dict):
        return None
    bucket, obj = info.get("bucket"), info.get("object")
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        return None
    name, key = bucket.get("name") or bucket.get("bucket"), obj.get("key")
    if not isinstance(name, str) or not isinstance(key, str):
        return None
    return name, key


def obs_event_type(event_name: str) -> str:
    """``ObjectCreated:Put`` -> ``OBS:DWR:ObjectCreated:PUT`` (HTTP-method actions upper-cased, as
    in the real sample and Huawei's ``event_types`` example; other actions are kept as they are)."""
    category, _, action = event_name.removeprefix("s3:").partition(":")
    action = {"Put": "PUT", "Post": "POST", "Copy": "COPY"}.get(action, action)
    return f"OBS:DWR:{category}:{action}"


def obs_record_to_cloudevent(
    record: Mapping[str, Any],
    *,
    time: datetime | str | None = None,
    ttl: str | None = "4000",
    event_id: str | None = None,
) -> dict[str, Any]:
    """The ``HC.OBS.DWR`` CloudEvent EventGrid delivers for one OBS notification record.

    ``record`` is a ``Records[]`` item of an S3-style notification (``s3`` object; OBS, Ceph,
    MinIO ...) or already an OBS v3.0 record (``obs`` object). The object key is kept as the
    record carries it (URL-encoded, as OBS sends it). ``id`` is the OBS request id, as in the real
    sample; ``time`` (when EventGrid took the event) defaults to now; ``ttl`` is EventGrid's
    extension attribute (``"4000"`` in the real sample).
    """
    data = OBSv3Record.model_validate(dict(record)).dump()
    if "obs" not in record:
        # EventGrid's OBS records fill the x-obs-* response elements and leave x-amz-* empty.
        given = record.get("responseElements") or {}
        data["responseElements"] = {
            "x-obs-id-2": given.get("x-obs-id-2") or given.get("x-amz-id-2") or "",
            "x-obs-request-id": given.get("x-obs-request-id") or given.get("x-amz-request-id") or "",
            "x-amz-request-id": "",
            "x-amz-id-2": "",
        }
        data["obs"]["object"].setdefault("oldpsxpth", "")
    data["eventName"] = str(data["eventName"]).removeprefix("s3:")
    if isinstance(time, str):
        check_rfc3339(time)
        moment = time
    else:
        moment = rfc3339(time or datetime.now(UTC))
    key = data["obs"]["object"]["key"]
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or data["responseElements"].get("x-obs-request-id") or str(uuid.uuid4()),
        "source": OBS_SOURCE,
        "type": obs_event_type(data["eventName"]),
        "subject": key,
        "time": moment,
        "datacontenttype": "application/json",
        "dataschema": "",
        "data": data,
    }
    if ttl is not None:
        event["ttl"] = ttl
    return event


# ------------------------------------------------------------------------------ matching


@dataclass(frozen=True, slots=True)
class Subscription:
    """What one EVENTGRID trigger receives, and how its events are shaped."""

    trigger_id: str
    function_urn: str
    channels: frozenset[str]
    source: str | None
    event_types: frozenset[str] | None
    bucket: str | None
    prefix: str
    suffix: str
    key_encode: bool

    @classmethod
    def of(cls, trigger: TriggerSpec) -> Subscription:
        data = trigger.event_data
        channels = {str(v) for v in (data.get("channel_name"), data.get("channel_id")) if v}
        types = data.get("event_types")
        return cls(
            trigger_id=trigger.trigger_id,
            function_urn=trigger.function_urn,
            channels=frozenset(channels or {DEFAULT_CHANNEL}),
            source=data.get("source_name") or None,
            event_types=frozenset(types) if types else None,
            bucket=data.get("bucket") or None,
            prefix=str(data.get("prefix") or ""),
            suffix=str(data.get("suffix") or ""),
            key_encode=data.get("Key_encode", data.get("key_encode")) is not False,
        )

    @property
    def filters_objects(self) -> bool:
        return bool(self.bucket or self.prefix or self.suffix)

    def matches(self, channel: str, event: Mapping[str, Any]) -> bool:
        if channel not in self.channels:
            return False
        if self.source is not None and event.get("source") != self.source:
            return False
        if self.event_types is not None and event.get("type") not in self.event_types:
            return False
        if not self.filters_objects:
            return True
        found = obs_object(event)
        if found is None:
            return False  # an object filter only ever matches OBS events
        bucket, key = found
        plain = unquote_plus(key)
        return (
            (self.bucket is None or bucket == self.bucket)
            and plain.startswith(self.prefix)
            and plain.endswith(self.suffix)
        )

    def shape(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event as this trigger delivers it: with ``Key_encode: false`` OBS keys are decoded."""
        found = obs_object(event)
        if self.key_encode or found is None:
            return event
        key = found[1]
        plain = unquote_plus(key)
        data = dict(event["data"])
        shape_name = "obs" if isinstance(data.get("obs"), dict) else "s3"
        info = dict(data[shape_name])
        info["object"] = {**info["object"], "key": plain}
        data[shape_name] = info
        shaped = {**event, "data": data}
        if shaped.get("subject") == key:
            shaped["subject"] = plain
        return shaped


@dataclass(slots=True)
class Delivery:
    """What happened to one event: which invocations it became."""

    event_id: str
    request_ids: list[str]

    def dump(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "matched_triggers": len(self.request_ids), "request_ids": self.request_ids}


# ------------------------------------------------------------------------------ the connector


def _batch_label(index: int) -> Label:
    return lambda name: f"events[{index}].{name}"


class EventGridConnector(Connector):
    trigger_types: ClassVar[tuple[str, ...]] = (TRIGGER_TYPE,)

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        self.event_limit = int(ctx.options.get("max_async_body", DEFAULT_EVENT_LIMIT))
        self.body_limit = int(ctx.options.get("max_sync_body", DEFAULT_BODY_LIMIT))
        self._subscriptions: dict[str, Subscription] = {}
        ctx.options[PUBLISH_OPTION] = self.publish
        self.received = 0
        self.invocations = 0

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(INGRESS_PATH, self.handle)

    async def activate(self, trigger: TriggerSpec) -> None:
        self._subscriptions[trigger.trigger_id] = Subscription.of(trigger)

    async def deactivate(self, trigger_id: str) -> None:
        self._subscriptions.pop(trigger_id, None)

    def status(self, trigger_id: str) -> dict[str, Any]:
        subscription = self._subscriptions.get(trigger_id)
        if subscription is None:
            return {}
        return {"channels": sorted(subscription.channels), "ingress_path": INGRESS_PATH}

    # -- ingress -------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        channel = request.match_info["channel"]
        if not CHANNEL_NAME_RE.match(channel):
            raise bad_request(
                f"channel: {channel[:80]!r} must be 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        content_type = request.headers.get("Content-Type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        body = await read_body(request, self.body_limit)
        try:
            events = self._events(request, media, content_type, body)
        except CloudEventError as exc:
            raise bad_request(exc.message) from None
        for index, event in enumerate(events):
            size = len(compact_json(event).encode())
            if size > self.event_limit:
                where = f"events[{index}]" if media == BATCH else "event"
                raise too_large(f"{where}: {size} bytes as JSON exceeds the {self.event_limit}-byte limit of one event")
        deliveries = await self.publish(channel, events, headers=request.headers)
        return json_response({"failed_count": 0, "events": [d.dump() for d in deliveries]})

    def _events(self, request: web.Request, media: str, content_type: str, body: bytes) -> list[dict[str, Any]]:
        if media == BATCH:
            batch = parse_json(body)
            if not isinstance(batch, list):
                raise CloudEventError("body: a cloudevents-batch must be a JSON array of events")
            return [
                validate_cloudevent(item, _batch_label(index), whole=f"events[{index}]")
                for index, item in enumerate(batch)
            ]
        if media == STRUCTURED:
            return [validate_cloudevent(parse_json(body))]
        headers = list(request.headers.items())
        if any(name.lower().startswith("ce-") for name, _ in headers):
            return [binary_cloudevent(headers, body, content_type or None)]
        raise unsupported_media(
            f"Content-Type {media or '(none)'!r} is not a CloudEvent: send {STRUCTURED} (one event), "
            f"{BATCH} (a JSON array) or binary mode (ce-id, ce-source, ce-specversion, ce-type headers)"
        )

    async def publish(
        self, channel: str, events: list[dict[str, Any]], headers: Mapping[str, str] | None = None
    ) -> list[Delivery]:
        """Invoke every trigger each (validated) event matches; returns once all are durable.

        Each invocation continues the event's trace: its ``traceparent`` extension attribute, else
        the ``traceparent`` header of the HTTP request (``headers``) it came in.
        """
        self.received += len(events)
        deliveries: list[Delivery] = []
        jobs: list[tuple[Subscription, dict[str, Any], str]] = []
        subscriptions = list(self._subscriptions.values())
        for event in events:
            delivery = Delivery(str(event["id"]), [])
            for subscription in subscriptions:
                if subscription.matches(channel, event):
                    request_id = request_id_for(subscription.trigger_id, event)
                    delivery.request_ids.append(request_id)
                    jobs.append((subscription, event, request_id))
                elif channel in subscription.channels:  # on its channel, but not its source/type/object
                    self.ctx.observer.trigger_dropped(
                        subscription.trigger_id, TRIGGER_TYPE, subscription.function_urn, "filtered"
                    )
            deliveries.append(delivery)
        limit = asyncio.Semaphore(ENQUEUE_CONCURRENCY)

        async def enqueue(subscription: Subscription, event: dict[str, Any], request_id: str) -> None:
            async with limit:
                await self.ctx.invocations.enqueue(
                    subscription.function_urn,
                    compact_json(subscription.shape(event)),
                    trigger_id=subscription.trigger_id,
                    trigger_type=TRIGGER_TYPE,
                    source={
                        "channel": channel,
                        "event_source": event["source"],
                        "event_id": event["id"],
                        "event_type": event["type"],
                    },
                    request_id=request_id,
                    trace=tracing.from_cloudevent(event, headers),
                )

        await asyncio.gather(*(enqueue(*job) for job in jobs))
        self.invocations += len(jobs)
        return deliveries
