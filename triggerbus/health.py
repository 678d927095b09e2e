"""What ``GET /health`` reports: the API is up, and whether every active trigger reaches its source.

``{"status": "ok" | "degraded", "region", "timezone", "triggers": {<trigger_id>: {"type", "state",
"error", "since"}}}``: a trigger is listed while its connector says it cannot reach its source
(a Kafka/RabbitMQ/DDS/DIS consumer backing off or reconnecting, an MQTT session holder that is
not connected, an OBS reconciliation scan that failed), with the connector's last error and when
it was recorded (``since``). ``"status"`` is ``"degraded"`` while any trigger is listed.

The answer stays 200 when degraded: the API and everything already accepted still work, so a
load balancer must not take the process out of service because a broker is down. Monitoring that
wants to page on an unreachable source asks ``/health?strict=1``, which answers 503 when degraded.
"""

from __future__ import annotations

from typing import Any

# consumer_state values (kafka.py, rabbitmq.py, dds.py, redis_streams.py) that mean "not reading".
UNREACHABLE_STATES = frozenset({"backoff", "reconnecting", "connecting", "history_lost"})


def source_problem(state: dict[str, Any]) -> str | None:
    """Why a trigger with connector ``state`` (its ``Connector.state()``) cannot read its source, or None."""
    consumer_state = state.get("consumer_state")
    if consumer_state in UNREACHABLE_STATES:
        return str(state.get("last_error") or consumer_state)
    if state.get("holds_session") and not state.get("connected"):  # IOTDA: this process owns the session
        return str(state.get("last_error") or "not connected to the MQTT broker")
    reconcile = state.get("reconcile")
    if isinstance(reconcile, dict) and reconcile.get("last_error"):  # OBS: the bucket scan failed
        return f"reconciliation scan failed: {reconcile['last_error']}"
    return None


async def report(service: Any) -> dict[str, Any]:
    """The ``/health`` body for ``service`` (a :class:`triggerbus.service.Service`)."""
    problems: dict[str, dict[str, Any]] = {}
    connectors = service.triggers.connectors
    for trigger in service.triggers.running():  # from memory: /health is public and polled often
        connector = connectors.get(trigger.trigger_type)
        if connector is None:
            continue
        state = connector.state(trigger.trigger_id)
        problem = source_problem(state) if state else None
        if problem is not None:
            problems[trigger.trigger_id] = {
                "type": trigger.trigger_type,
                "state": state.get("consumer_state") or ("disconnected" if "connected" in state else "error"),
                "error": problem,
                "since": state.get("last_error_time"),
            }
    return {
        "status": "degraded" if problems else "ok",
        "region": service.settings.region,
        "timezone": service.settings.timezone,
        "triggers": problems,
    }
