"""On-success / on-failure destinations.

* The destination event is FunctionGraph's documented shape (:class:`DestinationEvent`).
* A FunctionGraph destination is another async invocation: publishing its envelope
  *is* the delivery, durable at once.
* Other destinations (OBS, SMN, later DIS) become a :class:`DestinationTask` on
  the bus; :class:`DestinationWorker` delivers it with durable, backed-off retries,
  so an S3 outage delays a notification instead of losing it.
* Cycles (A on_success -> B -> A) are refused when a config is saved, and a kind
  with no sink in this service is refused then too: never a silent drop later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from bus.aio import Background, stop_tasks
from bus.base import Bus, Message, Outgoing
from invoker.envelope import (
    DESTINATIONS_TOPIC,
    INVOCATIONS_TOPIC,
    DestinationTask,
    InvocationEnvelope,
    new_request_id,
)
from invoker.observer import NOOP, Observer
from invoker.records import RecordStore
from invoker.retry import RetryPolicy
from invoker.runtime.base import ErrorCategory, InvocationResult
from schemas.async_config import AsyncInvokeConfig, DestinationConfig, DestinationKind
from schemas.destination import DestinationEvent, RequestContext, ResponseContext
from schemas.errors import bad_request
from schemas.urn import FunctionUrn

log = logging.getLogger(__name__)

CONDITIONS: dict[ErrorCategory, str] = {
    ErrorCategory.CODE_EXCEPTION: "UnhandledInvocationError",
    ErrorCategory.LOAD_FAILED: "FunctionLoadError",
    ErrorCategory.INIT_FAILED: "FunctionInitError",
    ErrorCategory.TIMEOUT: "InvocationTimeout",
    ErrorCategory.MEMORY_EXCEEDED: "MemoryLimitExceeded",
    ErrorCategory.CRASHED: "RuntimeExited",
    ErrorCategory.INVALID_RESULT: "InvalidResult",
    ErrorCategory.THROTTLED: "Throttled",
    ErrorCategory.SYSTEM_ERROR: "SystemError",
    ErrorCategory.CANCELED: "Canceled",
}
EVENT_AGE_EXCEEDED = "EventAgeExceeded"
MAX_DELIVERY_ATTEMPTS = 12  # with the default backoff, about half an hour of trying


class DestinationSink(Protocol):
    """Delivers a destination event to one kind of target (OBS bucket, SMN topic ...)."""

    async def deliver(self, task: DestinationTask) -> str:
        """Deliver; return a short description of where it went. Raise on failure."""
        ...


def rfc3339_ms(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_event(
    *,
    request_id: str,
    function_urn: str,
    payload: str,
    result: InvocationResult | None,
    attempts: int,
    condition: str = "",
    now: float | None = None,
) -> DestinationEvent:
    """The documented destination event for one finished (or discarded) invocation."""
    if result is None:  # discarded before it could run
        status_code, function_error, response = 500, condition, ""
    elif result.ok:
        status_code, function_error = 200, ""
        response = _response_text(result.body)
    else:
        assert result.error is not None
        status_code = 500
        # Real FunctionGraph captures leave function_error empty for code exceptions and
        # put the error document in response_payload; other causes carry a message.
        function_error = "" if result.error.category is ErrorCategory.CODE_EXCEPTION else result.error.message
        response = _response_text(result.body)
    return DestinationEvent(
        timestamp=rfc3339_ms(now if now is not None else time.time()),
        request_context=RequestContext(
            request_id=request_id,
            function_urn=function_urn,
            condition=condition,
            approximate_invoke_count=attempts,
        ),
        request_payload=payload,
        response_context=ResponseContext(status_code=status_code, function_error=function_error),
        response_payload=response,
    )


def _response_text(body: bytes) -> str:
    """The function's raw return as a string: a returned string stays itself, anything else is JSON."""
    text = body.decode("utf-8", errors="replace")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, str) else text


def plan_delivery(
    destination: DestinationConfig, event: DestinationEvent, *, source_request_id: str, function_urn: str
) -> tuple[Outgoing, dict[str, Any]]:
    """The bus message that delivers ``event``, and the record's destination summary."""
    param = destination.parsed_param()
    event_json = event.dump_json()
    if destination.destination is DestinationKind.FUNCTIONGRAPH:
        target = str(FunctionUrn.parse(param.func_urn))
        envelope = InvocationEnvelope(
            request_id=new_request_id(),
            function_urn=target,
            payload=event_json,
            destination_of=source_request_id,
        )
        summary = {
            "kind": destination.destination.value,
            "target": target,
            "status": "delivered",
            "request_id": envelope.request_id,
        }
        return Outgoing(INVOCATIONS_TOPIC, envelope.to_bytes(), key=target), summary
    task = DestinationTask(
        request_id=source_request_id,
        function_urn=function_urn,
        kind=destination.destination.value,
        param=param.model_dump(),
        event=event_json,
    )
    summary = {"kind": destination.destination.value, "target": param.model_dump(), "status": "pending"}
    return Outgoing(DESTINATIONS_TOPIC, task.model_dump_json().encode(), key=source_request_id), summary


# -- config-time checks ---------------------------------------------------------------------------


def function_targets(config: AsyncInvokeConfig) -> list[tuple[str, str]]:
    """(condition, unqualified target URN) for each FunctionGraph destination of a config."""
    out = []
    for condition, dest in (
        ("on_success", config.destination_config.on_success),
        ("on_failure", config.destination_config.on_failure),
    ):
        if dest is not None and dest.destination is DestinationKind.FUNCTIONGRAPH:
            out.append((condition, FunctionUrn.parse(dest.parsed_param().func_urn).unqualified))
    return out


