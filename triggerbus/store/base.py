"""The store contract: what the service keeps, whichever database keeps it.

Two implementations: :class:`triggerbus.store.sqlite.SQLiteStore` (embedded default,
one process) and :class:`triggerbus.store.mongo.MongoStore` (several processes share
it). Every method is safe to call from several processes at once where the backend
allows it (MongoDB): conditional updates, not read-modify-write, carry the rules.
"""

from __future__ import annotations

from typing import Any, Protocol

from invoker.records import Attempt, Record, RecordQuery, RecordState
from schemas.async_config import AsyncInvokeConfig
from triggerbus.store.models import (
    QueueDepth,
    StoredDISStream,
    StoredFunction,
    StoredLogGroup,
    StoredLogStream,
    StoredTopic,
    StoredTrigger,
)
from triggerbus.store.stats import StatsBucket
from triggerbus.store.traces import TraceEntry, TraceQuery


class Store(Protocol):
    async def start(self) -> None:
        """Create tables/collections and indexes (idempotent)."""
        ...

    async def close(self) -> None: ...

    # functions
    async def put_function(self, fn: StoredFunction, *, create: bool) -> bool:
        """create=True inserts only if absent (False if it exists); create=False replaces."""
        ...

    async def get_function(self, urn: str) -> StoredFunction | None: ...

    async def list_functions(self, project_id: str, marker: int, limit: int) -> tuple[list[StoredFunction], int]: ...

    async def delete_function(self, urn: str) -> bool:
        """Also deletes the function's async config and triggers."""
        ...

    async def put_code(self, digest: str, data: bytes) -> None:
        """Keep a code package (zip) by its sha256, so every process can extract it."""
        ...

    async def get_code(self, digest: str) -> bytes | None: ...

    # triggers
    async def put_trigger(self, trigger: StoredTrigger) -> None: ...

    async def get_trigger(self, trigger_id: str) -> StoredTrigger | None: ...

    async def list_triggers(
        self, function_urn: str | None = None, trigger_type: str | None = None
    ) -> list[StoredTrigger]: ...

    async def delete_trigger(self, trigger_id: str) -> bool:
        """Also deletes the trigger's timer state and checkpoints."""
        ...

    # async configs (keyed by the unqualified function URN)
    async def put_async_config(self, config: AsyncInvokeConfig, unqualified_urn: str) -> None: ...

    async def get_async_config(self, unqualified_urn: str) -> AsyncInvokeConfig | None: ...

    async def all_async_configs(self) -> dict[str, AsyncInvokeConfig]: ...

    async def delete_async_config(self, unqualified_urn: str) -> bool: ...

    # records (invoker.records.RecordStore)
    async def insert_record(self, record: Record) -> bool: ...

    async def get_record(self, request_id: str) -> Record | None: ...

    async def record_state(self, request_id: str) -> RecordState | None: ...

    async def update_record(self, request_id: str, **fields: Any) -> None: ...

    async def start_attempt(self, request_id: str, attempt: Attempt) -> bool: ...

    async def cancel_waiting(self, request_id: str, message: str) -> bool: ...

    async def finish_attempt(self, request_id: str, attempt: Attempt, **record_fields: Any) -> None: ...

    async def list_attempts(self, request_id: str) -> list[Attempt]: ...

    async def list_records(self, query: RecordQuery) -> tuple[list[Record], int]: ...

    async def attempt_stats(self, function_urn: str, begin: float, end: float, bucket_s: float) -> list[StatsBucket]:
        """A function's attempts started in ``[begin, end)`` per bucket of ``bucket_s`` seconds:
        invocations, errors, throttles and duration percentiles (see triggerbus.store.stats)."""
        ...

    async def queue_depths(self) -> list[QueueDepth]:
        """Per function with any WAIT or RUNNING record: how many of each, and the oldest WAIT's
        acceptance time (the async queue, for metrics)."""
        ...

    async def purge_records(self, older_than: float) -> int:
        """Retention: delete terminal records created before ``older_than``; how many went."""
        ...

    # leases and timer bookkeeping (connectors.base.TriggerStateStore)
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool: ...

    async def release_lease(self, name: str, owner: str) -> None: ...

    async def get_timer_state(self, trigger_id: str) -> tuple[float | None, float | None]: ...

    async def set_timer_next(self, trigger_id: str, next_fire: float | None) -> None: ...

    async def claim_timer_fire(
        self, trigger_id: str, scheduled: float, request_id: str, owner: str, next_fire: float | None
    ) -> bool: ...

    async def unsent_timer_fires(self, since: float) -> list[tuple[str, float, str]]: ...

    async def purge_timer_fires(self, older_than: float) -> None: ...

    # connector checkpoints
    async def get_checkpoint(self, trigger_id: str, name: str) -> Any: ...

    async def put_checkpoint(self, trigger_id: str, name: str, value: Any) -> None: ...

    async def delete_checkpoints(self, trigger_id: str) -> None: ...

    # audit = CTS traces (triggerbus.store.traces)
    async def audit(self, action: str, resource: str, detail: dict[str, Any]) -> None:
        """Record an action as a CTS trace (handed to the running API request, if any)."""
        ...

    async def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest traces first as ``{ts, action, resource, detail, trace_id}``."""
        ...

    async def insert_trace(self, entry: TraceEntry) -> bool:
        """Store a trace with its detail and owed deliveries; False if its trace id exists."""
        ...

    async def list_traces(self, query: TraceQuery) -> list[TraceEntry]:
        """Newest first (time, then insertion order); raises UnknownMarker for a bad ``after``."""
        ...

    async def pending_traces(self, recorded_before: float, limit: int) -> list[TraceEntry]:
        """Traces stored before ``recorded_before`` that still owe CTS-trigger deliveries."""
        ...

    async def trace_delivered(self, trace_id: str) -> None:
        """Clear a trace's owed deliveries (they are on the bus now)."""
        ...

    # SMN topics (subscriptions are SMN triggers)
    async def put_topic(self, topic: StoredTopic) -> bool:
        """Insert if absent; False if a topic with that URN exists."""
        ...

    async def get_topic(self, topic_urn: str) -> StoredTopic | None: ...

    async def list_topics(self, project_id: str, offset: int, limit: int) -> tuple[list[StoredTopic], int]:
        """A page of a project's topics, oldest first, and the project's topic count."""
        ...

    async def delete_topic(self, topic_urn: str) -> bool: ...

    # DIS streams (records live in Redis; this is their metadata)
    async def put_dis_stream(self, stream: StoredDISStream) -> bool:
        """Insert if absent; False if the project has a stream of that name."""
        ...

    async def get_dis_stream(self, project_id: str, stream_name: str) -> StoredDISStream | None: ...

    async def list_dis_streams(self, project_id: str, offset: int, limit: int) -> tuple[list[StoredDISStream], int]:
        """A page of a project's streams, oldest first, and the project's stream count."""
        ...

    async def delete_dis_stream(self, project_id: str, stream_name: str) -> bool: ...

    # LTS log groups and log streams (logs live in Redis; this is their metadata)
    async def put_log_group(self, group: StoredLogGroup) -> bool:
        """Insert if absent; False if the project has a group of that name."""
        ...

    async def get_log_group(self, log_group_id: str) -> StoredLogGroup | None: ...

    async def list_log_groups(self, project_id: str) -> list[StoredLogGroup]:
        """A project's log groups, oldest first."""
        ...

    async def delete_log_group(self, log_group_id: str) -> bool:
        """Also deletes the group's log streams."""
        ...

    async def put_log_stream(self, stream: StoredLogStream) -> bool:
        """Insert if absent; False if the group has a stream of that name."""
        ...

    async def get_log_stream(self, log_stream_id: str) -> StoredLogStream | None: ...

    async def list_log_streams(self, log_group_id: str) -> list[StoredLogStream]:
        """A group's log streams, oldest first."""
        ...

    async def delete_log_stream(self, log_stream_id: str) -> bool: ...
