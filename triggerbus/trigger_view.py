"""How operators see a trigger: its state, last error, lag or position — shared by the CLI
(which reads the REST API's trigger documents) and the web console (which builds the same
documents with ``TriggerManager.to_api``).

A trigger document is ``{trigger_id, trigger_type_code, trigger_status, event_data, ...,
state?}``; ``state`` is the connector's ``status()`` plus the stored ``last_error``. Connectors
may report ``state["lag"] = {"records", "seconds", "oldest_age_s"}`` (each a number or None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNKNOWN = "unknown"
LAG_FIELDS = (("records", "records", ""), ("seconds", "behind", " s"), ("oldest_age_s", "oldest", " s"))


@dataclass(frozen=True, slots=True)
class TriggerState:
    state: str  # ACTIVE | DISABLED | ERROR
    last_error: str
    since: str  # when the last error happened ("" when there is none)


def trigger_state(trigger: dict[str, Any]) -> TriggerState:
    """DISABLED when disabled; ERROR when active with a last error; else ACTIVE."""
    state = trigger.get("state") or {}
    error = str(state.get("last_error") or "")
    since = str(state.get("last_error_time") or "")
    if trigger.get("trigger_status") == "DISABLED":
        return TriggerState("DISABLED", error, since if error else "")
    if error:
        return TriggerState("ERROR", error, since)
    return TriggerState("ACTIVE", "", "")


def _number(value: Any, suffix: str = "") -> str:
    if value is None:
        return UNKNOWN
    if isinstance(value, float):
        return f"{value:.1f}{suffix}"
    return f"{value}{suffix}"


def lag_parts(state: dict[str, Any]) -> list[tuple[str, str]] | None:
    """``[(label, value)]`` of the connector's lag report, "unknown" for values it does not know;
    None when the connector reports no lag at all."""
    lag = state.get("lag")
    if not isinstance(lag, dict):
        return None
    return [(label, _number(lag.get(key), suffix)) for key, label, suffix in LAG_FIELDS]


def lag_text(state: dict[str, Any]) -> str:
    parts = lag_parts(state)
    if parts is None:
        return ""
    return ", ".join(f"{label} {value}" for label, value in parts)


def _partition_text(p: dict[str, Any]) -> str:
    where = f"{p.get('topic', '')}[{p.get('partition', '')}]"
    lag = p.get("lag")
    return f"{where} at {_number(p.get('committed'))}/{_number(p.get('end_offset'))} lag {_number(lag)}"


def _shard_text(s: dict[str, Any]) -> str:
    return f"{s.get('shard_id') or s.get('shard') or s.get('name') or 'shard'} at {_number(s.get('committed'))}"


def position_parts(state: dict[str, Any]) -> list[str]:
    """Where the trigger is at its source, for connectors without a lag report (or in addition):
    next cron fire, Kafka offsets and lag, DIS/LTS sequence numbers, Mongo resume token age."""
    parts: list[str] = []
    if state.get("next_fire_time"):
        parts.append(f"next fire {state['next_fire_time']}")
    for p in state.get("partitions") or []:
        if isinstance(p, dict):
            parts.append(_partition_text(p))
    for s in state.get("shards") or []:
        if isinstance(s, dict):
            parts.append(_shard_text(s))
    if "resume_token_age_s" in state:
        parts.append(f"resume token age {_number(state['resume_token_age_s'], ' s')}")
    if state.get("consumer_state"):
        parts.append(f"consumer {state['consumer_state']}")
    return parts


def trigger_detail(trigger: dict[str, Any]) -> str:
    """What the trigger listens to: schedule, API URL, topics, stream ..."""
    data = trigger.get("event_data") or {}
    for key in ("schedule", "invoke_url", "path", "topic_urn", "stream_name", "collection_name", "exchange"):
        if data.get(key):
            return str(data[key])
    topics = data.get("topic_ids") or data.get("topics")
    if topics:
        return ",".join(str(t) for t in topics) if isinstance(topics, list) else str(topics)
    return str(data.get("name") or "")
