"""What a connector is: subscribe to a source, map records to functions, hand them over.

A connector implements three things for the trigger types it serves:

* ``validate`` — semantic checks beyond the schema (a cron expression parses, an
  exchange is fanout, a path is free); raise :class:`schemas.errors.FSSError`.
* ``activate`` / ``deactivate`` — start or stop consuming for one trigger.
* it emits events through :class:`ConnectorContext`: ``enqueue`` for one event
  per source record (timers, notifications) or ``publish_items`` for stream records
  that the invoker batches.
* optionally ``lag`` — how far behind its source a trigger is (:class:`Lag`); unknown
  unless the connector can measure it. The service samples it for the metrics, and every
  connector's ``status()`` then carries the last sample under ``"lag"``.

Connectors never call functions directly except for synchronous ingress (APIG),
through ``ctx.invocations``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, overload

from aiohttp import web

from bus.base import Bus
from invoker.completion import CompletionHub
from invoker.ingest import Ingest
from invoker.observer import NOOP, Observer
from invoker.runtime.base import InvocationResult
from schemas.errors import bad_request

_log = logging.getLogger(__name__)


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
        trace: Mapping[str, str] | None = None,
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
        trace: Mapping[str, str] | None = None,
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
    observer: Observer = NOOP  # events in, dropped/filtered (metrics)


@dataclass(frozen=True, slots=True)
class Lag:
    """How far a trigger is behind its source; each part None when it cannot be known.

    ``records``: source records not yet finished (after the committed position);
    ``seconds``: how far the oldest unfinished record is behind the newest one (or, for timers,
    how late the last fire was); ``oldest_age_s``: how long ago the oldest unfinished record
    was written. Unknown is never reported as 0.
    """

    records: int | None = None
    seconds: float | None = None
    oldest_age_s: float | None = None

    @property
    def known(self) -> bool:
        return any(v is not None for v in (self.records, self.seconds, self.oldest_age_s))

    def as_dict(self) -> dict[str, int | float | None]:
        return {"records": self.records, "seconds": self.seconds, "oldest_age_s": self.oldest_age_s}

    @classmethod
    def caught_up(cls) -> Lag:
        return cls(0, 0.0, 0.0)

    @classmethod
    def behind(cls, records: int | None, oldest_ts: float | None, newest_ts: float | None) -> Lag:
        """From a record count and the (epoch) times of the oldest unfinished and newest records."""
        if records == 0:
            return cls.caught_up()
        seconds = None if oldest_ts is None or newest_ts is None else max(0.0, newest_ts - oldest_ts)
        age = None if oldest_ts is None else max(0.0, time.time() - oldest_ts)
        return cls(records, seconds, age)


UNKNOWN_LAG = Lag()


class Connector(abc.ABC):
    trigger_types: ClassVar[tuple[str, ...]]
    # Paths under these prefixes skip the management token: the connector's ingress
    # applies its own auth (APIG's per-API auth, for instance).
    public_prefixes: ClassVar[tuple[str, ...]] = ()
    # True when ``validate`` reads ``existing`` (the triggers of this connector's types); the
    # others get an empty list, so creating a trigger does not read every stored trigger.
    validates_against_existing: ClassVar[bool] = False

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

    def state(self, trigger_id: str) -> dict[str, Any]:
        """What operators see of an active trigger: :meth:`status` plus its last lag sample."""
        body = self.status(trigger_id)
        if body and "lag" not in body:
            body = {**body, "lag": self.last_lag(trigger_id).as_dict()}
        return body

    async def lag(self, trigger_id: str) -> Lag:
        """How far the trigger is behind its source, measured now; unknown unless overridden.

        Called by the service's sampler with a time limit; may raise (counted as unknown).
        """
        return UNKNOWN_LAG

    def last_lag(self, trigger_id: str) -> Lag:
        """The last sample of :meth:`lag` (unknown before the first one)."""
        samples: dict[str, Lag] = self.__dict__.get("_lag_samples", {})
        return samples.get(trigger_id, UNKNOWN_LAG)

    async def sample_lag(self, trigger_id: str, timeout_s: float) -> Lag:
        """Measure :meth:`lag` within ``timeout_s`` and keep it; a failure or timeout is unknown."""
        try:
            async with asyncio.timeout(timeout_s):
                lag = await self.lag(trigger_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            lag = UNKNOWN_LAG
        if any(isinstance(v, float) and not math.isfinite(v) for v in (lag.seconds, lag.oldest_age_s)):
            lag = UNKNOWN_LAG
        self.__dict__.setdefault("_lag_samples", {})[trigger_id] = lag
        return lag

    def forget_lag(self, trigger_ids: set[str]) -> None:
        """Drop the samples of triggers not in ``trigger_ids`` (deactivated, deleted)."""
        samples: dict[str, Lag] = self.__dict__.get("_lag_samples", {})
        for gone in set(samples) - trigger_ids:
            del samples[gone]

    async def get_checkpoint(self, trigger: TriggerSpec) -> dict[str, Any]:
        """Where the trigger reads its source (offsets, resume token ...)."""
        raise bad_request(f"{trigger.trigger_type} triggers have no checkpoint")

    async def set_checkpoint(self, trigger: TriggerSpec, body: dict[str, Any]) -> dict[str, Any]:
        """Move the source position of a DISABLED trigger; returns the new checkpoint."""
        raise bad_request(f"{trigger.trigger_type} triggers have no checkpoint to set")


class TriggerRunner(Protocol):
    """What reads one active trigger's source in a :class:`RunnerConnector`."""

    async def stop(self, drain_s: float) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def lag(self) -> Lag: ...


