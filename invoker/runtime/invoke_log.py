"""FunctionGraph's per-invocation log framing, shared by every runtime.

``Start invoke request '<id>', version: <v>`` ... ``Finish invoke request '<id>',
duration: <d>ms, billing duration: <b>ms, memory used: <m>MB`` — tools that parse
FunctionGraph logs key on these exact lines.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


def log_timestamp(ts: float | None = None) -> str:
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def start_line(request_id: str, version: str, ts: float | None = None) -> str:
    return f"{log_timestamp(ts)} Start invoke request '{request_id}', version: {version}"


def finish_line(request_id: str, duration_ms: float, memory_used_mb: float, ts: float | None = None) -> str:
    billing = max(1, math.ceil(duration_ms))
    return (
        f"{log_timestamp(ts)} Finish invoke request '{request_id}', duration: {duration_ms:.3f}ms, "
        f"billing duration: {billing}ms, memory used: {memory_used_mb:.3f}MB"
    )
