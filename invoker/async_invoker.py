"""The async invoker: bus -> function, with retries, max event age, destinations and records.

Order of durable steps, chosen so a crash at any point loses nothing:

1. a retry is *published* (delayed) before the record says WAIT and before the
   current message is acked;
2. a destination is *published* before the record turns terminal;
3. the message is acked only after 1/2 and the record update.

So a crash replays at most the current attempt (at-least-once). A redelivered
message whose record is already terminal is skipped, which turns most replays
into no-ops.

A function at its instance limit must not stall other functions behind it. The
invoker keeps at most ``overflow_threshold`` waiting events per function in memory;
beyond that it moves the function's events to its own *overflow lane* (a bus topic
per function, written once, read in order) and acks them. The lane is consumed with
an in-flight budget of twice the function's instances, so it is drained exactly as
fast as the function completes work, and the shared topic never waits on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bus.aio import Background, stop_tasks
from bus.base import Bus, Message, Outgoing, Subscription
from invoker.age import expired, expires_before
from invoker.completion import Completion, CompletionHub
from invoker.concurrency import ConcurrencyLimiter
from invoker.destinations import CONDITIONS, EVENT_AGE_EXCEEDED, build_event, plan_delivery
from invoker.dispatcher import Dispatcher
from invoker.envelope import DEADLETTER_TOPIC, INVOCATIONS_TOPIC, InvocationEnvelope
from invoker.observer import NOOP, Observer
from invoker.records import Attempt, Record, RecordState, RecordStore
from invoker.registry import FunctionDirectory, ResolvedFunction
from invoker.retry import RetryPolicy
from invoker.retry_budget import RetryBudget
from invoker.runtime.base import ErrorCategory, InvocationRequest, InvocationResult
from schemas.async_config import DestinationKind
from schemas.records import AsyncStatus
from triggerbus.logs import log_context

log = logging.getLogger(__name__)

LANE_PREFIX = "tb.lane."

FUNCTION_NOT_FOUND = 4404
EVENT_AGE_CODE = 4408
ASYNC_RESULT_LIMIT = 256 * 1024  # FunctionGraph: async results over 256 KB are reported empty


@dataclass(slots=True)
class _Lane:
    topic: str
    sub: Subscription
    task: asyncio.Task[None] | None = None
    pending: int = 0  # published to the lane and not yet handled


class AsyncInvoker:
    def __init__(
        self,
        bus: Bus,
        records: RecordStore,
        directory: FunctionDirectory,
        dispatcher: Dispatcher,
        limiter: ConcurrencyLimiter,
        *,
        completion: CompletionHub | None = None,
        observer: Observer = NOOP,
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
        group: str = "invoker",
        max_in_flight: int = 4096,
        overflow_threshold: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.records = records
        self.directory = directory
        self.dispatcher = dispatcher
        self.limiter = limiter
        self.completion = completion or CompletionHub()
        self.observer = observer
        self.retry = retry or RetryPolicy()
        self.retry_budget = retry_budget or RetryBudget(ratio=-1)  # off unless given (the service gives one)
        self.group = group
        self.max_in_flight = max_in_flight
        self.overflow_threshold = overflow_threshold
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._handlers = Background()
        self._lanes: dict[str, _Lane] = {}  # overflow lanes by qualified function URN
        self._active: set[tuple[str, int]] = set()  # (request id, attempt) being processed here
        self.stats: dict[str, int] = {
            "invocations": 0,
            "succeeded": 0,
            "failed": 0,
            "discarded": 0,
            "retries": 0,
            "duplicates": 0,
            "overflowed": 0,
            "deadletters": 0,
            "retry_budget_exhausted": 0,
        }

    async def start(self) -> None:
        self._sub = self.bus.subscribe(self.group, [INVOCATIONS_TOPIC], max_in_flight=self.max_in_flight)
        self._task = asyncio.create_task(self._consume(self._sub, None), name="async-invoker")
        for topic in await self.bus.topics():  # lanes with a backlog from before a restart
            if topic.startswith(LANE_PREFIX):
                backlog = sum((await self.bus.lag(self.group, topic)).values())
                if backlog:
                    urn = topic[len(LANE_PREFIX) :]
                    resolved = await self.directory.resolve(urn)
                    self._lane(urn, resolved.spec.max_instances if resolved else 1).pending = backlog

    async def close(self) -> None:
        await stop_tasks(self._task, *(lane.task for lane in self._lanes.values()))
        self._task = None
        await self._handlers.stop()
        await self._sub.close()
        for lane in self._lanes.values():
            await lane.sub.close()
        self._lanes.clear()

    @property
    def in_flight(self) -> int:
        return len(self._handlers)

    async def _consume(self, sub: Subscription, lane: _Lane | None) -> None:
        while True:
            try:
                messages = await sub.fetch(256, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fetching invocations failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                self._handlers.spawn(self._handle(message, sub, lane))

    def _lane(self, urn: str, max_instances: int) -> _Lane:
        lane = self._lanes.get(urn)
        if lane is None:
            topic = LANE_PREFIX + urn
            budget = max(4, min(256, 2 * max_instances))
            sub = self.bus.subscribe(self.group, [topic], max_in_flight=budget)
            lane = self._lanes[urn] = _Lane(topic, sub)
            lane.task = asyncio.create_task(self._consume(sub, lane), name=f"lane-{urn}")
        return lane

    async def _handle(self, message: Message, sub: Subscription, lane: _Lane | None = None) -> None:
        try:
            await self._handle_message(message, sub, lane)
        finally:
            if lane is not None:
                lane.pending -= 1

    async def _handle_message(self, message: Message, sub: Subscription, lane: _Lane | None) -> None:
        try:
            envelope = InvocationEnvelope.from_bytes(message.value)
        except ValueError as exc:
            await self._dead_letter(message, sub, f"unreadable invocation envelope: {exc}")
            return
        key = (envelope.request_id, envelope.attempt)
        if key in self._active:
            # The same attempt is already running here (a re-sent copy): one run is enough.
            self.stats["duplicates"] += 1
            sub.ack(message)
            return
        self._active.add(key)
        try:
            with log_context(
                request_id=envelope.request_id, function_urn=envelope.function_urn, trigger_id=envelope.trigger_id
            ):
                await self._process(envelope, from_lane=lane is not None)
        except asyncio.CancelledError:
            raise  # shutting down: not acked, so it is redelivered after restart
        except Exception:
            log.exception("processing %s failed unexpectedly; it will be retried in 5 s", envelope.request_id)
            try:
                await self.bus.publish(
                    Outgoing(
                        INVOCATIONS_TOPIC,
                        envelope.to_bytes(),
                        key=envelope.function_urn,
                        deliver_at=self.clock() + 5.0,
                    )
                )
            except Exception:
                log.exception("could not reschedule %s; leaving it unacked", envelope.request_id)
                return
        finally:
            self._active.discard(key)
        sub.ack(message)

    async def _dead_letter(self, message: Message, sub: Subscription, reason: str) -> None:
        log.error("%s (%s/%s); moved to %s", reason, message.partition, message.offset, DEADLETTER_TOPIC)
        await self.bus.publish(
            Outgoing(DEADLETTER_TOPIC, message.value, headers={"from": message.topic, "reason": reason[:500]})
        )
        self.stats["deadletters"] += 1
        sub.ack(message)

    # -- one invocation -------------------------------------------------------------------

    async def _process(self, env: InvocationEnvelope, *, from_lane: bool = False) -> None:
        record = await self.records.record_state(env.request_id)
        if record is None:
            await self.records.insert_record(
                Record(
                    request_id=env.request_id,
                    function_urn=env.function_urn,
                    created=env.enqueued_at,
                    trigger_id=env.trigger_id,
                    trigger_type=env.trigger_type,
                    source=env.source,
                    redrive_of=env.redrive_of,
                    payload=env.payload.encode(),
                )
            )
            record = RecordState(AsyncStatus.WAIT, 0, "")
        elif record.status.terminal:
            # Finished before (a redelivery after a crash or rebalance): do not run it again,
            # but announce it again, in case the first announcement died with a process.
            self.stats["duplicates"] += 1
            await self._announce(env, record.status)
            return
        elif record.attempts > env.attempt + 1 or (record.status is AsyncStatus.WAIT and record.attempts > env.attempt):
            # A stale copy: a later attempt was scheduled or ran already (a retry and a replay
            # of the message that scheduled it). A RUNNING record at our own attempt number is
            # a crash replay and runs again.
            self.stats["duplicates"] += 1
            return

        resolved = await self.directory.resolve(env.function_urn)
        if resolved is None:
            await self._terminal_without_run(
                env,
                AsyncStatus.FAIL,
                FUNCTION_NOT_FOUND,
                f"function {env.function_urn} does not exist",
                condition="FunctionNotFound",
                resolved=None,
            )
            return
        config = resolved.async_config
        spec = resolved.spec
        key = spec.urn

        if expired(env, self.clock(), config.max_async_event_age_in_seconds):
            await self._discard_expired(env, resolved, record.error_message)
            return
        if not from_lane and self._should_overflow(key, spec.max_instances):
            await self._overflow(env, resolved)
            return

        async with self.limiter.slot(key, spec.max_instances):
            now = self.clock()
            if expired(env, now, config.max_async_event_age_in_seconds):
                await self._discard_expired(env, resolved, record.error_message)
                return
            attempt = Attempt(n=env.attempt + 1, start=now)
            if not await self.records.start_attempt(env.request_id, attempt):
                return  # canceled (or finished elsewhere) while it waited
            if attempt.n == 1:
                self.retry_budget.invocation_started(key)
            result = await self.dispatcher.invoke(
                spec,
                InvocationRequest(
                    env.request_id,
                    env.payload.encode(),
                    invoke_type="async",
                    trace=dict(env.trace),
                    trace_links=list(env.trace_links),
                ),
            )
        self.stats["invocations"] += 1
        attempt.end = self.clock()
        attempt.duration_ms = result.duration_ms
        attempt.memory_mb = result.memory_used_mb
        attempt.logs = result.logs
        if result.ok:
            attempt.status = "SUCCESS"
            await self._finish(env, resolved, result, attempt, AsyncStatus.SUCCESS)
            return
        error = result.error
        assert error is not None
        attempt.status = "FAIL"
        attempt.error_code = error.code
        attempt.error_message = _message(result)
        if error.category is ErrorCategory.CANCELED:
            await self._finish(env, resolved, result, attempt, AsyncStatus.DISCARD, with_destination=False)
            return
        if self.retry.should_retry(error, attempt.n, config.max_async_retry_attempts):
            due = attempt.end + self.retry.delay(attempt.n, error.retry_after_s)
            if expires_before(env, due, config.max_async_event_age_in_seconds):
                await self._finish(
                    env,
                    resolved,
                    result,
                    attempt,
                    AsyncStatus.DISCARD,
                    condition=EVENT_AGE_EXCEEDED,
                    error_code=EVENT_AGE_CODE,
                    error_message=(
                        f"max event age {config.max_async_event_age_in_seconds} s would pass before the next "
                        f"retry; last error: {attempt.error_message}"
                    ),
                )
                return
            if not self.retry_budget.allow_retry(key):  # a retry storm: end it here (invoker/retry_budget.py)
                self.stats["retry_budget_exhausted"] += 1
                message = f"{self.retry_budget.describe(key)}; last error: {attempt.error_message}"
                await self._finish(env, resolved, result, attempt, AsyncStatus.FAIL, error_message=message[:2000])
                return
            retry = env.model_copy(update={"attempt": attempt.n})
            await self.bus.publish(Outgoing(INVOCATIONS_TOPIC, retry.to_bytes(), key=env.function_urn, deliver_at=due))
            await self.records.finish_attempt(
                env.request_id,
                attempt,
                status=AsyncStatus.WAIT,
                next_attempt_at=due,
                error_code=attempt.error_code,
                error_message=attempt.error_message,
            )
            self.stats["retries"] += 1
            self.observer.retry_scheduled(env.function_urn)
            return
        await self._finish(env, resolved, result, attempt, AsyncStatus.FAIL)

    def _should_overflow(self, key: str, max_instances: int) -> bool:
        if not self.bus.dynamic_topics:
            return False  # waits in memory (bounded by max_in_flight); see bus.kafka
        lane = self._lanes.get(key)
        if lane is not None and lane.pending > 0:
            return True  # keep arrival order: behind what is already in the lane
        return self.limiter.waiting(key) >= max(self.overflow_threshold, 2 * max_instances)

    async def _overflow(self, env: InvocationEnvelope, resolved: ResolvedFunction) -> None:
        """Move an event of a saturated function to its lane (one durable write, then acked)."""
        lane = self._lane(resolved.spec.urn, resolved.spec.max_instances)
        await self.bus.publish(Outgoing(lane.topic, env.to_bytes(), key=env.function_urn))
        lane.pending += 1
        self.stats["overflowed"] += 1

    async def _discard_expired(self, env: InvocationEnvelope, resolved: ResolvedFunction, last_error: str) -> None:
        age = resolved.async_config.max_async_event_age_in_seconds
        message = f"event older than max_async_event_age_in_seconds={age} before it could run"
        if last_error:
            message += f"; last error: {last_error}"
        await self._terminal_without_run(
            env, AsyncStatus.DISCARD, EVENT_AGE_CODE, message, condition=EVENT_AGE_EXCEEDED, resolved=resolved
        )

    async def _publish_destination(
        self,
        env: InvocationEnvelope,
        resolved: ResolvedFunction | None,
        status: AsyncStatus,
        result: InvocationResult | None,
        attempts: int,
        condition: str,
    ) -> dict[str, Any]:
        """Send the outcome to on_success/on_failure, if configured; the record's summary of it."""
        if resolved is None:
            return {}
        destinations = resolved.async_config.destination_config
        target = destinations.on_success if status is AsyncStatus.SUCCESS else destinations.on_failure
        if target is None:
            return {}
        if result is not None and len(result.body) > ASYNC_RESULT_LIMIT:
            result = InvocationResult(result.request_id, b'""', result.error, result.duration_ms)
        event = build_event(
            request_id=env.request_id,
            function_urn=resolved.spec.urn,
            payload=env.payload,
            result=result,
            attempts=attempts,
            condition=condition,
            now=self.clock(),
        )
        outgoing, summary = plan_delivery(
            target, event, source_request_id=env.request_id, function_urn=resolved.spec.urn
        )
        await self.bus.publish(outgoing)
        if target.destination is DestinationKind.FUNCTIONGRAPH:  # publishing it is the delivery
            self.observer.destination_result(resolved.spec.urn, target.destination.value, "delivered")
        return summary

    async def _terminal_without_run(
        self,
        env: InvocationEnvelope,
        status: AsyncStatus,
        error_code: int,
        error_message: str,
        *,
        condition: str,
        resolved: ResolvedFunction | None,
    ) -> None:
        summary = await self._publish_destination(env, resolved, status, None, env.attempt, condition)
        await self.records.update_record(
            env.request_id,
            status=status,
            error_code=error_code,
            error_message=error_message,
            condition=condition,
            end_time=self.clock(),
            next_attempt_at=None,
            destination=summary,
        )
        await self._finished(env, status)

    async def _finish(
        self,
        env: InvocationEnvelope,
        resolved: ResolvedFunction,
        result: InvocationResult,
        attempt: Attempt,
        status: AsyncStatus,
        *,
        with_destination: bool = True,
        condition: str | None = None,
        error_code: int | None = None,
        error_message: str | None = None,
    ) -> None:
        if condition is None:
            condition = "" if result.error is None else CONDITIONS[result.error.category]
        summary: dict[str, Any] = {}
        if with_destination:
            summary = await self._publish_destination(env, resolved, status, result, attempt.n, condition)
        if result.error is None:
            code, message = 0, ""
        else:
            code, message = result.error.code, _message(result)
        await self.records.finish_attempt(
            env.request_id,
            attempt,
            status=status,
            error_code=code if error_code is None else error_code,
            error_message=message if error_message is None else error_message,
            condition=condition,
            end_time=attempt.end,
            next_attempt_at=None,
            response=result.body,
            destination=summary,
        )
        await self._finished(env, status)

    async def _finished(self, env: InvocationEnvelope, status: AsyncStatus) -> None:
        """Count a terminal outcome and tell the trigger's connector."""
        key = {AsyncStatus.SUCCESS: "succeeded", AsyncStatus.FAIL: "failed"}.get(status, "discarded")
        self.stats[key] += 1
        self.observer.async_finished(env.function_urn, status)
        await self._announce(env, status)

    async def _announce(self, env: InvocationEnvelope, status: AsyncStatus) -> None:
        if env.trigger_id:
            await self.completion.done(Completion(env.request_id, env.trigger_id, tuple(env.item_ids), status))


def _message(result: InvocationResult) -> str:
    error = result.error
    if error is None:
        return ""
    if error.category is ErrorCategory.CODE_EXCEPTION and error.error_type:
        return f"{error.error_type}: {error.message}"[:2000]
    return error.message[:2000]
