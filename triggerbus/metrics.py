"""The Triggerbus metrics: FunctionGraph's metric set per function, per-trigger flow and lag, the
async queue and destinations, in Prometheus form (``GET /metrics``; docs/operations.md).

:class:`Metrics` owns a dedicated :class:`CollectorRegistry` (several services in one process do
not collide) and is the :class:`invoker.observer.Observer` the invoker, the connectors and the
ingest path report to. What cannot be counted as it happens (lag, queue depth) is measured by
:class:`Sampler`, a background task of the service, and read from its cache when scraped: a
Prometheus collector is synchronous and must not wait on brokers.

Unknown is never 0: a lag that cannot be measured is exported as NaN, with
``triggerbus_trigger_lag_known`` 0 beside it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bus.aio import stop_tasks
from connectors.base import UNKNOWN_LAG, Connector, Lag
from invoker.runtime.base import InvocationResult
from schemas.records import AsyncStatus
from schemas.urn import FunctionUrn
from triggerbus.store.models import QueueDepth

log = logging.getLogger(__name__)

FUNCTION_LABELS = ("project", "package", "function")
TRIGGER_LABELS = (*FUNCTION_LABELS, "trigger_type", "trigger_id")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# FunctionGraph's duration statistics; "p99.9" is the 99.9th percentile.
WINDOW_STATS = {"p50": 0.5, "p80": 0.8, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
WINDOW_MAX_SAMPLES = 10_000  # per function: the window's statistics come from the newest ones
LAG_MEASURES = ("records", "seconds", "oldest_age_s")


def error_kind(code: int) -> str:
    """The cause class of a record error code (invoker.runtime.base.ERROR_CODES): 41xx are the
    function's own failures (exception, timeout, memory, crash, bad result); 4290 a throttle by the
    function; 4208 a cancel; anything else (5000 ...) is Triggerbus's side, a system error."""
    if 4100 <= code < 4200:
        return "function"
    if code == 4290:
        return "throttled"
    if code == 4208:
        return "canceled"
    return "system"


def function_labels(function_urn: str) -> tuple[str, str, str]:
    """(project, package, function) of a URN: FunctionGraph's app-function dimension.

    The version or alias is left out (a function's metrics span its versions); an unparsable
    URN (never expected) is labelled as a whole under ``function``.
    """
    urn = FunctionUrn.try_parse(function_urn)
    return ("", "", function_urn[:200]) if urn is None else (urn.project_id, urn.package, urn.name)