R = TypeVar("R", bound=TriggerRunner)


class RunnerConnector(Connector, Generic[R]):
    """A connector that reads each trigger active in this process with a runner of its own.

    It keeps the runners, stops them on deactivate and at shutdown (giving unfinished batches
    :attr:`drain_s`), and answers status and lag from them, so each pull connector only says
    how a runner is made and started.
    """

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        self._runners: dict[str, R] = {}

    @property
    def drain_s(self) -> float:
        """How long a stopping runner lets its unfinished batches finish before it commits."""
        return 3.0

    async def replace_runner(self, trigger_id: str, runner: R) -> None:
        """Stop the trigger's previous runner (a config change, a re-enable) and keep ``runner``."""
        old = self._runners.pop(trigger_id, None)
        if old is not None:
            await old.stop(self.drain_s)
        self._runners[trigger_id] = runner

    async def deactivate(self, trigger_id: str) -> None:
        runner = self._runners.pop(trigger_id, None)
        if runner is not None:
            await runner.stop(self.drain_s)

    async def close(self) -> None:
        runners = list(self._runners.items())
        self._runners.clear()
        results = await asyncio.gather(*(r.stop(self.drain_s) for _, r in runners), return_exceptions=True)
        for (trigger_id, _), result in zip(runners, results, strict=True):
            if isinstance(result, BaseException):
                _log.error("stopping %s trigger %s failed: %r", type(self).__name__, trigger_id, result)

    def status(self, trigger_id: str) -> dict[str, Any]:
        runner = self._runners.get(trigger_id)
        return runner.status() if runner is not None else {}

    async def lag(self, trigger_id: str) -> Lag:
        runner = self._runners.get(trigger_id)
        return UNKNOWN_LAG if runner is None else await runner.lag()


@overload
def int_option(data: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int: ...


@overload
def int_option(data: Mapping[str, Any], name: str, default: None, low: int, high: int) -> int | None: ...


def int_option(data: Mapping[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    """An optional integer of ``event_data`` within [low, high]; a clear FSS error names the field."""
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"event_data.{name}: must be an integer between {low} and {high} (got {value!r})")
    if not low <= value <= high:
        raise bad_request(f"event_data.{name}: must be between {low} and {high} (got {value})")
    return value
