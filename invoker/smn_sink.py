"""SMN destination: an async invocation's outcome is published to an SMN topic.

``destination: SMN`` with ``param: {"topic_urn": ...}`` publishes the destination event
(the documented JSON, as text) as the message of one SMN publish, so every function
subscribed to the topic receives it in an SMN event. The publish goes through the SMN
connector (:meth:`connectors.smn.SMNConnector.publish`), so it is durable and atomic over
the subscribers like any other publish.

The message id is derived from the invocation's request id: when the destination worker
delivers the same task again (it crashed after publishing, before acking), the second
publish carries the same message id, so each subscriber's copy has the same request id as
before and the invoker does not run it twice once the first copy finished.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from invoker.envelope import DestinationTask

_MESSAGE_NAMESPACE = uuid.UUID("0d6f3e0a-77c4-4c55-b0a6-5b9a4a2f1e93")


class TopicPublisher(Protocol):
    async def publish(
        self,
        topic_urn: str,
        *,
        message: str,
        subject: str = "",
        attributes: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str: ...


def destination_message_id(request_id: str) -> str:
    return uuid.uuid5(_MESSAGE_NAMESPACE, f"destination/{request_id}").hex


class SMNSink:
    """A :class:`invoker.destinations.DestinationSink`; the publisher is attached once the
    connectors exist (the sinks are built before them)."""

    def __init__(self) -> None:
        self._publisher: TopicPublisher | None = None

    def attach(self, publisher: TopicPublisher) -> None:
        self._publisher = publisher

    async def deliver(self, task: DestinationTask) -> str:
        if self._publisher is None:
            raise RuntimeError("the SMN publisher is not running in this service")
        topic_urn = str(task.param["topic_urn"])
        message_id = await self._publisher.publish(
            topic_urn, message=task.event, message_id=destination_message_id(task.request_id)
        )
        return f"{topic_urn} (message {message_id})"