class _Window:
    """Durations of the last ``span_s`` seconds of one function (bounded)."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=WINDOW_MAX_SAMPLES)

    def add(self, now: float, seconds: float) -> None:
        self.samples.append((now, seconds))

    def stats(self, now: float, span_s: float) -> dict[str, float]:
        while self.samples and self.samples[0][0] < now - span_s:
            self.samples.popleft()
        values = sorted(s for _, s in self.samples)
        if not values:
            return {}
        out = {"avg": sum(values) / len(values), "max": values[-1], "min": values[0]}
        for name, q in WINDOW_STATS.items():  # nearest rank
            out[name] = values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]
        return out


@dataclass(frozen=True, slots=True)
class TriggerLag:
    trigger_type: str
    function_urn: str
    lag: Lag


class Metrics:
    """The registry of Triggerbus metrics, and the observer that feeds it."""

    def __init__(self, *, window_s: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        fn = FUNCTION_LABELS
        self.invocations = Counter(
            "triggerbus_function_invocations", "Function runs (FunctionGraph count)", [*fn, "invoke_type"], registry=r
        )
        self.errors = Counter(
            "triggerbus_function_errors",
            "Failed function runs (FunctionGraph failcount); kind=function|system "
            "(functionErrorCount|systemErrorCount), cause=the error category",
            [*fn, "invoke_type", "kind", "cause"],
            registry=r,
        )
        self.rejected = Counter(
            "triggerbus_function_rejected",
            "Invocations refused (FunctionGraph rejectcount): reason=concurrency_limit|function_throttled",
            [*fn, "reason"],
            registry=r,
        )
        self.concurrency = Gauge(
            "triggerbus_function_concurrency", "Runs in progress now (FunctionGraph concurrency)", fn, registry=r
        )
        self.duration = Histogram(
            "triggerbus_function_duration_seconds",
            "Run duration (FunctionGraph duration)",
            fn,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.retries = Counter("triggerbus_async_retries", "Async attempts scheduled to run again", fn, registry=r)
        self.finished = Counter(
            "triggerbus_async_invocations_finished",
            "Async invocations that reached a terminal status",
            [*fn, "status"],
            registry=r,
        )
        self.destinations = Counter(
            "triggerbus_destination_deliveries",
            "Destination deliveries: outcome=delivered|retrying (an attempt failed)|failed (gave up)",
            [*fn, "kind", "outcome"],
            registry=r,
        )
        self.events = Counter(
            "triggerbus_trigger_events", "Source events a trigger took in", TRIGGER_LABELS, registry=r
        )
        self.dropped = Counter(
            "triggerbus_trigger_events_dropped",
            "Source events not invoked: filtered out or refused (reason)",
            [*TRIGGER_LABELS, "reason"],
            registry=r,
        )
        self.batches = Counter(
            "triggerbus_trigger_batches", "Batches of stream records invoked as one event", TRIGGER_LABELS, registry=r
        )
        self.batch_records = Counter(
            "triggerbus_trigger_batch_records", "Stream records in those batches", TRIGGER_LABELS, registry=r
        )
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._labels: dict[str, tuple[str, str, str]] = {}
        self.lags: dict[str, TriggerLag] = {}
        self.queue: dict[str, QueueDepth] | None = {}  # None: the last sample failed
        self._queue_functions: set[str] = set()
        r.register(_Sampled(self))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _fn(self, function_urn: str) -> tuple[str, str, str]:
        labels = self._labels.get(function_urn)
        if labels is None:
            labels = self._labels[function_urn] = function_labels(function_urn)
        return labels

    def _trigger(self, trigger_id: str, trigger_type: str, function_urn: str) -> tuple[str, ...]:
        return (*self._fn(function_urn), trigger_type, trigger_id)

    # -- Observer: functions -------------------------------------------------------------------------

    def invocation_started(self, function_urn: str, invoke_type: str) -> None:
        self.concurrency.labels(*self._fn(function_urn)).inc()

    def invocation_finished(self, function_urn: str, invoke_type: str, result: InvocationResult | None) -> None:
        labels = self._fn(function_urn)
        self.concurrency.labels(*labels).dec()
        if result is None:
            return
        self.invocations.labels(*labels, invoke_type).inc()
        seconds = max(0.0, result.duration_ms / 1000)
        self.duration.labels(*labels).observe(seconds)
        self._windows.setdefault(labels, _Window()).add(self.clock(), seconds)
        if result.error is None:
            return
        kind = error_kind(result.error.code)
        if kind == "throttled":
            self.rejected.labels(*labels, "function_throttled").inc()
        elif kind != "canceled":
            self.errors.labels(*labels, invoke_type, kind, result.error.category.value).inc()

    def invocation_rejected(self, function_urn: str, reason: str) -> None:
        self.rejected.labels(*self._fn(function_urn), reason).inc()

    def retry_scheduled(self, function_urn: str) -> None:
        self.retries.labels(*self._fn(function_urn)).inc()

    def async_finished(self, function_urn: str, status: AsyncStatus) -> None:
        self.finished.labels(*self._fn(function_urn), status.value).inc()
        self._queue_functions.add(function_urn)  # its queue is reported from now on, 0 when empty

    def destination_result(self, function_urn: str, kind: str, outcome: str) -> None:
        self.destinations.labels(*self._fn(function_urn), kind, outcome).inc()

    # -- Observer: triggers --------------------------------------------------------------------------

    def trigger_events(self, trigger_id: str, trigger_type: str, function_urn: str, count: int = 1) -> None:
        self.events.labels(*self._trigger(trigger_id, trigger_type, function_urn)).inc(count)

    def trigger_dropped(
        self, trigger_id: str, trigger_type: str, function_urn: str, reason: str, count: int = 1
    ) -> None:
        self.dropped.labels(*self._trigger(trigger_id, trigger_type, function_urn), reason).inc(count)

    def trigger_batch(self, trigger_id: str, trigger_type: str, function_urn: str, items: int) -> None:
        labels = self._trigger(trigger_id, trigger_type, function_urn)
        self.batches.labels(*labels).inc()
        self.batch_records.labels(*labels).inc(items)

    # -- sampled state ---------------------------------------------------------------------------------

    def set_lags(self, lags: dict[str, TriggerLag]) -> None:
        """The lag of every active trigger (replaces the previous sample: gone triggers disappear)."""
        self.lags = dict(lags)

    def set_queue(self, depths: Iterable[QueueDepth] | None) -> None:
        if depths is None:
            self.queue = None
            return
        self.queue = {d.function_urn: d for d in depths}
        self._queue_functions.update(self.queue)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


class _Sampled(Collector):
    """Gauges computed at scrape time: duration windows, trigger lag, async queue."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        now = m.clock()
        window = GaugeMetricFamily(
            "triggerbus_function_duration_window_seconds",
            f"Run duration over the last {m.window_s:g} s: stat=avg|max|min|p50|p80|p95|p99|p99.9",
            labels=[*FUNCTION_LABELS, "stat"],
        )
        for labels, samples in list(m._windows.items()):
            for stat, value in samples.stats(now, m.window_s).items():
                window.add_metric([*labels, stat], value)
        yield window
        yield from self._lag()
        yield from self._queue(now)

    def _lag(self) -> Iterator[Metric]:
        labels = list(TRIGGER_LABELS)
        records = GaugeMetricFamily(
            "triggerbus_trigger_lag_records", "Source records not yet finished (NaN: unknown)", labels=labels
        )
        seconds = GaugeMetricFamily(
            "triggerbus_trigger_lag_seconds",
            "How far the oldest unfinished record is behind the newest (timers: lateness; NaN: unknown)",
            labels=labels,
        )
        oldest = GaugeMetricFamily(
            "triggerbus_trigger_oldest_unprocessed_age_seconds",
            "Age of the oldest unfinished source record (NaN: unknown)",
            labels=labels,
        )
        known = GaugeMetricFamily(
            "triggerbus_trigger_lag_known", "1 if the lag measure is known, 0 if not", labels=[*labels, "measure"]
        )
        for trigger_id, entry in sorted(self.m.lags.items()):
            values = self.m._trigger(trigger_id, entry.trigger_type, entry.function_urn)
            lag = entry.lag
            records.add_metric(values, _nan(lag.records))
            seconds.add_metric(values, _nan(lag.seconds))
            oldest.add_metric(values, _nan(lag.oldest_age_s))
            for measure, value in zip(LAG_MEASURES, (lag.records, lag.seconds, lag.oldest_age_s), strict=True):
                known.add_metric([*values, measure], 0.0 if value is None else 1.0)
        yield from (records, seconds, oldest, known)

    def _queue(self, now: float) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "triggerbus_async_queue_waiting", "Async invocations waiting (records WAIT)", labels=FUNCTION_LABELS
        )
        running = GaugeMetricFamily(
            "triggerbus_async_queue_running", "Async invocations running (records RUNNING)", labels=FUNCTION_LABELS
        )
        age = GaugeMetricFamily(
            "triggerbus_async_queue_oldest_wait_age_seconds",
            "Age of the oldest waiting async invocation (0: none waits; NaN: unknown)",
            labels=FUNCTION_LABELS,
        )
        queue = self.m.queue
        totals: dict[tuple[str, str, str], tuple[int, int, float | None]] = {}
        for urn in self.m._queue_functions:  # versions and aliases of a function add up
            labels = self.m._fn(urn)
            depth = QueueDepth(urn, 0, 0, None) if queue is None else queue.get(urn, QueueDepth(urn, 0, 0, None))
            w, r, oldest = totals.get(labels, (0, 0, None))
            created = depth.oldest_wait_created
            if created is not None:
                oldest = created if oldest is None else min(oldest, created)
            totals[labels] = (w + depth.waiting, r + depth.running, oldest)
        for labels, (w, r, oldest) in sorted(totals.items()):
            if queue is None:  # the last sample failed: unknown, not 0
                waiting.add_metric(labels, math.nan)
                running.add_metric(labels, math.nan)
                age.add_metric(labels, math.nan)
                continue
            waiting.add_metric(labels, w)
            running.add_metric(labels, r)
            age.add_metric(labels, 0.0 if oldest is None else max(0.0, now - oldest))
        yield from (waiting, running, age)


