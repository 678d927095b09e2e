"""What a connector is: subscribe to a source, map records to functions, hand them over.

A connector implements three things for the trigger types it serves:

* ``validate`` — semantic checks beyond the schema (a cron expression parses, an
  exchange is fanout, a path is free); raise :class:`schemas.errors.FSSError`.
* ``activate`` / ``deactivate`` — start or stop consuming for one trigger.
* it emits events through :class:`ConnectorContext`: ``enqueue`` for one event
  per source record (timers, notifications) or ``publish_items`` for stream records
  that the invoker batches.

Connectors never call functions directly except for synchronous ingress (APIG),
through ``ctx.invocations``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from aiohttp import web

from bus.base import Bus
from invoker.completion import CompletionHub
from invoker.ingest import Ingest
from invoker.runtime.base import InvocationResult
from schemas.errors import bad_request


@dataclass(slots=True)
class TriggerSpec:
    """A trigger as a connector sees it: decrypted event_data, validated."""

    trigger_id: str
    function_urn: str  # qualified
    trigger_type: str
    event_data: dict[str, Any]
    created: float
    status: str = "ACTIVE"
    extra: dict[str, Any] = field(default_factory=dict)


class Invocations(Protocol):
    """The invocation paths connectors may use (implemented by the service)."""

    async def invoke_sync(
        self,
        function_urn: str,
        payload: bytes,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> InvocationResult: ...

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
    ) -> str: ...


class TriggerStateStore(Protocol):
    """Persistence connectors share: leases and timer bookkeeping."""

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool: ...

    async def release_lease(self, name: str, owner: str) -> None: ...

    async def get_timer_state(self, trigger_id: str) -> tuple[float | None, float | None]: ...

    async def set_timer_next(self, trigger_id: str, next_fire: float | None) -> None: ...

    async def claim_timer_fire(
        self, trigger_id: str, scheduled: float, request_id: str, owner: str, next_fire: float | None
    ) -> bool: ...

    async def unsent_timer_fires(self, since: float) -> list[tuple[str, float, str]]:
        """Fires claimed after ``since`` whose invocation never got a record (crash between)."""
        ...

    async def get_checkpoint(self, trigger_id: str, name: str) -> Any: ...

    async def put_checkpoint(self, trigger_id: str, name: str, value: Any) -> None: ...

    async def audit(self, action: str, resource: str, detail: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class ConnectorContext:
    bus: Bus
    state: TriggerStateStore
    invocations: Invocations
    completion: CompletionHub
    ingest: Ingest
    region: str
    default_tz: str
    node_id: str  # identifies this service process (lease owner)
    public_url: str = ""  # base URL clients reach this service at
    auth_token: str = ""  # the management token (APIG "IAM" auth accepts it)
    options: dict[str, Any] = field(default_factory=dict)  # connector settings of this service


class Connector(abc.ABC):
    trigger_types: ClassVar[tuple[str, ...]]
    # Paths under these prefixes skip the management token: the connector's ingress
    # applies its own auth (APIG's per-API auth, for instance).
    public_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: ConnectorContext) -> None:
        self.ctx = ctx

    async def start(self) -> None:
        """Called once when the service starts (before triggers are activated)."""
        return None

    async def close(self) -> None:
        """Stop everything; the service is shutting down."""
        return None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """HTTP endpoints of this connector (an ingress, a source's own API); none by default.

        They sit beside the management API and need its token, except under
        :attr:`public_prefixes`.
        """
        return None

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        """Check a trigger before it is saved; return response-only fields to add to event_data."""
        return {}

    @abc.abstractmethod
    async def activate(self, trigger: TriggerSpec) -> None: ...

    @abc.abstractmethod
    async def deactivate(self, trigger_id: str) -> None: ...

    async def deleted(self, trigger: TriggerSpec) -> None:
        """The trigger was deleted for good (after :meth:`deactivate` and the store delete):
        release what it owned at the source (a queue, a subscription). Never raises."""
        return None

    def status(self, trigger_id: str) -> dict[str, Any]:
        """Operator-facing state of one active trigger (position, next fire, last error)."""
        return {}

    async def get_checkpoint(self, trigger: TriggerSpec) -> dict[str, Any]:
        """Where the trigger reads its source (offsets, resume token ...)."""
        raise bad_request(f"{trigger.trigger_type} triggers have no checkpoint")

    async def set_checkpoint(self, trigger: TriggerSpec, body: dict[str, Any]) -> dict[str, Any]:
        """Move the source position of a DISABLED trigger; returns the new checkpoint."""
        raise bad_request(f"{trigger.trigger_type} triggers have no checkpoint to set")
