"""What the invoker and the connectors report as they work, for metrics (``triggerbus.metrics``).

The invoker core never imports a metrics library: it calls an :class:`Observer` at a few
points (an invocation ran, was refused, was retried, finished; a destination was delivered;
a trigger took in, dropped or batched events). The default, :data:`NOOP`, does nothing, so
components built without one (unit tests, tools) behave exactly as before. Implementations
must be cheap and must never raise.
"""

from __future__ import annotations

from typing import Protocol

from invoker.runtime.base import InvocationResult
from schemas.records import AsyncStatus


class Observer(Protocol):
    # -- functions -------------------------------------------------------------------------------

    def invocation_started(self, function_urn: str, invoke_type: str) -> None:
        """A run of the function begins (``invoke_type`` "sync" or "async")."""
        ...

    def invocation_finished(self, function_urn: str, invoke_type: str, result: InvocationResult | None) -> None:
        """The run ended; ``result`` carries duration and error cause (None: abandoned, e.g. shutdown)."""
        ...

    def invocation_rejected(self, function_urn: str, reason: str) -> None:
        """An invocation was refused without running (throttled at the instance limit ...)."""
        ...

    def retry_scheduled(self, function_urn: str) -> None:
        """A failed async attempt will run again (delayed)."""
        ...

    def async_finished(self, function_urn: str, status: AsyncStatus) -> None:
        """An async invocation reached its terminal status (SUCCESS, FAIL, DISCARD)."""
        ...

    def destination_result(self, function_urn: str, kind: str, outcome: str) -> None:
        """A destination delivery: ``outcome`` "delivered", "retrying" (attempt failed) or "failed"."""
        ...

    # -- triggers ---------------------------------------------------------------------------------

    def trigger_events(self, trigger_id: str, trigger_type: str, function_urn: str, count: int = 1) -> None:
        """Source records/events a trigger took in (before batching)."""
        ...

    def trigger_dropped(
        self, trigger_id: str, trigger_type: str, function_urn: str, reason: str, count: int = 1
    ) -> None:
        """Source events that will not be invoked: filtered out or refused (``reason`` is a short slug)."""
        ...

    def trigger_batch(self, trigger_id: str, trigger_type: str, function_urn: str, items: int) -> None:
        """A batch of ``items`` stream records became one invocation."""
        ...


class NoopObserver:
    """Observes nothing."""

    def invocation_started(self, function_urn: str, invoke_type: str) -> None:
        return None

    def invocation_finished(self, function_urn: str, invoke_type: str, result: InvocationResult | None) -> None:
        return None

    def invocation_rejected(self, function_urn: str, reason: str) -> None:
        return None

    def retry_scheduled(self, function_urn: str) -> None:
        return None

    def async_finished(self, function_urn: str, status: AsyncStatus) -> None:
        return None

    def destination_result(self, function_urn: str, kind: str, outcome: str) -> None:
        return None

    def trigger_events(self, trigger_id: str, trigger_type: str, function_urn: str, count: int = 1) -> None:
        return None

    def trigger_dropped(
        self, trigger_id: str, trigger_type: str, function_urn: str, reason: str, count: int = 1
    ) -> None:
        return None

    def trigger_batch(self, trigger_id: str, trigger_type: str, function_urn: str, items: int) -> None:
        return None


NOOP: Observer = NoopObserver()

# ``reason`` slugs for records refused by error code (see invoker.ingest and connectors.dds).
DROP_REASONS: dict[int, str] = {
    4413: "too_large",  # over the event limit: Kafka/RabbitMQ 6 MB, DIS/DDS record too large
    4400: "malformed",  # could not be decoded or assembled into the event
    4410: "history_lost",  # DDS change stream history gone (a gap)
    4408: "expired",  # retention passed before the record was read
}


def drop_reason(code: int) -> str:
    return DROP_REASONS.get(code, f"code_{code}")
