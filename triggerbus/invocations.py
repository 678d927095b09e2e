"""Sync and async invocation entry points shared by the REST API and the connectors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from bus.base import Bus, Outgoing
from invoker import tracing
from invoker.concurrency import ConcurrencyLimiter
from invoker.dispatcher import Dispatcher
from invoker.envelope import INVOCATIONS_TOPIC, InvocationEnvelope, new_request_id
from invoker.observer import NOOP, Observer
from invoker.records import Record
from invoker.runtime.base import InvocationRequest, InvocationResult
from schemas.errors import bad_request, not_found, throttled
from schemas.records import AsyncStatus
from schemas.urn import FunctionUrn
from triggerbus.registry import FunctionRegistry
from triggerbus.store.base import Store

CANCELED_MESSAGE = "function invocation canceled"
REDRIVABLE = frozenset({AsyncStatus.FAIL, AsyncStatus.DISCARD})


class InvocationService:
    def __init__(
        self,
        bus: Bus,
        store: Store,
        registry: FunctionRegistry,
        dispatcher: Dispatcher,
        limiter: ConcurrencyLimiter,
        *,
        observer: Observer = NOOP,
    ) -> None:
        self.bus = bus
        self.store = store
        self.registry = registry
        self.dispatcher = dispatcher
        self.limiter = limiter
        self.observer = observer
        self.sync_count = 0
        self.accepted = 0
        self._shared_log = getattr(bus, "db", None) is not None and getattr(bus, "db", None) is getattr(
            store, "db", None
        )

    async def invoke_sync(
        self,
        function_urn: str,
        payload: bytes,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> InvocationResult:
        resolved = await self.registry.resolve(function_urn)
        if resolved is None:
            raise not_found(f"function {function_urn} does not exist")
        spec = resolved.spec
        if not self.limiter.try_acquire(spec.urn, spec.max_instances):
            self.observer.invocation_rejected(spec.urn, "concurrency_limit")
            raise throttled(
                f"function {spec.name} is at its limit of {spec.max_instances} concurrent instances; retry later"
            )
        try:
            self.sync_count += 1
            return await self.dispatcher.invoke(
                spec,
                InvocationRequest(
                    request_id or new_request_id(),
                    payload,
                    invoke_type="sync",
                    timeout_s=timeout_s,
                    trace=dict(trace or {}),
                ),
            )
        finally:
            self.limiter.release(spec.urn)

    async def enqueue(
        self,
        function_urn: str,
        payload: str,
        *,
        trigger_id: str | None = None,
        trigger_type: str | None = None,
        source: dict[str, Any] | None = None,
        request_id: str | None = None,
        enqueued_at: float | None = None,
        redrive_of: str | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> str:
        """Durably accept an async invocation; returns its request id.

        The bus append is the durable acceptance. The WAIT record written next is a
        courtesy for immediate queries: if the process dies in between, the invoker
        creates the record when it picks the event up.

        ``trace`` is the W3C context the event came with (:mod:`invoker.tracing`); it
        travels in the envelope (through a *receive* span when tracing) to the function.
        """
        urn = str(FunctionUrn.parse(function_urn))
        request_id = request_id or new_request_id()
        # Where the event entered: a (short) receive span, whose context the envelope carries.
        with tracing.span(
            f"receive {FunctionUrn.parse(urn).name}",
            trace,
            kind="producer",
            attributes={"faas.invocation_id": request_id, "faas.trigger": trigger_type or "API"},
        ) as received:
            pass
        envelope = InvocationEnvelope(
            request_id=request_id or new_request_id(),
            function_urn=urn,
            payload=payload,
            enqueued_at=enqueued_at if enqueued_at is not None else time.time(),
            trigger_id=trigger_id,
            trigger_type=trigger_type,
            source=source or {},
            redrive_of=redrive_of,
            trace=received.carrier,
        )
        record = Record(
            request_id=envelope.request_id,
            function_urn=urn,
            created=envelope.enqueued_at,
            trigger_id=trigger_id,
            trigger_type=trigger_type,
            source=envelope.source,
            redrive_of=redrive_of,
            payload=payload.encode(),
        )
        message = Outgoing(INVOCATIONS_TOPIC, envelope.to_bytes(), key=urn)
        if self._shared_log:
            # One SQLite writer serves both, first come first served: the record can only
            # land in the same transaction as the bus append or a later one, never before
            # it. Both share one group commit instead of waiting for two.
            published, inserted = await asyncio.gather(
                self.bus.publish(message), self.store.insert_record(record), return_exceptions=True
            )
            if isinstance(published, BaseException):
                if inserted is True:  # never accepted: do not leave a WAIT record behind
                    await self.store.update_record(
                        record.request_id,
                        status=AsyncStatus.DISCARD,
                        error_code=5000,
                        error_message=f"not accepted: {published}",
                    )
                raise published
            if isinstance(inserted, BaseException):
                raise inserted
        else:
            await self.bus.publish(message)
            await self.store.insert_record(record)
        self.accepted += 1
        if trigger_id and trigger_type:
            self.observer.trigger_events(trigger_id, trigger_type, urn)
        return envelope.request_id

    async def redrive(self, function_urn: str, request_id: str) -> str:
        """Run a FAIL or DISCARD async invocation again: its original payload, trigger and source
        coordinates under a new request id whose record has ``redrive_of`` = the old one.

        The old record stays as it was (terminal records never change); the new one follows the
        function's async policy from the start (retries, max age counted from now).
        """
        record = await self.store.get_record(request_id)
        if (
            record is None
            or FunctionUrn.parse(record.function_urn).unqualified != FunctionUrn.parse(function_urn).unqualified
        ):
            raise not_found(f"async invocation {request_id} of {function_urn} does not exist")
        if record.status not in REDRIVABLE:
            raise bad_request(
                f"async invocation {request_id} is {record.status.value}: only FAIL or DISCARD invocations "
                "can be redriven"
            )
        payload = record.payload.decode("utf-8", errors="replace")
        try:
            json.loads(payload or "{}")
        except ValueError:
            raise bad_request(
                f"async invocation {request_id} cannot be redriven: its payload was not kept whole "
                f"({len(record.payload)} bytes stored)"
            ) from None
        new_id = await self.enqueue(
            record.function_urn,
            payload or "{}",
            trigger_id=record.trigger_id,
            trigger_type=record.trigger_type,
            source=record.source,
            redrive_of=record.request_id,
        )
        await self.store.audit(
            "redriveAsyncInvocation", record.function_urn, {"request_id": new_id, "redrive_of": record.request_id}
        )
        return new_id

    async def cancel(self, function_urn: str, request_id: str) -> AsyncStatus:
        """Stop a WAIT or RUNNING async invocation (it ends DISCARD, error 4208)."""
        record = await self.store.get_record(request_id)
        if (
            record is None
            or FunctionUrn.parse(record.function_urn).unqualified != FunctionUrn.parse(function_urn).unqualified
        ):
            raise bad_request(f"Invalid RequestId: no async invocation {request_id!r} of this function")
        if record.status.terminal:
            raise bad_request(f"async invocation {request_id} already finished with status {record.status.value}")
        if await self.store.cancel_waiting(request_id, CANCELED_MESSAGE):
            return AsyncStatus.DISCARD
        await self.store.update_record(request_id, cancel_requested=True)
        if await self.dispatcher.cancel(request_id):
            return AsyncStatus.DISCARD
        # Neither waiting nor running here right now (between two steps): try once more.
        if await self.store.cancel_waiting(request_id, CANCELED_MESSAGE):
            return AsyncStatus.DISCARD
        current = await self.store.get_record(request_id)
        return current.status if current else AsyncStatus.DISCARD
