"""Async invocation status records as the FunctionGraph API returns them."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import Field

from schemas.base import FGModel


class AsyncStatus(enum.StrEnum):
    WAIT = "WAIT"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAIL = "FAIL"
    DISCARD = "DISCARD"

    @property
    def terminal(self) -> bool:
        return self in (AsyncStatus.SUCCESS, AsyncStatus.FAIL, AsyncStatus.DISCARD)


class AsyncInvocation(FGModel):
    """One record. The first six fields are FunctionGraph's; the rest are Triggerbus extensions
    clients that only know the FunctionGraph shape simply ignore."""

    request_id: str
    status: AsyncStatus
    error_message: str = ""
    error_code: int = 0
    start_time: str = ""  # YYYY-MM-DDTHH:MM:SS, UTC
    end_time: str = ""
    func_urn: str = ""
    created_time: str = ""
    attempts: int = 0
    next_attempt_time: str = ""
    trigger_id: str = ""
    trigger_type: str = ""
    source: dict[str, Any] = Field(default_factory=dict)
    condition: str = ""
    redrive_of: str = ""


class ListAsyncInvocationsResponse(FGModel):
    invocations: list[AsyncInvocation]
    count: int
    next_marker: int


class StopAsyncInvocationRequest(FGModel):
    request_id: str = Field(min_length=1, max_length=64)
    type: str | None = None  # "force" | "recursive" (accepted for compatibility)
