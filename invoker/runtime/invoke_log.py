"""FunctionGraph's per-invocation log framing, shared by every runtime and the service log.

``Start invoke request '<id>', version: <v>`` ... ``Finish invoke request '<id>'(invoke
Success), duration: <d>ms, billing duration: <b>ms, memory used: <m>MB`` (``invoke Failed``
when the invocation failed) — tools that parse FunctionGraph logs key on these exact lines.
The function's log has them with a timestamp; the service log has the same text
(:func:`start_text`, :func:`finish_text`) as the message of a structured line.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


def log_timestamp(ts: float | None = None) -> str:
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def start_text(request_id: str, version: str) -> str:
    return f"Start invoke request '{request_id}', version: {version}"


def finish_text(request_id: str, duration_ms: float, memory_used_mb: float, ok: bool) -> str:
    billing = max(1, math.ceil(duration_ms))
    outcome = "Success" if ok else "Failed"
    return (
        f"Finish invoke request '{request_id}'(invoke {outcome}), duration: {duration_ms:.3f}ms, "
        f"billing duration: {billing}ms, memory used: {memory_used_mb:.3f}MB"
    )


def start_line(request_id: str, version: str, ts: float | None = None) -> str:
    return f"{log_timestamp(ts)} {start_text(request_id, version)}"


def finish_line(request_id: str, duration_ms: float, memory_used_mb: float, ok: bool, ts: float | None = None) -> str:
    return f"{log_timestamp(ts)} {finish_text(request_id, duration_ms, memory_used_mb, ok)}"
