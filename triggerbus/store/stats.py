"""Per-function invocation statistics over time, from the attempts the stores keep.

Both stores fetch the few attempt fields of a function's window (no payloads, no logs)
and bucket them here, so the two implementations cannot disagree on the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

THROTTLED_CODE = 4290  # an HTTP function answered 429 (docs/api.md)
# An attempt starts at most max_async_event_age_in_seconds (<= 1 day) after its record was
# created: the stores look that far back on ``created`` to find a window's attempts.
STATS_LOOKBACK_S = 86400.0
MAX_BUCKETS = 2000


@dataclass(frozen=True, slots=True)
class AttemptSample:
    start: float
    status: str  # RUNNING | SUCCESS | FAIL
    error_code: int
    duration_ms: float


@dataclass(slots=True)
class StatsBucket:
    start: float
    invocations: int = 0
    errors: int = 0
    throttles: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def check_window(begin: float, end: float, bucket_s: float) -> int:
    """The number of buckets of ``[begin, end)``; ValueError for a window that makes no sense."""
    if bucket_s <= 0 or end <= begin:
        raise ValueError("stats window: end must be after begin and the bucket longer than 0 s")
    count = math.ceil((end - begin) / bucket_s)
    if count > MAX_BUCKETS:
        raise ValueError(f"stats window: {count} buckets; at most {MAX_BUCKETS}")
    return count


def bucket_samples(samples: Iterable[AttemptSample], begin: float, end: float, bucket_s: float) -> list[StatsBucket]:
    """Attempts started in ``[begin, end)`` counted per bucket: invocations (attempts), errors
    (failed attempts other than throttles), throttles (4290) and the duration percentiles of the
    attempts that finished."""
    count = check_window(begin, end, bucket_s)
    buckets = [StatsBucket(start=begin + i * bucket_s) for i in range(count)]
    durations: list[list[float]] = [[] for _ in range(count)]
    for sample in samples:
        if not begin <= sample.start < end:
            continue
        index = min(count - 1, int((sample.start - begin) // bucket_s))
        bucket = buckets[index]
        bucket.invocations += 1
        if sample.error_code == THROTTLED_CODE:
            bucket.throttles += 1
        elif sample.status == "FAIL":
            bucket.errors += 1
        if sample.status != "RUNNING":
            durations[index].append(sample.duration_ms)
    for bucket, values in zip(buckets, durations, strict=True):
        if values:
            values.sort()
            bucket.p50_ms = percentile(values, 50)
            bucket.p95_ms = percentile(values, 95)
            bucket.p99_ms = percentile(values, 99)
    return buckets