ActiveTrigger = tuple[str, str, str, Connector]  # trigger id, trigger type, function URN, its connector


class Sampler:
    """Measures lag and queue depth every ``interval_s``, each measurement bounded by ``timeout_s``."""

    def __init__(
        self,
        metrics: Metrics,
        queue_depths: Callable[[], Awaitable[list[QueueDepth]]],
        active_triggers: Callable[[], Awaitable[list[ActiveTrigger]]],
        *,
        interval_s: float = 5.0,
        timeout_s: float = 3.0,
    ) -> None:
        self.metrics = metrics
        self.queue_depths = queue_depths
        self.active_triggers = active_triggers
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="metrics-sampler")

    async def close(self) -> None:
        await stop_tasks(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sampling metrics failed")
            await asyncio.sleep(self.interval_s)

    async def sample(self) -> None:
        """One round: the async queue, then every active trigger's lag (concurrently)."""
        depths: list[QueueDepth] | None
        try:
            async with asyncio.timeout(self.timeout_s):
                depths = await self.queue_depths()
        except Exception as exc:
            log.warning("metrics: reading the async queue depth failed: %s", exc)
            depths = None
        self.metrics.set_queue(depths)
        try:
            async with asyncio.timeout(self.timeout_s):
                triggers = await self.active_triggers()
        except Exception as exc:  # which triggers exist is unknown now: so is their lag
            log.warning("metrics: listing the active triggers failed: %s", exc)
            old = self.metrics.lags
            self.metrics.set_lags({k: TriggerLag(v.trigger_type, v.function_urn, UNKNOWN_LAG) for k, v in old.items()})
            return
        lags = await asyncio.gather(*(c.sample_lag(tid, self.timeout_s) for tid, _, _, c in triggers))
        self.metrics.set_lags(
            {tid: TriggerLag(ttype, urn, lag) for (tid, ttype, urn, _), lag in zip(triggers, lags, strict=True)}
        )
        active: dict[int, tuple[Connector, set[str]]] = {}
        for tid, _, _, connector in triggers:
            active.setdefault(id(connector), (connector, set()))[1].add(tid)
        for connector, ids in active.values():
            connector.forget_lag(ids)
