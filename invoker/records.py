"""Async-status records: what the invoker writes, what operators query.

The invoker only needs the :class:`RecordStore` protocol; the embedded SQLite
store and (later) the MongoDB store implement it. A record moves
WAIT -> RUNNING -> (WAIT on retry ->) SUCCESS | FAIL | DISCARD and never leaves a
terminal status (except through an explicit redrive, which makes a *new* record).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from schemas.records import AsyncInvocation, AsyncStatus

PAYLOAD_KEEP_BYTES = 256 * 1024  # the async request body limit: payloads are kept whole
RESPONSE_KEEP_BYTES = 64 * 1024


@dataclass(slots=True)
class Attempt:
    n: int
    start: float
    end: float | None = None
    status: str = "RUNNING"  # RUNNING | SUCCESS | FAIL
    error_code: int = 0
    error_message: str = ""
    duration_ms: float = 0.0
    memory_mb: float = 0.0
    logs: str = ""


@dataclass(slots=True)
class Record:
    request_id: str
    function_urn: str
    status: AsyncStatus = AsyncStatus.WAIT
    created: float = field(default_factory=time.time)
    error_code: int = 0
    error_message: str = ""
    start_time: float | None = None
    end_time: float | None = None
    attempts: int = 0
    next_attempt_at: float | None = None
    trigger_id: str | None = None
    trigger_type: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    condition: str = ""
    redrive_of: str | None = None
    payload: bytes = b""
    response: bytes = b""
    destination: dict[str, Any] = field(default_factory=dict)  # {kind, target, status, error}
    cancel_requested: bool = False

    def to_api(self) -> AsyncInvocation:
        return AsyncInvocation(
            request_id=self.request_id,
            status=self.status,
            error_message=self.error_message,
            error_code=self.error_code,
            start_time=fg_time(self.start_time),
            end_time=fg_time(self.end_time),
            func_urn=self.function_urn,
            created_time=fg_time(self.created),
            attempts=self.attempts,
            next_attempt_time=fg_time(self.next_attempt_at),
            trigger_id=self.trigger_id or "",
            trigger_type=self.trigger_type or "",
            source=self.source,
            condition=self.condition,
            redrive_of=self.redrive_of or "",
        )


def fg_time(ts: float | None) -> str:
    """FunctionGraph record time format: ``YYYY-MM-DDTHH:MM:SS`` in UTC ("" when unset)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True, slots=True)
class RecordState:
    """The few fields the invoker checks before each attempt (no payloads read)."""

    status: AsyncStatus
    attempts: int
    error_message: str


@dataclass(slots=True)
class RecordQuery:
    function_urn: str
    status: AsyncStatus | None = None
    request_id: str | None = None
    begin: float | None = None  # on ``created``
    end: float | None = None
    trigger_id: str | None = None
    source: dict[str, str] = field(default_factory=dict)  # exact match on source coordinates
    redrive_of: str | None = None  # the redrives of one record
    marker: int = 0
    limit: int = 100


class RecordStore(Protocol):
    async def insert_record(self, record: Record) -> bool:
        """Insert if absent; False when a record with that request id exists already."""
        ...

    async def get_record(self, request_id: str) -> Record | None: ...

    async def record_state(self, request_id: str) -> RecordState | None: ...

    async def update_record(self, request_id: str, **fields: Any) -> None:
        """Set the given fields (names as in :class:`Record`)."""
        ...

    async def start_attempt(self, request_id: str, attempt: Attempt) -> bool:
        """Mark the record RUNNING and append the attempt, atomically.

        False (and nothing written) when the record is no longer WAIT/RUNNING, e.g. it
        was canceled while the event waited for a free instance.
        """
        ...

    async def cancel_waiting(self, request_id: str, message: str) -> bool:
        """Turn a WAIT record into DISCARD (canceled); False if it is not WAIT any more."""
        ...

    async def finish_attempt(self, request_id: str, attempt: Attempt, **record_fields: Any) -> None:
        """Close the attempt and update the record (status, errors, times), atomically."""
        ...

    async def list_attempts(self, request_id: str) -> list[Attempt]: ...

    async def list_records(self, query: RecordQuery) -> tuple[list[Record], int]:
        """A page of records (newest first) and the total count matching the query."""
        ...
