"""The event an async destination receives (FunctionGraph "异步调用目标的事件内容")."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from schemas.base import FGModel


class RequestContext(FGModel):
    request_id: str
    function_urn: str
    condition: str = ""  # "" on success; error category otherwise (e.g. UnhandledInvocationError)
    approximate_invoke_count: int = 0


class ResponseContext(FGModel):
    # The doc table says statusCode; the documented JSON and real captures say status_code.
    status_code: int = Field(200, validation_alias=AliasChoices("status_code", "statusCode"))
    function_error: str = ""


class DestinationEvent(FGModel):
    timestamp: str  # RFC 3339 with milliseconds
    request_context: RequestContext
    request_payload: str  # the original event, as a string
    response_context: ResponseContext
    response_payload: str  # the function's raw return (or error document), as a string
