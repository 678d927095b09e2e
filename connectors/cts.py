"""CTS triggers: audit traces invoke functions, one async invocation per matching trace.

Traces come from Triggerbus itself (every management API operation, see
:mod:`triggerbus.api.traces`) and from outside (``POST /v3/{project_id}/traces``). A CTS
trigger's ``event_data.operations`` lists ``"Service:resourceA;resourceB:op1;op2"``
entries (contract §2.3, e.g. ``"FunctionGraph:Trigger:createTrigger;deleteTrigger"``); a
trace matches an entry when its ``service_type`` equals the service, its
``resource_type`` is one of the resource types and its ``trace_name`` one of the
operations — all exact, case-sensitive comparisons, as the console's pickers produce.
Every matching trace is delivered, whatever its ``trace_status`` (a failed operation is
worth an alert too); the function gets ``{"cts": <trace>}`` (contract §1.13).

Delivery guarantee — at least once, for every trace stored while a matching trigger was
active:

1. :meth:`CTSConnector.record` computes the matching triggers and stores the trace
   *together with that list* (``targets``) in one write;
2. then enqueues one invocation per target (request id derived from trace id + trigger
   id) and clears the list.

A crash between 1 and 2 leaves the list in the store; a replay pass (shortly after start,
then every ``cts_replay_interval_s``) enqueues what is still owed. A replay after a
partial enqueue re-sends the same request ids, which the invoker runs only once when the
first copy has finished. A trace stored while no matching trigger was active is not
delivered later to triggers created afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from bus.aio import stop_tasks
from connectors.base import Connector, ConnectorContext, TriggerSpec
from schemas.errors import bad_request
from schemas.events.cts import CTSEvent
from triggerbus.store.traces import TraceEntry

log = logging.getLogger(__name__)

_DELIVERY_NAMESPACE = uuid.UUID("c2a5b0f4-7a5e-4b9b-8d0c-6e2f9a41b7d3")
REPLAY_BATCH = 500


def delivery_request_id(trace_id: str, trigger_id: str) -> str:
    """One trace delivered to one trigger is always the same request."""
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{trace_id}/{trigger_id}"))


@dataclass(frozen=True, slots=True)
class OperationFilter:
    """One ``Service:resourceA;resourceB:op1;op2`` entry."""

    service_type: str
    resource_types: frozenset[str]
    trace_names: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> OperationFilter:
        parts = text.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{text!r} must look like 'Service:resourceA;resourceB:operation1;operation2'")
        service, resources, operations = (p.strip() for p in parts)
        resource_types = frozenset(r.strip() for r in resources.split(";") if r.strip())
        trace_names = frozenset(o.strip() for o in operations.split(";") if o.strip())
        if not service or not resource_types or not trace_names:
            raise ValueError(f"{text!r} needs a service, at least one resource type and one operation")
        return cls(service, resource_types, trace_names)

    def matches(self, trace: dict[str, Any]) -> bool:
        return (
            trace.get("service_type") == self.service_type
            and trace.get("resource_type") in self.resource_types
            and trace.get("trace_name") in self.trace_names
        )


def parse_operations(operations: Any) -> tuple[OperationFilter, ...]:
    """The filters of ``event_data.operations``; FSS.0400 naming the bad entry otherwise."""
    if not isinstance(operations, list) or not operations:
        raise bad_request("event_data.operations: must list at least one 'Service:resourceType:operation' entry")
    filters = []
    for index, text in enumerate(operations):
        try:
            filters.append(OperationFilter.parse(str(text)))
        except ValueError as exc:
            raise bad_request(f"event_data.operations[{index}]: {exc}") from None
    return tuple(filters)


def build_event(trace: dict[str, Any]) -> str:
    """The event a CTS trigger delivers: ``{"cts": <trace>}`` in the documented form."""
    return CTSEvent.model_validate({"cts": trace}).dump_json()


@runtime_checkable
class TraceStore(Protocol):
    """What the CTS connector needs from the service's store."""

    async def insert_trace(self, entry: TraceEntry) -> bool: ...

    async def pending_traces(self, recorded_before: float, limit: int) -> list[TraceEntry]: ...

    async def trace_delivered(self, trace_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Subscription:
    trigger_id: str
    function_urn: str
    filters: tuple[OperationFilter, ...]

    def matches(self, trace: dict[str, Any]) -> bool:
        return any(f.matches(trace) for f in self.filters)


class CTSConnector(Connector):
    trigger_types: ClassVar[tuple[str, ...]] = ("CTS",)

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        if not isinstance(ctx.state, TraceStore):
            raise TypeError("the CTS connector needs the service store (traces)")
        self.store: TraceStore = ctx.state
        self.replay_interval_s = float(ctx.options.get("cts_replay_interval_s", 30.0))
        # Traces younger than this are left to the process recording them right now.
        self.replay_grace_s = float(ctx.options.get("cts_replay_grace_s", 10.0))
        self._subscriptions: dict[str, _Subscription] = {}
        self._delivered: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.recorded = 0
        self.replayed = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._replay_loop(), name="cts-replay")

    async def close(self) -> None:
        await stop_tasks(self._task)
        self._task = None

    # -- triggers ---------------------------------------------------------------------------------------

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        parse_operations(trigger.event_data.get("operations"))
        return {}

    async def activate(self, trigger: TriggerSpec) -> None:
        filters = parse_operations(trigger.event_data.get("operations"))
        self._subscriptions[trigger.trigger_id] = _Subscription(trigger.trigger_id, trigger.function_urn, filters)

    async def deactivate(self, trigger_id: str) -> None:
        self._subscriptions.pop(trigger_id, None)

    def status(self, trigger_id: str) -> dict[str, Any]:
        subscription = self._subscriptions.get(trigger_id)
        if subscription is None:
            return {}
        return {"operations": len(subscription.filters), "delivered": self._delivered.get(trigger_id, 0)}

    def targets_for(self, trace: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {"trigger_id": s.trigger_id, "function_urn": s.function_urn}
            for s in self._subscriptions.values()
            if s.matches(trace)
        ]

    # -- recording and delivery ----------------------------------------------------------------------------

    async def record(self, entry: TraceEntry) -> bool:
        """Store ``entry`` durably, then invoke the CTS triggers it matches.

        False if a trace with its id was stored before (nothing is delivered again).
        """
        entry.targets = self.targets_for(entry.trace)
        if not await self.store.insert_trace(entry):
            return False
        self.recorded += 1
        if entry.targets:
            try:
                await self._deliver(entry)
            except Exception:
                log.exception("delivering trace %s to CTS triggers failed; the replay pass retries", entry.trace_id)
        return True

    async def _deliver(self, entry: TraceEntry) -> None:
        event = build_event(entry.trace)
        trace = entry.trace
        for target in entry.targets:
            await self.ctx.invocations.enqueue(
                target["function_urn"],
                event,
                trigger_id=target["trigger_id"],
                trigger_type="CTS",
                source={
                    "trace_id": entry.trace_id,
                    "trace_name": str(trace.get("trace_name", "")),
                    "service_type": str(trace.get("service_type", "")),
                    "resource_type": str(trace.get("resource_type", "")),
                },
                request_id=delivery_request_id(entry.trace_id, target["trigger_id"]),
                enqueued_at=time.time(),
            )
            self._delivered[target["trigger_id"]] = self._delivered.get(target["trigger_id"], 0) + 1
        await self.store.trace_delivered(entry.trace_id)

    async def replay_pending(self) -> int:
        """Enqueue the deliveries traces still owe (a crash came between storing and enqueuing)."""
        replayed = 0
        while True:
            entries = await self.store.pending_traces(time.time() - self.replay_grace_s, REPLAY_BATCH)
            for entry in entries:
                log.warning(
                    "delivering trace %s to %d CTS trigger(s) after a crash", entry.trace_id, len(entry.targets)
                )
                await self._deliver(entry)
            replayed += len(entries)
            if len(entries) < REPLAY_BATCH:
                break
        self.replayed += replayed
        return replayed

    async def _replay_loop(self) -> None:
        await asyncio.sleep(min(1.0, self.replay_interval_s))
        while True:
            try:
                await self.replay_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replaying owed CTS deliveries failed; trying again later")
            await asyncio.sleep(self.replay_interval_s)
