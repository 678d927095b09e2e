"""SMN triggers: functions subscribed to topics of Triggerbus's own SMN-compatible API.

Topics live in the store (``POST /v2/{project_id}/notifications/topics``, see
:mod:`triggerbus.api.smn`); a subscription *is* an SMN trigger (``event_data.topic_urn``),
always ``Confirmed``, and cannot be disabled, only deleted (user guide §1.8).

**Publishing is durable before it answers.** :meth:`SMNConnector.publish` turns one
message into one async invocation per subscribed trigger and appends *all of them in one
``bus.publish`` call*. The embedded bus writes a multi-message publish in one SQLite
transaction, so either every subscriber's copy is on disk or none is: a crash can never
leave a published message delivered to some subscribers and lost for others, and the
caller gets its ``message_id`` only after the commit. (Writing one "message" record and
fanning it out later would need a second consumer and its own crash bookkeeping for the
same guarantee.) The Kafka bus sends the copies one by one; a crash in the middle means
the caller never saw a 200 and publishes again, so some subscribers may see the message
twice — at least once, never lost.

Request ids are derived from (message id, trigger id), so a copy published twice for the
same message (an SMN destination redelivered after a crash, see
:mod:`invoker.smn_sink`) is recognised by the invoker as the same invocation.

Subscribers are read from the store at publish time, not from this process's activated
triggers: a subscription created through any process is used at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from bus.base import Outgoing
from connectors.base import Connector, ConnectorContext, TriggerSpec
from connectors.smn_bridge import BridgeConfig, MqttBridge
from invoker.envelope import INVOCATIONS_TOPIC, InvocationEnvelope
from invoker.records import Record
from schemas.errors import bad_request, conflict, not_found
from schemas.events.smn import SMNEvent
from schemas.triggers import TriggerStatus
from schemas.urn import FunctionUrn
from triggerbus.store.models import StoredTopic, StoredTrigger

log = logging.getLogger(__name__)

SUBSCRIPTION_STATUS = "Confirmed"
MAX_MESSAGE_BYTES = 256 * 1024  # SMN: "a UTF-8 string of at most 256 KB"
MAX_SUBJECT_BYTES = 512
_DELIVERY_NAMESPACE = uuid.UUID("3b0c7a52-5d0e-4f4f-9b7e-8f1f6a0c2d41")


def delivery_request_id(message_id: str, trigger_id: str) -> str:
    """The request id of one subscriber's copy: the same message and trigger, the same request."""
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{message_id}/{trigger_id}"))


def new_message_id() -> str:
    return uuid.uuid4().hex  # 32 hex characters, as SMN's message ids


@runtime_checkable
class TopicStore(Protocol):
    """What the SMN connector needs from the service's store."""

    async def get_topic(self, topic_urn: str) -> StoredTopic | None: ...

    async def list_triggers(
        self, function_urn: str | None = None, trigger_type: str | None = None
    ) -> list[StoredTrigger]: ...

    async def insert_record(self, record: Record) -> bool: ...

    async def audit(self, action: str, resource: str, detail: dict[str, Any]) -> None: ...


def build_delivery(
    trigger: StoredTrigger,
    *,
    topic_urn: str,
    message_id: str,
    message: str,
    subject: str,
    attributes: dict[str, Any] | None,
    published_at: datetime,
) -> InvocationEnvelope:
    """One subscriber's async invocation: the documented SMN event (contract §1.4)."""
    request_id = delivery_request_id(message_id, trigger.trigger_id)
    event = SMNEvent.build(
        topic_urn=topic_urn,
        message=message,
        message_id=message_id,
        subscription_urn=trigger.function_urn,  # samples show the function URN here
        function_name=FunctionUrn.parse(trigger.function_urn).name,
        request_id=request_id,
        published_at=published_at,
        subject=subject,
        message_attributes=attributes or None,
    )
    return InvocationEnvelope(
        request_id=request_id,
        function_urn=trigger.function_urn,
        payload=event.dump_json(),
        enqueued_at=published_at.timestamp(),
        trigger_id=trigger.trigger_id,
        trigger_type="SMN",
        source={"topic_urn": topic_urn, "message_id": message_id},
    )


