"""How stream connectors hand source records to the invoker, and how refusals are recorded.

A stream connector (Kafka, RabbitMQ, DIS, ...) turns each source record into a
:class:`StreamItem` and calls :meth:`Ingest.publish`; the batcher builds the events.
A record that must never be invoked (over the 6 MB event limit, undecodable ...) goes
through :meth:`Ingest.reject`: it gets a DISCARD/FAIL async record with the reason and
its source coordinates, and the connector is told it is finished, so its source
position can move on. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from bus.base import Bus, Outgoing
from invoker.completion import Completion, CompletionHub
from invoker.envelope import STREAM_TOPIC, StreamItem, new_request_id
from invoker.observer import NOOP, Observer, drop_reason
from invoker.records import Record, RecordStore
from schemas.records import AsyncStatus

log = logging.getLogger(__name__)

OVERSIZED_CODE = 4413
ASSEMBLY_FAILED_CODE = 4400


def summarize_sources(items: Sequence[StreamItem]) -> dict[str, Any]:
    """The source coordinates of several items: the first's, plus ``last_*`` of the last's."""
    first = dict(items[0].source)
    if len(items) > 1:
        for name, value in items[-1].source.items():
            if first.get(name) != value:
                first[f"last_{name}"] = value
    first["count"] = len(items)
    return first


async def reject_items(
    records: RecordStore,
    completion: CompletionHub,
    items: Sequence[StreamItem],
    *,
    status: AsyncStatus,
    code: int,
    reason: str,
    observer: Observer = NOOP,
) -> str:
    """Record why ``items`` will never be invoked and complete them; returns the record id."""
    first = items[0]
    request_id = new_request_id()
    now = time.time()
    await records.insert_record(
        Record(
            request_id=request_id,
            function_urn=first.function_urn,
            status=status,
            created=now,
            end_time=now,
            error_code=code,
            error_message=reason,
            trigger_id=first.trigger_id,
            trigger_type=first.trigger_type,
            source=summarize_sources(items),
            condition="RecordRejected",
        )
    )
    log.warning("trigger %s: %s", first.trigger_id, reason)
    observer.trigger_dropped(first.trigger_id, first.trigger_type, first.function_urn, drop_reason(code), len(items))
    await completion.done(Completion(request_id, first.trigger_id, tuple(i.item_id for i in items), status))
    return request_id


class Ingest:
    def __init__(self, bus: Bus, records: RecordStore, completion: CompletionHub, *, observer: Observer = NOOP) -> None:
        self.bus = bus
        self.records = records
        self.completion = completion
        self.observer = observer
        self.published = 0
        self.rejected = 0

    async def publish(self, items: Sequence[StreamItem]) -> None:
        """Durably hand ``items`` to the batcher (keyed by trigger: one trigger's items stay in order)."""
        if items:
            await self.bus.publish(
                *(Outgoing(STREAM_TOPIC, item.model_dump_json().encode(), key=item.trigger_id) for item in items)
            )
            self.published += len(items)
            first = items[0]
            if all(item.trigger_id == first.trigger_id for item in items):
                self.observer.trigger_events(first.trigger_id, first.trigger_type, first.function_urn, len(items))
            else:
                for item in items:
                    self.observer.trigger_events(item.trigger_id, item.trigger_type, item.function_urn)

    async def reject(self, items: Sequence[StreamItem], *, status: AsyncStatus, code: int, reason: str) -> str:
        self.rejected += len(items)
        return await reject_items(
            self.records, self.completion, items, status=status, code=code, reason=reason, observer=self.observer
        )
