"""Retry policy for async invocations: exponential backoff with jitter, capped.

Delays grow ``base * 2**(n-1)`` up to ``cap``; "equal jitter" keeps at least half
of that delay (so a retry never fires immediately) and randomises the rest, which
spreads out retries of many events that failed together (no retry storms in
lock-step). A ``Retry-After`` from an HTTP function (on a 429) wins when it is longer,
but never pushes a retry further out than ``retry_after_cap_s`` (a function cannot park its
events for a day; the max event age still applies on top).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from invoker.runtime.base import ErrorCategory, InvocationError

NOT_RETRIED = frozenset({ErrorCategory.CANCELED})


@dataclass(slots=True)
class RetryPolicy:
    base_s: float = 1.0
    cap_s: float = 300.0
    retry_after_cap_s: float = 3600.0
    rng: random.Random = field(default_factory=random.Random)

    def should_retry(self, error: InvocationError, attempts_made: int, max_retries: int) -> bool:
        """``attempts_made`` includes the one that just failed; retries = attempts - 1."""
        return error.category not in NOT_RETRIED and attempts_made <= max_retries

    def delay(self, attempts_made: int, retry_after_s: float | None = None) -> float:
        exp = min(self.cap_s, self.base_s * 2 ** max(0, attempts_made - 1))
        jittered = exp / 2 + self.rng.uniform(0, exp / 2)
        if retry_after_s is not None and retry_after_s > jittered:
            return max(jittered, min(retry_after_s, self.retry_after_cap_s))
        return jittered
