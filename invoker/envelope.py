"""What travels on the bus between connectors, the batcher and the invoker."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

INVOCATIONS_TOPIC = "tb.invocations"  # keyed by function URN
STREAM_TOPIC = "tb.stream"  # records from stream triggers, keyed by trigger id (+ source partition)
DESTINATIONS_TOPIC = "tb.destinations"  # deliveries to OBS/SMN/DIS, keyed by request id
DEADLETTER_TOPIC = "tb.deadletter"  # messages nobody could parse, kept for operators
COMPLETIONS_TOPIC = "tb.completions"  # with several processes: finished stream batches, read by all


def new_request_id() -> str:
    return str(uuid.uuid4())


class InvocationEnvelope(BaseModel):
    """One async invocation. ``attempt`` counts attempts already made (0 = fresh)."""

    v: int = 1
    request_id: str = Field(default_factory=new_request_id)
    function_urn: str
    payload: str  # the event as JSON text, exactly as it will reach the function
    attempt: int = 0
    enqueued_at: float = Field(default_factory=time.time)
    trigger_id: str | None = None
    trigger_type: str | None = None
    source: dict[str, Any] = Field(default_factory=dict)  # source coordinates (topic/partition/offset ...)
    item_ids: list[str] = Field(default_factory=list)  # stream items a batch covers
    redrive_of: str | None = None
    destination_of: str | None = None  # set when this invocation delivers another's destination event
    trace: dict[str, str] = Field(default_factory=dict)  # W3C traceparent/tracestate (invoker.tracing)
    trace_links: list[str] = Field(default_factory=list)  # traceparents of a batch's other records

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_defaults=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> InvocationEnvelope:
        return cls.model_validate_json(data)


class StreamItem(BaseModel):
    """One source record on its way to a batch (see :mod:`invoker.batching`)."""

    v: int = 1
    item_id: str
    trigger_id: str
    trigger_type: str
    function_urn: str
    data: Any  # the per-record fragment the trigger type's assembler understands
    size: int  # bytes the fragment adds to the event
    source: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = 100
    window_ms: int = 500
    created: float = Field(default_factory=time.time)
    trace: dict[str, str] = Field(default_factory=dict)  # the source record's W3C trace context


class DestinationTask(BaseModel):
    """A destination event waiting to be delivered to OBS/SMN/DIS."""

    v: int = 1
    request_id: str  # of the invocation whose outcome this reports
    function_urn: str
    kind: str  # DestinationKind value
    param: dict[str, Any]
    event: str  # DestinationEvent JSON text
    attempt: int = 0
    created: float = Field(default_factory=time.time)