class SMNConnector(Connector):
    trigger_types: ClassVar[tuple[str, ...]] = ("SMN",)
    validates_against_existing: ClassVar[bool] = True

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        if not isinstance(ctx.state, TopicStore):
            raise TypeError("the SMN connector needs the service store (topics, triggers, records)")
        self.store: TopicStore = ctx.state
        self.tz = ZoneInfo(ctx.default_tz)
        self._subscribed: dict[str, str] = {}  # active trigger id -> topic URN (for status only)
        self.published = 0
        self.deliveries = 0
        raw_bridge = ctx.options.get("smn_mqtt_bridge")
        self.bridge: MqttBridge | None = None
        if raw_bridge:
            self.bridge = MqttBridge(BridgeConfig.parse(raw_bridge), self, self.store.audit)

    async def start(self) -> None:
        if self.bridge is not None:
            for topic_urn in self.bridge.config.topics:
                if await self.store.get_topic(topic_urn) is None:
                    log.warning("SMN MQTT bridge: topic %s does not exist (yet); its messages are dropped", topic_urn)
            await self.bridge.start()

    async def close(self) -> None:
        if self.bridge is not None:
            await self.bridge.close()

    # -- subscriptions (triggers) ----------------------------------------------------------------------

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        topic_urn = str(trigger.event_data.get("topic_urn", ""))
        if await self.store.get_topic(topic_urn) is None:
            raise bad_request(
                f"event_data.topic_urn: topic {topic_urn} does not exist; "
                "create it first (POST /v2/{project_id}/notifications/topics)"
            )
        for other in existing:
            if (
                other.trigger_id != trigger.trigger_id
                and other.trigger_type == "SMN"
                and other.function_urn == trigger.function_urn
                and other.event_data.get("topic_urn") == topic_urn
            ):
                raise conflict(
                    f"event_data.topic_urn: function {trigger.function_urn} is already subscribed to {topic_urn} "
                    f"(trigger {other.trigger_id})"
                )
        return {"subscription_status": SUBSCRIPTION_STATUS}

    async def activate(self, trigger: TriggerSpec) -> None:
        self._subscribed[trigger.trigger_id] = str(trigger.event_data.get("topic_urn", ""))

    async def deactivate(self, trigger_id: str) -> None:
        self._subscribed.pop(trigger_id, None)

    def status(self, trigger_id: str) -> dict[str, Any]:
        topic_urn = self._subscribed.get(trigger_id)
        if topic_urn is None:
            return {}
        return {"topic_urn": topic_urn, "subscription_status": SUBSCRIPTION_STATUS}

    # -- publishing ----------------------------------------------------------------------------------------

    async def subscribers(self, topic_urn: str) -> list[StoredTrigger]:
        triggers = await self.store.list_triggers(trigger_type="SMN")
        return [
            t for t in triggers if t.event_data.get("topic_urn") == topic_urn and t.status == TriggerStatus.ACTIVE.value
        ]

    async def publish(
        self,
        topic_urn: str,
        *,
        message: str,
        subject: str = "",
        attributes: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str:
        """Deliver ``message`` to every subscriber of ``topic_urn``; durable when it returns.

        Returns the message id. Raises FSS.0404 if the topic does not exist.
        """
        if await self.store.get_topic(topic_urn) is None:
            raise not_found(f"topic {topic_urn} does not exist")
        message_id = message_id or new_message_id()
        published_at = datetime.now(self.tz)
        deliveries = [
            build_delivery(
                trigger,
                topic_urn=topic_urn,
                message_id=message_id,
                message=message,
                subject=subject,
                attributes=attributes,
                published_at=published_at,
            )
            for trigger in await self.subscribers(topic_urn)
        ]
        if deliveries:
            # One call: all copies are committed together (see the module docstring).
            await self.ctx.bus.publish(
                *(Outgoing(INVOCATIONS_TOPIC, d.to_bytes(), key=d.function_urn) for d in deliveries)
            )
            await self._write_records(deliveries)
        self.published += 1
        self.deliveries += len(deliveries)
        return message_id

    async def _write_records(self, deliveries: list[InvocationEnvelope]) -> None:
        """WAIT records for immediate queries; a courtesy: the invoker creates missing ones."""
        results = await asyncio.gather(
            *(
                self.store.insert_record(
                    Record(
                        request_id=d.request_id,
                        function_urn=d.function_urn,
                        created=d.enqueued_at or time.time(),
                        trigger_id=d.trigger_id,
                        trigger_type=d.trigger_type,
                        source=d.source,
                        payload=d.payload.encode(),
                    )
                )
                for d in deliveries
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("SMN delivery record not written (the invoker will create it): %s", result)
