"""Trigger lifecycle: validate, store (secrets encrypted), activate in its connector, audit."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from connectors.base import Connector, TriggerSpec
from schemas.errors import FSSError, bad_request, conflict, not_found, validation_failed
from schemas.triggers import (
    SECRET_FIELDS,
    TriggerStatus,
    TriggerType,
    check_status,
    initial_status,
    parse_event_data,
    parse_trigger_type,
    redact_event_data,
)
from triggerbus.registry import FunctionRegistry
from triggerbus.secrets import SecretBox
from triggerbus.store.base import Store
from triggerbus.store.models import StoredFunction, StoredTrigger

log = logging.getLogger(__name__)


class CreateTriggerRequest(BaseModel):
    trigger_type_code: str
    trigger_status: str | None = None
    event_type_code: str | None = None
    event_data: Any = None


class UpdateTriggerRequest(BaseModel):
    trigger_status: str | None = None
    event_data: dict[str, Any] | None = None


# Fields FunctionGraph lets an update change (DIS polling knobs) plus the ones whose
# change is harmless to apply in place.
UPDATABLE_FIELDS: dict[str, frozenset[str]] = {
    "DIS": frozenset({"is_serial", "max_fetch_bytes", "polling_interval", "polling_unit", "batch_size"}),
    "TIMER": frozenset({"schedule", "schedule_type", "user_event"}),
}


def fg_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class RunningTrigger:
    """A trigger active in this process (what health, metrics and the console look at)."""

    trigger_id: str
    trigger_type: str
    function_urn: str
    updated: float  # of the stored trigger that was activated: a newer one means it changed


class TriggerManager:
    def __init__(self, store: Store, secrets: SecretBox, registry: FunctionRegistry) -> None:
        self.store = store
        self.secrets = secrets
        self.registry = registry
        self.connectors: dict[str, Connector] = {}
        self._active: dict[str, RunningTrigger] = {}

    def running(self) -> list[RunningTrigger]:
        """The triggers this process runs, from memory: no store read, no secrets decrypted."""
        return list(self._active.values())

    def register(self, connector: Connector) -> None:
        for trigger_type in connector.trigger_types:
            self.connectors[trigger_type] = connector

    def connector_for(self, trigger_type: str) -> Connector:
        connector = self.connectors.get(trigger_type)
        if connector is None:
            served = ", ".join(sorted(self.connectors))
            raise bad_request(
                f"trigger_type_code: {trigger_type} triggers are not served by this Triggerbus yet (served: {served})"
            )
        return connector

    def _spec(self, trigger: StoredTrigger) -> TriggerSpec:
        secret = SECRET_FIELDS.get(TriggerType(trigger.trigger_type), frozenset())
        return TriggerSpec(
            trigger_id=trigger.trigger_id,
            function_urn=trigger.function_urn,
            trigger_type=trigger.trigger_type,
            event_data=self.secrets.decrypt_fields(trigger.event_data, secret),
            created=trigger.created,
            status=trigger.status,
        )

    def _validated(self, trigger_type: TriggerType, data: Any) -> dict[str, Any]:
        model = parse_event_data(trigger_type.value, data)
        return model.model_dump(mode="json", by_alias=True, exclude_none=True)

    async def _existing(self, connector: Connector) -> list[TriggerSpec]:
        """What ``connector.validate`` checks a trigger against: the stored triggers of its types, if it asks.

        Reading (and decrypting) every stored trigger made each create O(triggers): 10,000 TIMER
        triggers took minutes to create (bench/timer_triggers.py).
        """
        if not connector.validates_against_existing:
            return []
        found: list[TriggerSpec] = []
        for trigger_type in connector.trigger_types:
            found.extend(self._spec(t) for t in await self.store.list_triggers(trigger_type=trigger_type))
        return found

    # -- API operations ---------------------------------------------------------------------------

    async def create(self, fn: StoredFunction, body: Any) -> StoredTrigger:
        try:
            req = CreateTriggerRequest.model_validate(body)
        except ValidationError as exc:
            raise validation_failed(exc) from None
        trigger_type = parse_trigger_type(req.trigger_type_code)
        event_data = self._validated(trigger_type, req.event_data)  # config errors first, even for unserved types
        connector = self.connector_for(trigger_type.value)
        if fn.runtime == "http" and trigger_type.value not in ("APIG", "DEDICATEDGATEWAY", "APIC"):
            raise bad_request("HTTP functions can only have APIG/APIC triggers, as on FunctionGraph")
        status = initial_status(trigger_type.value, req.trigger_status)
        now = time.time()
        trigger_id = str(uuid.uuid4())
        spec = TriggerSpec(trigger_id, fn.qualified_urn, trigger_type.value, event_data, now, status.value)
        extra = await connector.validate(spec, existing=await self._existing(connector))
        spec.event_data = {**event_data, **extra}
        secret = SECRET_FIELDS.get(trigger_type, frozenset())
        stored = StoredTrigger(
            trigger_id=trigger_id,
            function_urn=fn.qualified_urn,
            trigger_type=trigger_type.value,
            status=status.value,
            event_type_code=req.event_type_code or "",
            event_data=self.secrets.encrypt_fields(spec.event_data, secret),
            created=now,
            updated=now,
        )
        await self.store.put_trigger(stored)
        await self.store.audit(
            "createTrigger",
            trigger_id,
            {"type": trigger_type.value, "function": fn.qualified_urn, "status": status.value},
        )
        if status is TriggerStatus.ACTIVE:
            await self._activate(stored, connector, spec)
        return stored

    async def _activate(self, stored: StoredTrigger, connector: Connector, spec: TriggerSpec) -> None:
        self._active[stored.trigger_id] = RunningTrigger(
            stored.trigger_id, stored.trigger_type, stored.function_urn, stored.updated
        )
        try:
            await connector.activate(spec)
        except FSSError:
            raise
        except Exception as exc:
            log.exception("activating trigger %s failed", stored.trigger_id)
            stored.last_error = f"{type(exc).__name__}: {exc}"
            stored.last_error_at = time.time()
            await self.store.put_trigger(stored)

    async def get(self, fn: StoredFunction, trigger_type: str, trigger_id: str) -> StoredTrigger:
        trigger = await self.store.get_trigger(trigger_id)
        if trigger is None or trigger.function_urn != fn.qualified_urn or trigger.trigger_type != trigger_type.upper():
            raise not_found(f"trigger {trigger_id} ({trigger_type}) of function {fn.name} does not exist")
        return trigger

    async def list(self, fn: StoredFunction) -> list[StoredTrigger]:
        return await self.store.list_triggers(function_urn=fn.qualified_urn)

    async def update(self, fn: StoredFunction, trigger_type: str, trigger_id: str, body: Any) -> StoredTrigger:
        trigger = await self.get(fn, trigger_type, trigger_id)
        try:
            req = UpdateTriggerRequest.model_validate(body)
        except ValidationError as exc:
            raise validation_failed(exc) from None
        connector = self.connector_for(trigger.trigger_type)
        spec = self._spec(trigger)
        new_status = trigger.status
        if req.trigger_status is not None:
            new_status = check_status(trigger.trigger_type, req.trigger_status).value
        data_changed = False
        if req.event_data:
            allowed = UPDATABLE_FIELDS.get(trigger.trigger_type, frozenset())
            refused = sorted(set(req.event_data) - allowed)
            if refused:
                raise bad_request(
                    f"event_data: {', '.join(refused)} cannot be changed on a {trigger.trigger_type} trigger "
                    f"(updatable: {', '.join(sorted(allowed)) or 'none'}); delete and recreate it instead"
                )
            merged = {**spec.event_data, **req.event_data}
            spec.event_data = self._validated(TriggerType(trigger.trigger_type), merged)
            await connector.validate(spec, existing=await self._existing(connector))
            data_changed = True
        secret = SECRET_FIELDS.get(TriggerType(trigger.trigger_type), frozenset())
        old_status = trigger.status
        trigger.status = new_status
        trigger.event_data = self.secrets.encrypt_fields(spec.event_data, secret)
        trigger.updated = time.time()
        await self.store.put_trigger(trigger)
        if old_status != new_status:
            action = "enableTrigger" if new_status == TriggerStatus.ACTIVE.value else "disableTrigger"
            await self.store.audit(action, trigger_id, {"type": trigger.trigger_type})
        if data_changed:
            await self.store.audit("updateTrigger", trigger_id, {"fields": sorted(req.event_data or {})})
        spec.status = new_status
        if new_status == TriggerStatus.DISABLED.value and old_status != new_status:
            await self._deactivate(trigger_id)
        elif new_status == TriggerStatus.ACTIVE.value and (old_status != new_status or data_changed):
            if data_changed and old_status == new_status:
                await self._deactivate(trigger_id)
            await self._activate(trigger, connector, spec)
        return trigger

    async def get_checkpoint(self, fn: StoredFunction, trigger_type: str, trigger_id: str) -> dict[str, Any]:
        trigger = await self.get(fn, trigger_type, trigger_id)
        return await self.connector_for(trigger.trigger_type).get_checkpoint(self._spec(trigger))

    async def set_checkpoint(self, fn: StoredFunction, trigger_type: str, trigger_id: str, body: Any) -> dict[str, Any]:
        """Move where a trigger reads its source; only while it is DISABLED, and audited."""
        trigger = await self.get(fn, trigger_type, trigger_id)
        if not isinstance(body, dict):
            raise bad_request("request body must be a JSON object")
        if trigger.status != TriggerStatus.DISABLED.value:
            raise conflict(
                f"trigger {trigger_id} is {trigger.status}: disable it before moving its checkpoint, "
                "then enable it again to resume from there"
            )
        before = await self.get_checkpoint(fn, trigger_type, trigger_id)
        after = await self.connector_for(trigger.trigger_type).set_checkpoint(self._spec(trigger), body)
        await self.store.audit("setTriggerCheckpoint", trigger_id, {"request": body, "before": before, "after": after})
        return after

    async def _deactivate(self, trigger_id: str) -> None:
        active = self._active.pop(trigger_id, None)
        connector = self.connectors.get(active.trigger_type) if active else None
        if connector is not None:
            await connector.deactivate(trigger_id)

    async def delete(self, trigger: StoredTrigger) -> None:
        await self._deactivate(trigger.trigger_id)
        await self.store.delete_trigger(trigger.trigger_id)
        await self.store.audit("deleteTrigger", trigger.trigger_id, {"type": trigger.trigger_type})
        connector = self.connectors.get(trigger.trigger_type)
        if connector is not None:
            try:
                await connector.deleted(self._spec(trigger))
            except Exception:  # the trigger is gone either way; the connector logs what it left behind
                log.exception("cleaning up after deleting trigger %s failed", trigger.trigger_id)

    async def delete_all(self, fn: StoredFunction) -> int:
        triggers = await self.list(fn)
        for trigger in triggers:
            await self.delete(trigger)
        return len(triggers)

    # -- service lifecycle ------------------------------------------------------------------------------

    async def activate_all(self) -> int:
        count = 0
        for trigger in await self.store.list_triggers():
            if trigger.status != TriggerStatus.ACTIVE.value:
                continue
            connector = self.connectors.get(trigger.trigger_type)
            if connector is None:
                log.warning(
                    "trigger %s: no connector for %s in this service",
                    trigger.trigger_id,
                    trigger.trigger_type,
                )
                continue
            await self._activate(trigger, connector, self._spec(trigger))
            count += 1
        return count

    async def reconcile(self) -> None:
        """Make this process run exactly the ACTIVE triggers of the (shared) store.

        Triggers created, changed, disabled or deleted through another process are
        picked up here; a change shows as a new ``updated`` time.
        """
        stored = {t.trigger_id: t for t in await self.store.list_triggers()}
        for trigger_id, trigger in stored.items():
            wanted = trigger.status == TriggerStatus.ACTIVE.value and trigger.trigger_type in self.connectors
            running = self._active.get(trigger_id)
            if wanted and (running is None or running.updated != trigger.updated):
                if running is not None:
                    await self._deactivate(trigger_id)
                await self._activate(trigger, self.connectors[trigger.trigger_type], self._spec(trigger))
            elif not wanted and running is not None:
                await self._deactivate(trigger_id)
        for trigger_id in [t for t in self._active if t not in stored]:
            await self._deactivate(trigger_id)

    def to_api(self, trigger: StoredTrigger) -> dict[str, Any]:
        secret = SECRET_FIELDS.get(TriggerType(trigger.trigger_type), frozenset())
        event_data = redact_event_data(trigger.trigger_type, self.secrets.decrypt_fields(trigger.event_data, secret))
        if "app_code" in event_data:
            event_data["app_code"] = "******"
        body: dict[str, Any] = {
            "trigger_id": trigger.trigger_id,
            "trigger_type_code": trigger.trigger_type,
            "trigger_status": trigger.status,
            "event_type_code": trigger.event_type_code,
            "event_data": event_data,
            "last_updated_time": fg_time(trigger.updated),
            "created_time": fg_time(trigger.created),
        }
        connector = self.connectors.get(trigger.trigger_type)
        state = connector.state(trigger.trigger_id) if connector else {}
        if trigger.last_error:
            state = {
                **state,
                "last_error": trigger.last_error,
                "last_error_time": fg_time(trigger.last_error_at or 0),
            }
        if state:
            body["state"] = state
        return body
