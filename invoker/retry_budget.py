"""Per-function retry budget: a function that fails everything cannot turn a burst into a retry storm.

Retries of one function are allowed while, over the last ``window_s`` seconds,

    retries < min_retries + ratio * invocations

where *invocations* counts first attempts and *retries* counts the retries the budget granted
(the retry budgets of Finagle and Envoy: a percentage of recent traffic plus a small floor, so
a function with little traffic can still retry). Each function has its own budget, so one
failing function never spends another's.

When the budget is empty, the retry is **not** scheduled: the invocation ends ``FAIL`` with its
last error code (the precise cause stays) and a message saying the retry budget was exhausted.
Deferring the retry instead would only move the storm later; failing keeps the work bounded and
every event terminal (it can be redriven). Counters live in one-second buckets, so the memory
per function is bounded by the window; the budget is per process (a restart starts afresh).

Wired into :class:`invoker.async_invoker.AsyncInvoker` like a Dramatiq middleware, by two hooks:
:meth:`RetryBudget.invocation_started` when a first attempt starts and
:meth:`RetryBudget.allow_retry` before a retry is scheduled.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Window:
    # [second, invocations, retries] per second that saw any, oldest first
    buckets: collections.deque[list[int]] = field(default_factory=collections.deque)
    invocations: int = 0
    retries: int = 0


class RetryBudget:
    """``ratio`` of recent invocations plus ``min_retries`` per ``window_s``; ``ratio < 0`` turns it off."""

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_retries: int = 10,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.ratio = ratio
        self.min_retries = max(0, min_retries)
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self.exhausted: dict[str, int] = {}  # retries refused, per function

    @property
    def enabled(self) -> bool:
        return self.ratio >= 0

    def _window(self, key: str) -> _Window:
        now = math.floor(self.clock())
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        horizon = now - math.ceil(self.window_s)
        while window.buckets and window.buckets[0][0] <= horizon:
            _, invocations, retries = window.buckets.popleft()
            window.invocations -= invocations
            window.retries -= retries
        if not window.buckets or window.buckets[-1][0] != now:
            window.buckets.append([now, 0, 0])
        return window

    def invocation_started(self, key: str) -> None:
        """A first attempt of ``key`` starts: it deposits ``ratio`` of a retry."""
        if not self.enabled:
            return
        window = self._window(key)
        window.buckets[-1][1] += 1
        window.invocations += 1

    def allowance(self, key: str) -> float:
        """How many retries the window allows in all (granted ones included)."""
        window = self._window(key)
        return self.min_retries + self.ratio * window.invocations

    def allow_retry(self, key: str) -> bool:
        """Grant (and count) one retry of ``key``, or refuse it when the budget is spent."""
        if not self.enabled:
            return True
        window = self._window(key)
        if window.retries + 1 > self.min_retries + self.ratio * window.invocations:
            self.exhausted[key] = self.exhausted.get(key, 0) + 1
            return False
        window.buckets[-1][2] += 1
        window.retries += 1
        return True

    def describe(self, key: str) -> str:
        """The sentence a record carries when a retry of ``key`` was refused."""
        window = self._window(key)
        return (
            f"retry budget exhausted: {window.retries} retries in the last {self.window_s:g} s, "
            f"allowed {self.min_retries} + {self.ratio:g} x {window.invocations} invocations"
        )