def check_no_cycle(function_urn: str, config: AsyncInvokeConfig, others: Mapping[str, AsyncInvokeConfig]) -> None:
    """Refuse a config whose FunctionGraph destinations lead back to ``function_urn``.

    ``others`` maps unqualified URNs to their saved configs (the edited one is replaced).
    """
    start = FunctionUrn.parse(function_urn).unqualified
    graph: dict[str, list[tuple[str, str]]] = {urn: function_targets(cfg) for urn, cfg in others.items()}
    graph[start] = function_targets(config)

    path: list[str] = [start]

    def visit(node: str, seen: set[str]) -> list[str] | None:
        for condition, target in graph.get(node, []):
            if target == start:
                return [*path, f"{target} ({condition})"]
            if target in seen:
                continue
            seen.add(target)
            path.append(f"{target} ({condition})")
            found = visit(target, seen)
            if found:
                return found
            path.pop()
        return None

    cycle = visit(start, {start})
    if cycle:
        raise bad_request(
            "destination_config would create an invocation cycle: "
            + " -> ".join(cycle)
            + "; destinations must not lead back to the function"
        )


def check_supported(config: AsyncInvokeConfig, available: set[DestinationKind]) -> None:
    for condition, dest in (
        ("on_success", config.destination_config.on_success),
        ("on_failure", config.destination_config.on_failure),
    ):
        if dest is not None and dest.destination not in available:
            hint = {
                DestinationKind.OBS: "start the service with an S3 endpoint (--obs-endpoint) to use OBS destinations",
                DestinationKind.SMN: "SMN destinations need the SMN connector (connectors.smn) in this service",
                DestinationKind.DIS: "DIS destinations need the DIS publisher, which this version does not have yet",
            }.get(dest.destination, "")
            raise bad_request(
                f"destination_config.{condition}.destination: {dest.destination.value} is not available "
                f"in this service; {hint}"
            )


# -- delivery of non-function destinations -------------------------------------------------------------


class DestinationWorker:
    """Consumes destination tasks and delivers them through the registered sinks."""

    def __init__(
        self,
        bus: Bus,
        records: RecordStore,
        sinks: Mapping[DestinationKind, DestinationSink],
        *,
        retry: RetryPolicy | None = None,
        group: str = "destinations",
        observer: Observer = NOOP,
    ) -> None:
        self.bus = bus
        self.records = records
        self.sinks = dict(sinks)
        self.retry = retry or RetryPolicy()
        self.group = group
        self._task: asyncio.Task[None] | None = None
        self._inflight = Background()
        self.delivered = 0
        self.failed = 0
        self.observer = observer

    async def start(self) -> None:
        self._sub = self.bus.subscribe(self.group, [DESTINATIONS_TOPIC], max_in_flight=256)
        self._task = asyncio.create_task(self._loop(), name="destination-worker")

    async def close(self) -> None:
        await stop_tasks(self._task)
        await self._inflight.stop()
        await self._sub.close()

    async def _loop(self) -> None:
        while True:
            messages = await self._sub.fetch(64, 1.0)
            for message in messages:
                self._inflight.spawn(self._handle(message))

    async def _handle(self, message: Message) -> None:
        try:
            task = DestinationTask.model_validate_json(message.value)
        except ValueError:
            log.error(
                "unreadable destination task at %s/%s; moved to dead letters",
                message.partition,
                message.offset,
            )
            await self.bus.publish(Outgoing("tb.deadletter", message.value, headers={"from": DESTINATIONS_TOPIC}))
            self._sub.ack(message)
            return
        try:
            await self._deliver(task)
        except Exception:
            log.exception("destination bookkeeping failed for %s; will be redelivered", task.request_id)
            return  # not acked: the partition waits and a restart redelivers
        self._sub.ack(message)

    async def _deliver(self, task: DestinationTask) -> None:
        kind = DestinationKind(task.kind)
        sink = self.sinks.get(kind)
        try:
            if sink is None:
                raise RuntimeError(f"no {kind.value} destination is configured in this service")
            where = await sink.deliver(task)
        except Exception as exc:  # the sink failed: retry later or give up
            attempts = task.attempt + 1
            record = await self.records.get_record(task.request_id)
            summary = dict(record.destination) if record else {}
            if attempts < MAX_DELIVERY_ATTEMPTS and sink is not None:
                retry = task.model_copy(update={"attempt": attempts})
                due = time.time() + self.retry.delay(attempts)
                await self.bus.publish(
                    Outgoing(
                        DESTINATIONS_TOPIC,
                        retry.model_dump_json().encode(),
                        key=task.request_id,
                        deliver_at=due,
                    )
                )
                summary.update(status="retrying", error=f"{type(exc).__name__}: {exc}", attempts=attempts)
                self.observer.destination_result(task.function_urn, kind.value, "retrying")
            else:
                self.failed += 1
                self.observer.destination_result(task.function_urn, kind.value, "failed")
                log.error("giving up delivering %s destination of %s: %s", kind.value, task.request_id, exc)
                summary.update(status="failed", error=f"{type(exc).__name__}: {exc}", attempts=attempts)
            if record is not None:
                await self.records.update_record(task.request_id, destination=summary)
            return
        self.delivered += 1
        self.observer.destination_result(task.function_urn, kind.value, "delivered")
        record = await self.records.get_record(task.request_id)
        if record is not None:
            summary = dict(record.destination)
            summary.update(status="delivered", location=where, attempts=task.attempt + 1)
            summary.pop("error", None)
            await self.records.update_record(task.request_id, destination=summary)
